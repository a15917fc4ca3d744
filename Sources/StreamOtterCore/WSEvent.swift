/// One complete thing read from a WebSocket peer by `FrameDecoder`.
public enum WSEvent: Equatable, Sendable {
    /// A complete text message, reassembled from its fragments and validated as UTF-8.
    case text([UInt8])
    /// A complete binary message, reassembled from its fragments.
    case binary([UInt8])
    case ping([UInt8])
    case pong([UInt8])
    /// The peer's close frame. `code` is nil when the body was empty; otherwise the code is a
    /// valid RFC 6455 close code and `reason` valid UTF-8.
    case close(code: UInt16?, reason: [UInt8])
}
