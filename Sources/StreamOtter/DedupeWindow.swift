/// Identifies one publish for resend detection: the channel, the client's id, and a
/// fingerprint of what was published (key, headers, value). A resend is the same request
/// sent again, so all three match; two different publishes that happen to reuse an id (two
/// clients both counting "p1", "p2", ...) differ in content and are not confused.
struct PublishKey: Hashable {
    let channel: String
    let id: String
    let fingerprint: UInt64

    init(channel: String, id: String, key: [UInt8]?, headers: [(String, [UInt8])], value: [UInt8]) {
        self.channel = channel
        self.id = id
        var h = FNV1a64()
        if let key {
            h.add(1)
            h.add(UInt64(key.count))
            h.add(key)
        } else {
            h.add(0)
        }
        h.add(UInt64(headers.count))
        for (name, v) in headers {
            h.add(UInt64(name.utf8.count))
            h.add(Array(name.utf8))
            h.add(UInt64(v.count))
            h.add(v)
        }
        h.add(UInt64(value.count))
        h.add(value)
        fingerprint = h.value
    }

    init(channel: String, id: String, fingerprint: UInt64) {
        self.channel = channel
        self.id = id
        self.fingerprint = fingerprint
    }
}

/// 64-bit FNV-1a: cheap, stable across runs (unlike `Hasher`), good enough to tell two
/// publishes with the same id apart.
struct FNV1a64 {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ bytes: [UInt8]) {
        for b in bytes {
            value ^= UInt64(b)
            value = value &* 0x0000_0100_0000_01b3
        }
    }

    mutating func add(_ n: UInt64) {
        var n = n
        for _ in 0..<8 {
            value ^= n & 0xff
            value = value &* 0x0000_0100_0000_01b3
            n >>= 8
        }
    }
}

/// The gateway's memory of recent publishes, so that a client resending a publish (same
/// channel, id and content) after a reconnect gets the original answer instead of creating
/// a second record.
///
/// - An entry is *in flight* from the moment the gateway accepts the publish until Kafka's
///   delivery report; a resend meanwhile waits for that same report.
/// - Once acknowledged, the entry keeps (partition, offset) for `ttlMs` milliseconds, and
///   at most `capacity` acknowledged entries are kept (the oldest go first).
/// - A publish that failed is forgotten: a resend produces it again.
///
/// In-flight entries are not counted against `capacity`; they are bounded by the producer
/// queue. Pure state with a caller-supplied clock. Loop thread only.
struct DedupeWindow {
    enum State: Equatable {
        case inFlight(token: UInt64)
        case acked(partition: Int32, offset: Int64)
    }

    let capacity: Int
    let ttlMs: UInt64
    private var entries: [PublishKey: (state: State, generation: UInt64)] = [:]
    /// Acknowledged entries in acknowledgement order: (key, generation, acked at).
    private var order: [(PublishKey, UInt64, UInt64)] = []
    private var head = 0
    private var generation: UInt64 = 0

    init(capacity: Int, ttlMs: UInt64) {
        self.capacity = capacity
        self.ttlMs = ttlMs
    }

    var isEnabled: Bool { capacity > 0 && ttlMs > 0 }
    /// Entries held (in flight and acknowledged).
    var count: Int { entries.count }
    var ackedCount: Int { order.count - head }

    /// What the window knows about `key` at time `now`.
    mutating func lookup(_ key: PublishKey, now: UInt64) -> State? {
        expire(now: now)
        return entries[key]?.state
    }

    /// Records a publish accepted and handed (or about to be handed) to Kafka.
    mutating func begin(_ key: PublishKey, token: UInt64) {
        guard isEnabled else { return }
        generation += 1
        entries[key] = (.inFlight(token: token), generation)
    }

    /// Kafka acknowledged the publish.
    mutating func acked(_ key: PublishKey, partition: Int32, offset: Int64, now: UInt64) {
        guard isEnabled else { return }
        generation += 1
        entries[key] = (.acked(partition: partition, offset: offset), generation)
        order.append((key, generation, now))
        expire(now: now)
    }

    /// The publish failed: forget it.
    mutating func failed(_ key: PublishKey) {
        entries.removeValue(forKey: key)
    }

    private mutating func expire(now: UInt64) {
        while head < order.count {
            let (key, gen, at) = order[head]
            if order.count - head <= capacity && now &- at < ttlMs { break }
            if let e = entries[key], e.generation == gen { entries.removeValue(forKey: key) }
            head += 1
        }
        if head > 1024 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up. Pure, with a
/// caller-supplied millisecond clock. `rate` 0 means unlimited.
struct TokenBucket {
    let rate: Int
    let burst: Double
    private(set) var tokens: Double
    private var last: UInt64

    init(rate: Int, now: UInt64, burst: Int? = nil) {
        self.rate = rate
        // A tenth of a second's worth by default, at least one message.
        self.burst = Double(max(1, burst ?? rate / 10))
        tokens = self.burst
        last = now
    }

    var unlimited: Bool { rate <= 0 }

    mutating func refill(now: UInt64) {
        guard !unlimited, now > last else { return }
        tokens = min(burst, tokens + Double(rate) * Double(now - last) / 1000)
        last = now
    }

    /// Takes one token if there is one.
    mutating func take(now: UInt64) -> Bool {
        if unlimited { return true }
        refill(now: now)
        if tokens >= 1 {
            tokens -= 1
            return true
        }
        return false
    }

    var available: Bool { unlimited || tokens >= 1 }
}
