/// Limits a `FrameDecoder` enforces.
///
/// Rules:
/// - `maxFrameSize`: largest payload of a single frame; a larger declared length fails with
///   1009 as soon as the frame header is read, before any payload is buffered.
/// - `maxMessageSize`: largest reassembled text/binary message, summed over fragments; 1009.
/// - `requireMasked`: true on the server side (client frames must be masked); false on the
///   client side, where a masked frame from the server is rejected. Either mismatch is 1002.
public struct WSLimits: Sendable {
    public var maxFrameSize: Int
    public var maxMessageSize: Int
    public var requireMasked: Bool

    public init(maxFrameSize: Int = 1 << 20, maxMessageSize: Int = 1 << 20, requireMasked: Bool = true) {
        self.maxFrameSize = maxFrameSize
        self.maxMessageSize = maxMessageSize
        self.requireMasked = requireMasked
    }
}
