/// WebSocket frame opcodes (RFC 6455 section 5.2). Values 3-7 and 11-15 are reserved and
/// rejected by `FrameDecoder` with close code 1002.
public enum WSOpcode: UInt8, Sendable {
    case continuation = 0
    case text = 1
    case binary = 2
    case close = 8
    case ping = 9
    case pong = 10

    /// Control frames (close, ping, pong): never fragmented, payload at most 125 bytes.
    public var isControl: Bool { rawValue & 0x08 != 0 }
}
