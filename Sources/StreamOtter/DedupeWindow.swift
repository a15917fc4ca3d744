import CShim

/// Identifies one publish for resend detection: the channel, the client's id, and what was
/// published (key, headers, value). A resend is the same request sent again, so all of it
/// matches; two different publishes that happen to reuse an id differ in content and are
/// not confused.
///
/// Kept as a 128-bit XXH3 hash instead of the strings themselves: the window holds up to
/// 100,000 entries and is consulted on every publish, and string keys cost hashing,
/// comparisons and reference counting on the hot path. The hash is seeded per process, so
/// nobody can compute a publish that collides with another client's; two publishes
/// collide with probability ~n²/2¹²⁹.
struct PublishKey: Hashable {
    let a: UInt64
    let b: UInt64

    /// Per process, from the system's random source.
    static let seed = UInt64.random(in: .min ... .max)

    init(channel: String, id: String, key: [UInt8]?, headers: [(String, [UInt8])], value: [UInt8]) {
        cshim_hash_begin(PublishKey.seed)
        PublishKey.add(channel)
        PublishKey.add(id)
        if let key {
            cshim_hash_add_u64(1)
            key.withUnsafeBytes { cshim_hash_add($0.baseAddress, $0.count) }
        } else {
            cshim_hash_add_u64(0)
        }
        cshim_hash_add_u64(UInt64(headers.count))
        for (name, v) in headers {
            PublishKey.add(name)
            v.withUnsafeBytes { cshim_hash_add($0.baseAddress, $0.count) }
        }
        value.withUnsafeBytes { cshim_hash_add($0.baseAddress, $0.count) }
        var a: UInt64 = 0, b: UInt64 = 0
        cshim_hash_end(&a, &b)
        self.a = a
        self.b = b
    }

    /// For content known only by its own fingerprint (the plaintext of an encrypted record).
    init(channel: String, id: String, fingerprint: UInt64) {
        cshim_hash_begin(PublishKey.seed)
        PublishKey.add(channel)
        PublishKey.add(id)
        cshim_hash_add_u64(2)
        cshim_hash_add_u64(fingerprint)
        var a: UInt64 = 0, b: UInt64 = 0
        cshim_hash_end(&a, &b)
        self.a = a
        self.b = b
    }

    private static func add(_ s: String) {
        var s = s
        s.withUTF8 { cshim_hash_add($0.baseAddress, $0.count) }
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
///
/// The entries live in an open-addressing table (linear probing, backward-shift deletion)
/// indexed by the key's own hash bits: no second hash, no allocation per entry.
struct DedupeWindow {
    enum State: Equatable {
        case inFlight(token: UInt64)
        case acked(partition: Int32, offset: Int64)
    }

    /// 32 bytes, so that two fit in a cache line (the table is big and probed at random).
    private struct Slot {
        var a: UInt64 = 0
        var b: UInt64 = 0
        /// 0: empty. Wraps after 2³² updates, long after any entry it names has left
        /// `order` (which holds at most `capacity` ≤ 10,000,000 entries).
        var generation: UInt32 = 0
        /// -1: in flight (`value` is the token); else acknowledged at (partition, offset).
        var partition: Int32 = -1
        var value: UInt64 = 0

        var state: State {
            partition < 0 ? .inFlight(token: value) : .acked(partition: partition, offset: Int64(bitPattern: value))
        }

        mutating func set(_ state: State) {
            switch state {
            case .inFlight(let token):
                partition = -1
                value = token
            case .acked(let p, let offset):
                partition = p
                value = UInt64(bitPattern: offset)
            }
        }
    }

    let capacity: Int
    let ttlMs: UInt64
    private var slots: [Slot] = []
    private var used = 0
    /// Acknowledged entries in acknowledgement order: (key, generation, acked at).
    private var order: [(PublishKey, UInt32, UInt64)] = []
    private var head = 0
    private var generation: UInt32 = 0

    /// The next generation (never 0, which marks an empty slot).
    private mutating func nextGeneration() -> UInt32 {
        generation &+= 1
        if generation == 0 { generation = 1 }
        return generation
    }

    init(capacity: Int, ttlMs: UInt64) {
        self.capacity = capacity
        self.ttlMs = ttlMs
    }

    var isEnabled: Bool { capacity > 0 && ttlMs > 0 }
    /// Entries held (in flight and acknowledged).
    var count: Int { used }
    var ackedCount: Int { order.count - head }

    /// What the window knows about `key` at time `now`.
    mutating func lookup(_ key: PublishKey, now: UInt64) -> State? {
        expire(now: now)
        guard let i = find(key) else { return nil }
        return slots[i].state
    }

    /// Records a publish accepted and handed (or about to be handed) to Kafka.
    mutating func begin(_ key: PublishKey, token: UInt64) {
        guard isEnabled else { return }
        put(key, .inFlight(token: token), nextGeneration())
    }

    /// Kafka acknowledged the publish.
    mutating func acked(_ key: PublishKey, partition: Int32, offset: Int64, now: UInt64) {
        guard isEnabled else { return }
        let gen = nextGeneration()
        put(key, .acked(partition: partition, offset: offset), gen)
        order.append((key, gen, now))
        expire(now: now)
    }

    /// The publish failed: forget it.
    mutating func failed(_ key: PublishKey) {
        if let i = find(key) { remove(at: i) }
    }

    private mutating func expire(now: UInt64) {
        while head < order.count {
            let (key, gen, at) = order[head]
            if order.count - head <= capacity && now &- at < ttlMs { break }
            if let i = find(key), slots[i].generation == gen { remove(at: i) }
            head += 1
        }
        if head > 1024 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }

    // MARK: the table

    @inline(__always)
    private func home(_ a: UInt64) -> Int { Int(truncatingIfNeeded: a) & (slots.count - 1) }

    private func find(_ key: PublishKey) -> Int? {
        if slots.isEmpty { return nil }
        let mask = slots.count - 1
        var i = home(key.a)
        while slots[i].generation != 0 {
            if slots[i].a == key.a && slots[i].b == key.b { return i }
            i = (i + 1) & mask
        }
        return nil
    }

    private mutating func put(_ key: PublishKey, _ state: State, _ gen: UInt32) {
        if (used + 1) * 2 > slots.count { grow() }
        let mask = slots.count - 1
        var i = home(key.a)
        while slots[i].generation != 0 {
            if slots[i].a == key.a && slots[i].b == key.b {
                slots[i].set(state)
                slots[i].generation = gen
                return
            }
            i = (i + 1) & mask
        }
        var slot = Slot(a: key.a, b: key.b, generation: gen)
        slot.set(state)
        slots[i] = slot
        used += 1
    }

    /// Empties slot `i` and moves later members of its probe run back, so that every
    /// lookup still finds its key before the first empty slot.
    private mutating func remove(at index: Int) {
        let mask = slots.count - 1
        var hole = index
        var j = index
        while true {
            j = (j + 1) & mask
            if slots[j].generation == 0 { break }
            let h = home(slots[j].a)
            // Move j into the hole unless its home lies cyclically in (hole, j].
            let stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j)
            if !stays {
                slots[hole] = slots[j]
                hole = j
            }
        }
        slots[hole] = Slot()
        used -= 1
    }

    private mutating func grow() {
        let old = slots
        slots = [Slot](repeating: Slot(), count: max(1024, old.count * 2))
        used = 0
        let mask = slots.count - 1
        for s in old where s.generation != 0 {
            var i = home(s.a)
            while slots[i].generation != 0 { i = (i + 1) & mask }
            slots[i] = s
            used += 1
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
