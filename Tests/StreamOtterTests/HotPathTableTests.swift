import XCTest
@testable import StreamOtter

/// The hot-path tables of the publish path, checked against a Dictionary model under long
/// random sequences (a fixed seed, so a failure repeats).
final class HotPathTableTests: XCTestCase {
    /// SplitMix64: a small deterministic generator for the test sequences.
    private struct Mix: RandomNumberGenerator {
        var s: UInt64
        mutating func next() -> UInt64 {
            s &+= 0x9e37_79b9_7f4a_7c15
            var z = s
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
    }

    func testTokenTableMatchesADictionaryIncludingSpillsAndGaps() {
        var rng = Mix(s: 42)
        // A small ring, so that growth and the overflow dictionary are both exercised.
        var t = TokenTable<String>(initialSlots: 4, maxRing: 64)
        var model: [UInt64: String] = [:]
        var live: [UInt64] = []  // the model's tokens in insertion (= token) order
        var next: UInt64 = 1
        for step in 0..<50_000 {
            let r = Int.random(in: 0..<100, using: &rng)
            if r < 50 || live.isEmpty {
                next += UInt64.random(in: 1...3, using: &rng)  // gaps: tokens used elsewhere
                t.insert(next, "v\(next)")
                model[next] = "v\(next)"
                live.append(next)
            } else if r < 95 {
                // Mostly the oldest few (in-order completion), sometimes any.
                let i = r < 85 ? Int.random(in: 0..<min(4, live.count), using: &rng) : Int.random(in: 0..<live.count, using: &rng)
                let k = live.remove(at: i)
                XCTAssertEqual(t.remove(k), model.removeValue(forKey: k), "step \(step)")
            } else {
                let k = UInt64.random(in: 0...(next + 5), using: &rng)
                XCTAssertEqual(t.remove(k), model.removeValue(forKey: k), "step \(step) token \(k)")
                if let i = live.firstIndex(of: k) { live.remove(at: i) }
            }
            XCTAssertEqual(t.count, model.count)
        }
        XCTAssertEqual(t.values(), model.keys.sorted().map { model[$0]! })
    }

    func testTokenTableKeepsOneStuckEntryWithoutGrowingTheRing() {
        var t = TokenTable<Int>(initialSlots: 8, maxRing: 16)
        t.insert(1, 1)  // never completes while 200,000 others come and go
        for i in 2..<200_000 {
            t.insert(UInt64(i), i)
            XCTAssertEqual(t.remove(UInt64(i)), i)
        }
        XCTAssertEqual(t.count, 1)
        XCTAssertEqual(t.remove(1), 1)
        XCTAssertTrue(t.isEmpty)
        XCTAssertNil(t.remove(1))
    }

    func testDedupeWindowTableSurvivesHeavyChurn() {
        // Capacity 5,000 acked entries: the table grows, and expiry and failures remove
        // entries from the middle of probe runs (backward-shift deletion).
        var rng = Mix(s: 7)
        var w = DedupeWindow(capacity: 5_000, ttlMs: 1_000_000)
        var inFlight: [Int: UInt64] = [:]   // id -> token
        var inFlightIDs: [Int] = []
        var acked: [Int] = []               // in ack order
        var failedIDs = Set<Int>()
        var id = 0
        func k(_ i: Int) -> PublishKey { PublishKey(channel: "c", id: "p\(i)", key: nil, headers: [], value: [UInt8(i & 0xff)]) }
        for now in 0..<60_000 {
            let r = Int.random(in: 0..<10, using: &rng)
            if r < 5 || inFlight.isEmpty {
                id += 1
                w.begin(k(id), token: UInt64(id))
                inFlight[id] = UInt64(id)
                inFlightIDs.append(id)
            } else {
                let j = Int.random(in: 0..<inFlightIDs.count, using: &rng)
                let i = inFlightIDs[j]
                inFlightIDs.swapAt(j, inFlightIDs.count - 1)
                inFlightIDs.removeLast()
                inFlight.removeValue(forKey: i)
                if r == 9 {
                    w.failed(k(i))
                    failedIDs.insert(i)
                } else {
                    w.acked(k(i), partition: 1, offset: Int64(i), now: UInt64(now))
                    acked.append(i)
                }
            }
        }
        for (i, token) in inFlight { XCTAssertEqual(w.lookup(k(i), now: 60_000), .inFlight(token: token)) }
        let kept = acked.suffix(5_000)
        for i in kept { XCTAssertEqual(w.lookup(k(i), now: 60_000), .acked(partition: 1, offset: Int64(i))) }
        for i in acked.dropLast(5_000) { XCTAssertNil(w.lookup(k(i), now: 60_000)) }
        for i in failedIDs { XCTAssertNil(w.lookup(k(i), now: 60_000)) }
        XCTAssertEqual(w.count, inFlight.count + kept.count)
    }

    func testPartitionPositionsInlineAndBeyond() {
        var rng = Mix(s: 3)
        var p = PartitionPositions()
        var model: [Int32: Int64] = [:]
        XCTAssertNil(p[0])
        XCTAssertNil(p[-1])
        for _ in 0..<5_000 {
            let part = Int32.random(in: -1..<12, using: &rng)
            if Bool.random(using: &rng) {
                let v = Int64.random(in: 0..<1_000_000, using: &rng)
                p[part] = v
                if part >= 0 { model[part] = v }
            } else {
                p[part] = nil
                model.removeValue(forKey: part)
            }
            XCTAssertEqual(p[part], model[part], "partition \(part)")
        }
        XCTAssertEqual(p.sorted.map { $0.0 }, model.keys.sorted())
        XCTAssertEqual(p.sorted.map { $0.1 }, model.keys.sorted().map { model[$0]! })
        // Offset 0 and the largest offsets are values, not "absent".
        p[2] = 0
        p[9] = Int64.max
        XCTAssertEqual(p[2], 0)
        XCTAssertEqual(p[9], Int64.max)
    }
}
