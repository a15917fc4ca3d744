/// Counts open connections in total and per client address, and refuses new ones over the
/// limits. Thread-safe (engines on several threads may share one). Every successful
/// `acquire` must be paired with exactly one `release` of the same address.
public final class ConnectionLimits: @unchecked Sendable {
    /// Outcome of `acquire`.
    public enum Decision: Equatable, Sendable {
        case accepted
        case totalLimitReached
        case perAddressLimitReached

        /// Stable reason code for logs and audit: `accepted`, `too_many_connections`,
        /// `too_many_connections_from_address`.
        public var reason: String {
            switch self {
            case .accepted: return "accepted"
            case .totalLimitReached: return "too_many_connections"
            case .perAddressLimitReached: return "too_many_connections_from_address"
            }
        }
    }

    /// Limits; 0 means unlimited.
    public let maxTotal: Int
    public let maxPerAddress: Int

    private let lock = Lock()
    private var total = 0
    private var perAddress: [String: Int] = [:]

    public init(maxTotal: Int, maxPerAddress: Int) {
        self.maxTotal = max(0, maxTotal)
        self.maxPerAddress = max(0, maxPerAddress)
    }

    /// Counts a new connection from `address` (host only, no port) when within limits.
    public func acquire(address: String) -> Decision {
        let key = ConnectionLimits.normalize(address)
        return lock.withLock {
            if maxTotal > 0, total >= maxTotal { return .totalLimitReached }
            let n = perAddress[key, default: 0]
            if maxPerAddress > 0, n >= maxPerAddress { return .perAddressLimitReached }
            total += 1
            perAddress[key] = n + 1
            return .accepted
        }
    }

    /// Releases one connection counted by `acquire(address:)`.
    public func release(address: String) {
        let key = ConnectionLimits.normalize(address)
        lock.withLock {
            guard let n = perAddress[key] else { return }
            total -= 1
            if n <= 1 { perAddress[key] = nil } else { perAddress[key] = n - 1 }
        }
    }

    /// Open connections in total.
    public var totalCount: Int { lock.withLock { total } }

    /// Open connections from `address`.
    public func count(address: String) -> Int {
        let key = ConnectionLimits.normalize(address)
        return lock.withLock { perAddress[key, default: 0] }
    }

    /// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) counts as the IPv4 address; brackets and case
    /// are ignored for IPv6.
    static func normalize(_ address: String) -> String {
        var a = address.lowercased()
        if a.hasPrefix("[") && a.hasSuffix("]") { a = String(a.dropFirst().dropLast()) }
        if a.hasPrefix("::ffff:") && a.contains(".") { a = String(a.dropFirst(7)) }
        return a
    }
}
