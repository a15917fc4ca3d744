/// A token-bucket limiter for one connection: messages per second and bytes per second,
/// each with a burst. Pure value type, no clock of its own: the caller passes monotonic
/// nanoseconds (`SecurityClock.monotonicNanos()` or a manual clock in tests).
/// Loop thread only (one per connection).
public struct RateLimiter: Sendable {
    /// Outcome of `consume`.
    public enum Decision: Equatable, Sendable {
        /// Within the limits; the tokens were taken.
        case allowed
        /// Over a limit; nothing was taken. Retry after this many nanoseconds.
        case limited(retryAfterNanos: UInt64)
    }

    /// Messages per second (0: unlimited).
    public let messagesPerSecond: Double
    /// Bytes per second (0: unlimited).
    public let bytesPerSecond: Double
    /// Bucket sizes.
    public let messageBurst: Double
    public let byteBurst: Double

    private var messageTokens: Double
    private var byteTokens: Double
    private var last: UInt64

    /// Buckets start full. A burst of 0 means "one second's worth".
    public init(messagesPerSecond: Double, bytesPerSecond: Double, messageBurst: Double = 0, byteBurst: Double = 0, now: UInt64) {
        self.messagesPerSecond = max(0, messagesPerSecond)
        self.bytesPerSecond = max(0, bytesPerSecond)
        self.messageBurst = messageBurst > 0 ? messageBurst : max(1, messagesPerSecond)
        self.byteBurst = byteBurst > 0 ? byteBurst : max(1, bytesPerSecond)
        self.messageTokens = self.messageBurst
        self.byteTokens = self.byteBurst
        self.last = now
    }

    /// Takes one message of `bytes` bytes when both buckets allow it. A message larger than
    /// the byte burst is allowed only when the byte bucket is full (it then goes negative
    /// and later messages wait), so big messages are slowed, not banned.
    public mutating func consume(bytes: Int, now: UInt64) -> Decision {
        refill(now)
        var waitNanos: UInt64 = 0
        if messagesPerSecond > 0, messageTokens < 1 {
            waitNanos = max(waitNanos, RateLimiter.nanos((1 - messageTokens) / messagesPerSecond))
        }
        if bytesPerSecond > 0 {
            let need = min(Double(bytes), byteBurst)
            if byteTokens < need {
                waitNanos = max(waitNanos, RateLimiter.nanos((need - byteTokens) / bytesPerSecond))
            }
        }
        if waitNanos > 0 { return .limited(retryAfterNanos: waitNanos) }
        if messagesPerSecond > 0 { messageTokens -= 1 }
        if bytesPerSecond > 0 { byteTokens -= Double(bytes) }
        return .allowed
    }

    /// `seconds` in nanoseconds, rounded up; UInt64.max when it does not fit (a rate so low
    /// that the wait is longer than 584 years, or NaN), instead of trapping.
    static func nanos(_ seconds: Double) -> UInt64 {
        let n = (seconds * 1e9).rounded(.up)
        guard n < 0x1p64 else { return .max }
        return n > 0 ? UInt64(n) : 0
    }

    private mutating func refill(_ now: UInt64) {
        guard now > last else { return }
        let dt = Double(now - last) / 1e9
        last = now
        if messagesPerSecond > 0 { messageTokens = min(messageBurst, messageTokens + dt * messagesPerSecond) }
        if bytesPerSecond > 0 { byteTokens = min(byteBurst, byteTokens + dt * bytesPerSecond) }
    }
}
