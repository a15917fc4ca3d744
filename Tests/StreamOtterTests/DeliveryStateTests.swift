import StreamOtterCore
import XCTest
@testable import StreamOtter

/// The pure parts of issue 4's engine logic: the publish dedupe window, the replay token
/// bucket, the publish fingerprint, the fault-injection command parser's error names, the
/// slow-consumer positions frame and the new configuration keys. Manual clocks throughout.
final class DeliveryStateTests: XCTestCase {
    private func key(_ id: String, _ value: String = "v", channel: String = "c") -> PublishKey {
        PublishKey(channel: channel, id: id, key: nil, headers: [], value: Array(value.utf8))
    }

    func testInFlightThenAckedThenExpiredByTime() {
        var w = DedupeWindow(capacity: 10, ttlMs: 1000)
        XCTAssertNil(w.lookup(key("p1"), now: 0))
        w.begin(key("p1"), token: 7)
        XCTAssertEqual(w.lookup(key("p1"), now: 5), .inFlight(token: 7))
        w.acked(key("p1"), partition: 2, offset: 40, now: 10)
        XCTAssertEqual(w.lookup(key("p1"), now: 500), .acked(partition: 2, offset: 40))
        XCTAssertEqual(w.lookup(key("p1"), now: 1009), .acked(partition: 2, offset: 40))
        XCTAssertNil(w.lookup(key("p1"), now: 1010), "kept for ttlMs after the ack, then forgotten")
        XCTAssertEqual(w.count, 0)
    }

    func testCapacityEvictsOldestAckedFirstButNeverInFlight() {
        var w = DedupeWindow(capacity: 3, ttlMs: 1_000_000)
        w.begin(key("inflight"), token: 1)
        for i in 0..<5 {
            w.begin(key("a\(i)"), token: UInt64(10 + i))
            w.acked(key("a\(i)"), partition: 0, offset: Int64(i), now: UInt64(i))
        }
        XCTAssertEqual(w.ackedCount, 3)
        XCTAssertNil(w.lookup(key("a0"), now: 10))
        XCTAssertNil(w.lookup(key("a1"), now: 10))
        XCTAssertEqual(w.lookup(key("a4"), now: 10), .acked(partition: 0, offset: 4))
        XCTAssertEqual(w.lookup(key("inflight"), now: 10), .inFlight(token: 1))
    }

    func testFailedIsForgottenSoAResendProducesAgain() {
        var w = DedupeWindow(capacity: 3, ttlMs: 1000)
        w.begin(key("p"), token: 1)
        w.failed(key("p"))
        XCTAssertNil(w.lookup(key("p"), now: 0))
    }

    func testSameIdOtherContentOrChannelIsAnotherPublish() {
        var w = DedupeWindow(capacity: 3, ttlMs: 1000)
        w.begin(key("p1", "a"), token: 1)
        w.acked(key("p1", "a"), partition: 0, offset: 1, now: 0)
        XCTAssertNil(w.lookup(key("p1", "b"), now: 1))
        XCTAssertNil(w.lookup(key("p1", "a", channel: "other"), now: 1))
        XCTAssertNotNil(w.lookup(key("p1", "a"), now: 1))
    }

    func testDisabledWindowRemembersNothing() {
        var w = DedupeWindow(capacity: 0, ttlMs: 1000)
        XCTAssertFalse(w.isEnabled)
        w.begin(key("p"), token: 1)
        w.acked(key("p"), partition: 0, offset: 0, now: 0)
        XCTAssertNil(w.lookup(key("p"), now: 0))
    }

    func testReAckAfterEvictionDoesNotDropTheNewerEntry() {
        // An entry evicted from `order` must not remove a newer entry under the same key.
        var w = DedupeWindow(capacity: 1, ttlMs: 1_000_000)
        w.begin(key("x"), token: 1)
        w.acked(key("x"), partition: 0, offset: 1, now: 0)
        w.failed(key("x"))
        w.begin(key("x"), token: 2)
        w.acked(key("x"), partition: 0, offset: 2, now: 1)   // evicts the first (same key, older generation)
        XCTAssertEqual(w.lookup(key("x"), now: 2), .acked(partition: 0, offset: 2))
    }

