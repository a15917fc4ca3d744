import Foundation
import StreamOtterCore
import XCTest
@testable import StreamOtter

/// The Swift binding (the engine's own API) against a real gateway on the embedded Kafka.
final class EngineClientTests: XCTestCase {
    func makeGateway(topics: String) throws -> Engine {
        var c = EngineConfig()
        try c.set("listen", "127.0.0.1:0")
        try c.set("embedded.brokers", "1")
        try c.set("embedded.topics", topics)
        let e = Engine(config: c)
        try e.start()
        return e
    }

    func testPublishThousandAndReceiveThemBack() async throws {
        let gw = try makeGateway(topics: "swift-rt:3")
        defer { gw.stop(); gw.wait() }
        let client = try StreamClient(engine: gw, url: "ws://127.0.0.1:\(gw.port)/")
        client.start()
        let stream = try await client.messages(channel: "swift-rt", from: .latest)
        let start = Date()
        let acks = try await withThrowingTaskGroup(of: PublishAck.self) { group -> [PublishAck] in
            for i in 0..<1000 {
                group.addTask { try await client.publish(channel: "swift-rt", key: "k\(i % 5)", json: "{\"n\":\(i)}") }
            }
            var out: [PublishAck] = []
            for try await a in group { out.append(a) }
            return out
        }
        XCTAssertEqual(acks.count, 1000)
        XCTAssertEqual(Set(acks.map { "\($0.partition)/\($0.offset)" }).count, 1000, "every ack names its own record")
        var received: [StreamMessage] = []
        for try await m in stream {
            received.append(m)
            if received.count == 1000 { break }
        }
        print("Swift: 1,000 publishes acked and received back in \(String(format: "%.3f", Date().timeIntervalSince(start))) s")
        XCTAssertEqual(received.count, 1000)
        var last: [Int32: Int64] = [:]
        for m in received {
            XCTAssertGreaterThan(m.offset, last[m.partition] ?? -1, "offset order per partition")
            last[m.partition] = m.offset
            XCTAssertNotNil(m.data)
        }
        let values = Set(received.compactMap { $0.data.map { String(decoding: $0, as: UTF8.self) } })
        XCTAssertEqual(values.count, 1000)
        XCTAssertTrue(values.contains("{\"n\":999}"))
        client.close()
    }

    func testHundredThousandCallbacksFromTheLoop() throws {
        let gw = try makeGateway(topics: "swift-cb:1")
        defer { gw.stop(); gw.wait() }
        let n = 100_000
        let lock = NSLock()
        var count = 0
        var opened = false
        let done = expectation(description: "all callbacks")
        // Gateway-side hooks are set before start on a second engine in "none" protocol mode.
        var cfg = EngineConfig()
        try cfg.set("listen", "127.0.0.1:0")
        try cfg.set("mode", "gateway")
        try cfg.set("gateway.protocol", "none")
        try cfg.set("kafka.bootstrap.servers", gw.bootstrapServers)
        let server = Engine(config: cfg)
        var hooks = ServerHooks()
        hooks.onConnect = { _, _, _ in lock.lock(); opened = true; lock.unlock() }
        hooks.onMessage = { _, _, _ in
            lock.lock()
            count += 1
            let c = count
            lock.unlock()
            if c == n { done.fulfill() }
        }
        server.serverHooks = hooks
        try server.start()
        defer { server.stop(); server.wait() }
        let client = try StreamClient(engine: gw, url: "ws://127.0.0.1:\(server.port)/")
        let open = expectation(description: "open")
        client.onOpen = { _ in open.fulfill() }
        client.start()
        wait(for: [open], timeout: 10)
        let t0 = Date()
        for i in 0..<n { client.send(Array("m\(i)".utf8)) }
        wait(for: [done], timeout: 60)
        print("Swift: \(n) server callbacks in \(String(format: "%.3f", Date().timeIntervalSince(t0))) s")
        lock.lock()
        XCTAssertEqual(count, n)
        XCTAssertTrue(opened)
        lock.unlock()
        client.close()
    }

    func testErrorsAreSwiftErrors() async throws {
        let gw = try makeGateway(topics: "swift-err:1")
        defer { gw.stop(); gw.wait() }
        XCTAssertThrowsError(try StreamClient(engine: gw, url: "http://nope")) { e in
            XCTAssertTrue("\(e)".contains("url"))
        }
        XCTAssertThrowsError(try gw.start()) { e in
            XCTAssertEqual((e as? StreamOtterError)?.kind, .state)
        }
        let client = try StreamClient(engine: gw, url: "ws://127.0.0.1:\(gw.port)/")
        client.start()
        do {
            _ = try await client.messages(channel: "no-such-topic")
            XCTFail("subscribing to a missing topic must fail")
        } catch let e as ClientError {
            XCTAssertEqual(e.code, "unknown_channel")
        }
        do {
            _ = try await client.publish(channel: "bad channel!", json: "1")
            XCTFail("an invalid channel must fail")
        } catch let e as ClientError {
            XCTAssertEqual(e.code, "invalid_channel")
        }
        client.close()
        do {
            _ = try await client.publish(channel: "swift-err", json: "1")
            XCTFail("publish after close must fail")
        } catch let e as ClientError {
            XCTAssertEqual(e.code, "closed")
        }
    }

    func testCircuitOpensWhenServerIsGone() throws {
        var c = EngineConfig()
        try c.set("mode", "client")
        let e = Engine(config: c)
        try e.start()
        defer { e.stop(); e.wait() }
        var cc = ClientConfig()
        try cc.set("reconnect.initial_delay_ms", "10")
        try cc.set("reconnect.max_delay_ms", "40")
        try cc.set("circuit.failure_threshold", "3")
        try cc.set("circuit.cooldown_ms", "60000")
        // A port nobody listens on.
        let client = try StreamClient(engine: e, url: "ws://127.0.0.1:1/", config: cc)
        let opened = expectation(description: "circuit open reported")
        let lock = NSLock()
        var codes: [String] = []
        client.onError = { err in
            lock.lock(); codes.append(err.code); lock.unlock()
            if err.code == "circuit_open" { opened.fulfill() }
        }
        client.start()
        wait(for: [opened], timeout: 10)
        XCTAssertEqual(client.health.state, .circuitOpen)
        XCTAssertEqual(client.health.score, 0)
        XCTAssertGreaterThanOrEqual(client.health.consecutiveFailures, 3)
        lock.lock()
        XCTAssertEqual(codes.filter { $0 == "connect_failed" }.count, 3)
        lock.unlock()
        client.close()
    }
}
