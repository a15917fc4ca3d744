/// Values keyed by increasing integer tokens (the opaque of a produced record), for
/// entries that mostly end in the order they began: a ring indexed by the token, so that
/// insert and remove are an array store each, with no hashing.
///
/// Rules:
/// - Tokens passed to `insert` increase (gaps are fine: tokens used elsewhere).
/// - The ring covers the tokens from the oldest live one on; it doubles up to
///   `maxRing` slots. A token that would not fit even then pushes the oldest live
///   entries into a dictionary, so one entry that stays for minutes among millions that
///   come and go costs one dictionary slot, not a ring of millions.
///
/// Loop thread only (no locking).
struct TokenTable<Value> {
    private var slots: [Value?]
    /// Tokens below `base` live in `overflow`, if anywhere.
    private var base: UInt64 = 0
    /// One past the highest token inserted.
    private var end: UInt64 = 0
    private var overflow: [UInt64: Value] = [:]
    private var inRing = 0
    let maxRing: Int

    init(initialSlots: Int = 1024, maxRing: Int = 1 << 18) {
        precondition(initialSlots > 0 && initialSlots & (initialSlots - 1) == 0 && maxRing >= initialSlots)
        slots = [Value?](repeating: nil, count: initialSlots)
        self.maxRing = maxRing
    }

    var count: Int { inRing + overflow.count }
    var isEmpty: Bool { count == 0 }

    @inline(__always)
    private func slot(_ token: UInt64) -> Int { Int(truncatingIfNeeded: token) & (slots.count - 1) }

    mutating func insert(_ token: UInt64, _ value: Value) {
        precondition(token >= end, "tokens must increase")
        if inRing == 0 { base = token }
        while token - base >= UInt64(slots.count) {
            if slots.count < maxRing { grow() } else { spillOldest() }
        }
        slots[slot(token)] = value
        inRing += 1
        end = token + 1
    }

    mutating func remove(_ token: UInt64) -> Value? {
        if token < base || token >= end {
            return overflow.isEmpty ? nil : overflow.removeValue(forKey: token)
        }
        let i = slot(token)
        guard let v = slots[i] else { return nil }
        slots[i] = nil
        inRing -= 1
        if inRing == 0 {
            base = end
        } else if token == base {
            while slots[slot(base)] == nil { base += 1 }
        }
        return v
    }

    /// Every entry, oldest first (for shutdown and tests).
    func values() -> [Value] {
        var out = overflow.sorted { $0.key < $1.key }.map(\.value)
        if inRing > 0 {
            var t = base
            while t < end {
                if let v = slots[slot(t)] { out.append(v) }
                t += 1
            }
        }
        return out
    }

    private mutating func grow() {
        var bigger = [Value?](repeating: nil, count: slots.count * 2)
        if inRing > 0 {
            var t = base
            while t < end {
                let v = slots[slot(t)]
                if v != nil { bigger[Int(truncatingIfNeeded: t) & (bigger.count - 1)] = v }
                t += 1
            }
        }
        slots = bigger
    }

    /// Moves the oldest live ring entry to `overflow` and advances `base` past it.
    private mutating func spillOldest() {
        let i = slot(base)
        if let v = slots[i] {
            overflow[base] = v
            slots[i] = nil
            inRing -= 1
        }
        base += 1
        if inRing == 0 {
            base = end
            return
        }
        while slots[slot(base)] == nil { base += 1 }
    }
}
