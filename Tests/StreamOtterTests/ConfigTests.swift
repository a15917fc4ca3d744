import XCTest
@testable import StreamOtter

final class ConfigTests: XCTestCase {
    func testKafkaKeysPassThrough() throws {
        var c = EngineConfig()
        try c.set("kafka.linger.ms", "7")
        try c.set("kafka.producer.compression.type", "lz4")
        try c.set("kafka.consumer.fetch.wait.max.ms", "50")
        XCTAssertEqual(c.kafka.first?.0, "linger.ms")
        XCTAssertEqual(c.kafkaProducer.first?.1, "lz4")
        XCTAssertEqual(c.kafkaConsumer.first?.0, "fetch.wait.max.ms")
        XCTAssertTrue(c.usesEmbeddedKafka)
        try c.set("kafka.bootstrap.servers", "127.0.0.1:9092")
        XCTAssertFalse(c.usesEmbeddedKafka)
    }

    func testBadValuesNameTheKey() {
        var c = EngineConfig()
        XCTAssertThrowsError(try c.set("ws.max_frame_size", "abc")) { e in
            XCTAssertTrue("\(e)".contains("ws.max_frame_size"))
        }
        XCTAssertThrowsError(try c.set("nonsense", "1"))
        XCTAssertThrowsError(try c.set("listen", "nope"))
    }

    func testLimitsOnInFlightPublishesAndIncompleteMessages() throws {
        var c = EngineConfig()
        XCTAssertEqual(c.maxPublishesInFlight, 1024)
        try c.set("limits.max_publishes_in_flight", "200")
        XCTAssertEqual(c.maxPublishesInFlight, 200)
        XCTAssertThrowsError(try c.set("limits.max_publishes_in_flight", "1")) { e in
            XCTAssertTrue("\(e)".contains("limits.max_publishes_in_flight"))
        }
        try c.set("ws.max_inbound_buffered_bytes", "2097152")
        XCTAssertThrowsError(try c.set("ws.max_inbound_buffered_bytes", "-5"))
    }

    func testSecurityNumbersAreFiniteAndBounded() throws {
        // Values that cannot become integers (they trapped: UInt64(1e30), Int(inf)) are
        // configuration errors naming the key.
        var c = EngineConfig()
        for (key, value) in [("auth.jwt.reload_interval_ms", "1e30"), ("auth.jwt.reload_interval_ms", "inf"),
                             ("auth.introspection.timeout_ms", "1e300"), ("auth.introspection.timeout_ms", "nan"),
                             ("encryption.reload_interval_ms", "infinity"), ("auth.jwt.leeway_s", "inf"),
                             ("limits.bytes_per_second", "1e13"), ("limits.messages_per_second", "-1")] {
            XCTAssertThrowsError(try c.set(key, value), "\(key)=\(value)") { e in
                XCTAssertTrue("\(e)".contains(key), "\(e)")
            }
        }
        try c.set("auth.jwt.reload_interval_ms", "1e12")
        XCTAssertEqual(c.security.keyReloadIntervalMs, 1_000_000_000_000)
        try c.set("auth.introspection.timeout_ms", "2500")
        XCTAssertEqual(c.security.introspectionTimeoutMs, 2500)
        try c.set("limits.bytes_per_second", "0.5")
        XCTAssertEqual(c.security.bytesPerSecond, 0.5)
    }

    func testListenAndFile() throws {
        var c = EngineConfig()
        try c.set("listen", "0.0.0.0:0")
        XCTAssertEqual(c.listenHost, "0.0.0.0")
        XCTAssertEqual(c.listenPort, 0)
        let kv = try EngineConfig.parseFile("# comment\nlisten = 127.0.0.1:9000\n\nkafka.acks = all\n")
        XCTAssertEqual(kv.count, 2)
        XCTAssertEqual(kv[1].0, "kafka.acks")
        XCTAssertThrowsError(try EngineConfig.parseFile("garbage line"))
    }
}
