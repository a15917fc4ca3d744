/// Where a subscription starts reading (the `from` field of a subscribe request).
public enum StartPosition: Equatable, Sendable {
    /// Only messages produced after the subscription (the default).
    case latest
    /// From the oldest retained message.
    case earliest
    /// From the given offset per partition (partition >= 0, offset >= 0).
    case offsets([Int32: Int64])
    /// From the first message with timestamp >= this many milliseconds since the epoch.
    case timestamp(Int64)
}
