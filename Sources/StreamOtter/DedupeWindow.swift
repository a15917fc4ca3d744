/// Identifies one publish for resend detection: the channel, the client's id, and what was
/// published (key, headers, value). A resend is the same request sent again, so all of it
/// matches; two different publishes that happen to reuse an id differ in content and are
/// not confused.
///
/// Kept as 128 bits of two independent hashes instead of the strings themselves: the
/// window holds up to 100,000 entries and is consulted on every publish, and string keys
/// cost hashing, comparisons and reference counting on the hot path (18% of the loop in the
/// ingest benchmark). Two publishes collide with probability ~n²/2¹²⁹.
struct PublishKey: Hashable {
    let a: UInt64
    let b: UInt64

    init(channel: String, id: String, key: [UInt8]?, headers: [(String, [UInt8])], value: [UInt8]) {
        var h = DualHash()
        h.add(channel)
        h.add(id)
        if let key {
            h.add(1)
            h.add(key)
        } else {
            h.add(0)
        }
        h.add(UInt64(headers.count))
        for (name, v) in headers {
            h.add(name)
            h.add(v)
        }
        h.add(value)
        a = h.a
        b = h.b
    }

    /// For content known only by its own fingerprint (the plaintext of an encrypted record).
    init(channel: String, id: String, fingerprint: UInt64) {
        var h = DualHash()
        h.add(channel)
        h.add(id)
        h.add(2)
        h.add(fingerprint)
        a = h.a
        b = h.b
    }
}

/// Two 64-bit hashes in one pass: FNV-1a and a multiply-rotate mix with other constants.
/// Stable across runs (unlike `Hasher`).
struct DualHash {
    private(set) var a: UInt64 = 0xcbf2_9ce4_8422_2325
    private(set) var b: UInt64 = 0x9e37_79b9_7f4a_7c15

    @inline(__always)
    private mutating func byte(_ x: UInt8) {
        a = (a ^ UInt64(x)) &* 0x0000_0100_0000_01b3
        b = ((b ^ UInt64(x)) &* 0xff51_afd7_ed55_8ccd)
        b = (b << 29) | (b >> 35)
    }

    mutating func add(_ bytes: [UInt8]) {
        add(UInt64(bytes.count))
        for x in bytes { byte(x) }
    }

    mutating func add(_ s: String) {
        var s = s
        s.withUTF8 { u in
            add(UInt64(u.count))
            for x in u { byte(x) }
        }
    }

    mutating func add(_ n: UInt64) {
        var n = n
        for _ in 0..<8 {
            byte(UInt8(truncatingIfNeeded: n))
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