    func testFingerprintCoversKeyHeadersAndValue() {
        let base = PublishKey(channel: "c", id: "i", key: Array("k".utf8), headers: [("h", Array("v".utf8))], value: [1, 2])
        let same = PublishKey(channel: "c", id: "i", key: Array("k".utf8), headers: [("h", Array("v".utf8))], value: [1, 2])
        XCTAssertEqual(base, same)
        XCTAssertNotEqual(base, PublishKey(channel: "c", id: "i", key: nil, headers: [("h", Array("v".utf8))], value: [1, 2]))
        XCTAssertNotEqual(base, PublishKey(channel: "c", id: "i", key: [], headers: [("h", Array("v".utf8))], value: [1, 2]))
        XCTAssertNotEqual(base, PublishKey(channel: "c", id: "i", key: Array("k".utf8), headers: [("h", Array("w".utf8))], value: [1, 2]))
        XCTAssertNotEqual(base, PublishKey(channel: "c", id: "i", key: Array("k".utf8), headers: [], value: [1, 2]))
        XCTAssertNotEqual(base, PublishKey(channel: "c", id: "i", key: Array("k".utf8), headers: [("h", Array("v".utf8))], value: [1, 3]))
        // length-prefixed: moving bytes between fields changes the fingerprint
        XCTAssertNotEqual(PublishKey(channel: "c", id: "i", key: Array("ab".utf8), headers: [], value: Array("c".utf8)),
                          PublishKey(channel: "c", id: "i", key: Array("a".utf8), headers: [], value: Array("bc".utf8)))
    }

    func testTokenBucketRateAndBurst() {
        var b = TokenBucket(rate: 1000, now: 0)
        XCTAssertEqual(b.burst, 100)
        var taken = 0
        while b.take(now: 0) { taken += 1 }
        XCTAssertEqual(taken, 100, "starts with one burst")
        XCTAssertFalse(b.take(now: 0))
        XCTAssertFalse(b.take(now: 0), "no token out of thin air")
        taken = 0
        for t in stride(from: UInt64(10), through: 1000, by: 10) {
            while b.take(now: t) { taken += 1 }
        }
        XCTAssertEqual(taken, 1000, "1000 per second, paced")
        // idle time refills at most one burst
        taken = 0
        while b.take(now: 60_000) { taken += 1 }
        XCTAssertEqual(taken, 100)
    }

    func testTokenBucketUnlimitedAndTiny() {
        var u = TokenBucket(rate: 0, now: 0)
        for _ in 0..<10_000 { XCTAssertTrue(u.take(now: 0)) }
        var tiny = TokenBucket(rate: 5, now: 0)
        XCTAssertEqual(tiny.burst, 1)
        XCTAssertTrue(tiny.take(now: 0))
        XCTAssertFalse(tiny.take(now: 100))
        XCTAssertTrue(tiny.take(now: 200))
    }

    func testMockControlErrorNames() {
        XCTAssertEqual(DevKafkaControl.errorCode("NOT_LEADER_FOR_PARTITION")?.rawValue, 6)
        XCTAssertEqual(DevKafkaControl.errorCode("RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION")?.rawValue, 6)
        XCTAssertEqual(DevKafkaControl.errorCode("_TRANSPORT")?.rawValue, -195)
        XCTAssertEqual(DevKafkaControl.errorCode("7")?.rawValue, 7)
        XCTAssertNil(DevKafkaControl.errorCode("NO_SUCH_ERROR"))
    }

    func testDevKafkaControlCommandsAgainstTheMockCluster() throws {
        let dev = try DevKafka(brokers: 2, topics: ["t:2"])
        XCTAssertEqual(dev.control("ping"), "ok pong")
        XCTAssertEqual(dev.control("broker-down 1\n"), "ok broker-down 1")
        XCTAssertEqual(dev.control("broker-up 1"), "ok broker-up 1")
        XCTAssertEqual(dev.control("  rtt -1 5 "), "ok rtt -1 5")
        XCTAssertEqual(dev.control("request-errors 0 NOT_LEADER_FOR_PARTITION 2"), "ok request-errors 0 NOT_LEADER_FOR_PARTITION 2")
        XCTAssertEqual(dev.control("clear-request-errors 0"), "ok clear-request-errors 0")
        XCTAssertEqual(dev.control("leader t 1 2"), "ok leader t 1 2")
        XCTAssertEqual(dev.control("topic u 3"), "ok topic u 3")
        XCTAssertEqual(dev.control(""), "", "blank lines are not answered")
        XCTAssertEqual(dev.control("# a comment"), "")
        for bad in ["bogus", "broker-down", "broker-down x", "rtt 1 -5", "request-errors 0 NO_SUCH 1", "topic u 0", "leader t x 1"] {
            XCTAssertTrue(dev.control(bad).hasPrefix("error "), bad)
        }
        XCTAssertTrue(dev.control("broker-down 9").hasPrefix("error "), "unknown broker")
    }

    func testSlowConsumerFrameCarriesResumablePositions() throws {
        let bytes = ServerFrames.slowConsumer(positions: [("orders", [(0, 43), (1, 8)]), ("x", [])], limit: 1024)
        guard case .object(let members) = try JSON.parse(bytes) else { return XCTFail("not an object") }
        let obj = Dictionary(members, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(obj["op"], .string("error"))
        XCTAssertEqual(obj["code"], .string("slow_consumer"))
        guard case .object(let pos)? = obj["positions"], case .object(let orders)? = pos.first?.1 else {
            return XCTFail("positions missing")
        }
        XCTAssertEqual(pos.first?.0, "orders")
        XCTAssertEqual(orders.map { $0.0 }, ["0", "1"])
        // the same shape `from` accepts
        let req = try ProtocolParser.parse(Array(#"{"op":"subscribe","channel":"orders","from":{"offsets":{"0":43,"1":8}}}"#.utf8))
        guard case .subscribe(_, _, .offsets(let offs)) = req else { return XCTFail("\(req)") }
        XCTAssertEqual(offs, [0: 43, 1: 8])
    }

    func testConfigKeys() throws {
        var c = EngineConfig()
        XCTAssertFalse(c.slowConsumerPause)
        try c.set("ws.slow_consumer", "pause")
        try c.set("gateway.dedupe_window", "5")
        try c.set("gateway.dedupe_window_ms", "250")
        try c.set("gateway.replay_rate", "0")
        try c.set("ws.slow_consumer_grace_ms", "300")
        XCTAssertTrue(c.slowConsumerPause)
        XCTAssertEqual(c.dedupeWindow, 5)
        XCTAssertEqual(c.dedupeWindowMs, 250)
        XCTAssertEqual(c.replayRate, 0)
        XCTAssertEqual(c.slowConsumerGraceMs, 300)
        XCTAssertThrowsError(try c.set("ws.slow_consumer", "drop")) { XCTAssertTrue("\($0)".contains("ws.slow_consumer")) }
        XCTAssertThrowsError(try c.set("gateway.replay_rate", "-1")) { XCTAssertTrue("\($0)".contains("gateway.replay_rate")) }
        XCTAssertTrue(c.deliverOnAck)
        try c.set("gateway.deliver_on_ack", "false")
        XCTAssertFalse(c.deliverOnAck)
        try c.set("gateway.deliver_on_ack", "on")
        XCTAssertTrue(c.deliverOnAck)
        XCTAssertThrowsError(try c.set("gateway.deliver_on_ack", "maybe")) { XCTAssertTrue("\($0)".contains("gateway.deliver_on_ack")) }
        for k in ["gateway.dedupe_window", "gateway.dedupe_window_ms", "gateway.replay_rate", "gateway.deliver_on_ack", "ws.slow_consumer", "ws.slow_consumer_grace_ms"] {
            XCTAssertTrue(EngineConfig.knownKeys.contains(k), k)
        }
    }
}
