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

    /// Engines sharing one SO_REUSEPORT listener share their figures through a group that
    /// leaves the registry with its last engine: starting and stopping engines over and
    /// over leaves nothing behind.
    func testMetricsGroupsLeaveWithTheirLastEngine() throws {
        let gw = try makeGateway(topics: "swift-mg:1")
        defer { gw.stop(); gw.wait() }
        let before = MetricsGroup.registeredCount
        for _ in 0..<3 {
            var cfg = EngineConfig()
            try cfg.set("listen", "127.0.0.1:0")
            try cfg.set("reuseport", "on")
            try cfg.set("kafka.bootstrap.servers", gw.bootstrapServers)
            let a = Engine(config: cfg)
            try a.start()
            try cfg.set("listen", "127.0.0.1:\(a.port)")
            let b = Engine(config: cfg)
            try b.start()
            XCTAssertEqual(MetricsGroup.registeredCount, before + 1, "both engines in one group")
            a.stop(); a.wait()
            XCTAssertEqual(MetricsGroup.registeredCount, before + 1, "the group stays while an engine is in it")
            b.stop(); b.wait()
            XCTAssertEqual(MetricsGroup.registeredCount, before, "the last engine takes the group away")
        }
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

    /// A server that breaks streamotter.v1 (here an engine with gateway.protocol=none whose
    /// host answers by hand) must not take the client's process down: a `message` with a
    /// partition beyond Int32, one with offset Int64.max (whose next offset would overflow),
    /// a negative partition and an `ok` with a negative start offset each close the
    /// connection with 1002, are reported as `protocol_error`, deliver nothing, and the
    /// client reconnects; the fifth connection behaves and its message arrives.
    func testServerFramesOutOfRangeCloseWith1002AndTheClientReconnects() throws {
        var sc = EngineConfig()
        try sc.set("listen", "127.0.0.1:0")
        try sc.set("embedded.brokers", "1")
        try sc.set("gateway.protocol", "none")
        let server = Engine(config: sc)
        let lock = NSLock()
        var connections: [UInt64] = []
        var serverCloses: [Int: UInt16] = [:]
        var hooks = ServerHooks()
        hooks.onConnect = { id, _, _ in lock.lock(); connections.append(id); lock.unlock() }
        hooks.onClose = { id, code, _ in
            lock.lock(); if let n = connections.firstIndex(of: id) { serverCloses[n + 1] = code }; lock.unlock()
        }
        hooks.onMessage = { [unowned server] id, _, bytes in
            guard let req = try? JSON.parse(bytes), req["op"]?.stringValue == "subscribe",
                  let rid = req["id"]?.stringValue, let channel = req["channel"]?.stringValue else { return }
            lock.lock(); let n = (connections.firstIndex(of: id) ?? -1) + 1; lock.unlock()
            func send(_ s: String) { server.send(connection: id, Array(s.utf8)) }
            let ok = "{\"op\":\"ok\",\"id\":\"\(rid)\",\"channel\":\"\(channel)\",\"offsets\":{\"0\":0}}"
            func message(_ p: String, _ o: String, _ n: Int) -> String {
                "{\"op\":\"message\",\"channel\":\"\(channel)\",\"partition\":\(p),\"offset\":\(o),\"data\":{\"n\":\(n)}}"
            }
            switch n {
            case 1: send(ok); send(message("1099511627776", "5", 1))
            case 2: send(ok); send(message("0", "9223372036854775807", 2))
            case 3: send(ok); send(message("-1", "0", 3))
            case 4: send("{\"op\":\"ok\",\"id\":\"\(rid)\",\"channel\":\"\(channel)\",\"offsets\":{\"0\":-1}}")
            default: send(ok); send(message("0", "0", 5))
            }
        }
        server.serverHooks = hooks
        try server.start()
        defer { server.stop(); server.wait() }

        var cc = EngineConfig()
        try cc.set("mode", "client")
        let ce = Engine(config: cc)
        try ce.start()
        defer { ce.stop(); ce.wait() }
        var conf = ClientConfig()
        try conf.set("reconnect.initial_delay_ms", "10")
        try conf.set("reconnect.max_delay_ms", "40")
        try conf.set("client.ping_interval_ms", "0")
        let client = try StreamClient(engine: ce, url: "ws://127.0.0.1:\(server.port)/", config: conf)
        var errors: [ClientError] = []
        var closes: [(UInt16, String)] = []
        var received: [StreamMessage] = []
        var subscribed = 0
        client.onError = { e in lock.lock(); errors.append(e); lock.unlock() }
        client.onClose = { code, reason in lock.lock(); closes.append((code, reason)); lock.unlock() }
        let good = expectation(description: "the good message of the fifth connection")
        client.subscribe(channel: "orders", handler: { m in
            lock.lock(); received.append(m); lock.unlock()
            if m.partition == 0 && m.offset == 0 { good.fulfill() }
        }) { r in
            if case .success = r { lock.lock(); subscribed += 1; lock.unlock() }
        }
        client.start()
        wait(for: [good], timeout: 20)
        usleep(100_000)   // nothing else may arrive
        client.close()

        lock.lock(); defer { lock.unlock() }
        XCTAssertEqual(received.map { "\($0.partition)/\($0.offset)" }, ["0/0"])
        XCTAssertEqual(received.first.flatMap { $0.data.map { String(decoding: $0, as: UTF8.self) } }, "{\"n\":5}")
        XCTAssertEqual(subscribed, 1, "the subscribe completes once (on the first good ok)")
        XCTAssertEqual(errors.map(\.code), Array(repeating: "protocol_error", count: 4), "\(errors)")
        XCTAssertTrue(errors[0].message.contains("partition 1099511627776 is outside 0...2147483647"), errors[0].message)
        XCTAssertTrue(errors[1].message.contains("offset 9223372036854775807 is outside"), errors[1].message)
        XCTAssertTrue(errors[2].message.contains("partition -1 is outside"), errors[2].message)
        XCTAssertTrue(errors[3].message.contains("offsets[0] is not an offset"), errors[3].message)
        XCTAssertEqual(closes.prefix(4).map { $0.0 }, [1002, 1002, 1002, 1002])
        XCTAssertEqual(closes.first?.1, errors.first?.message, "onClose carries the reason")
        XCTAssertEqual((1...4).map { serverCloses[$0] }, [1002, 1002, 1002, 1002], "the server received Close 1002")
        XCTAssertGreaterThanOrEqual(client.health.reconnects, 4)
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

    func testCustomAuthHandlerAllowsAndDenies() throws {
        var c = EngineConfig()
        try c.set("listen", "127.0.0.1:0")
        try c.set("embedded.brokers", "1")
        let gw = Engine(config: c)
        let lock = NSLock()
        var seen: [String] = []
        gw.authHandler = { req, answer in
            let user = req.headers.first { $0.0.lowercased() == "x-user" }?.1
            lock.lock(); seen.append(user ?? "-"); lock.unlock()
            // Answer from another thread, later: the upgrade waits.
            Thread.detachNewThread {
                usleep(20_000)
                if let user { answer(.allow(Identity(subject: user, roles: ["reader"]))) }
                else { answer(.deny(status: 401, reason: "who are you")) }
            }
        }
        var audit: [String] = []
        gw.auditHandler = { line in lock.lock(); audit.append(line); lock.unlock() }
        try gw.start()
        defer { gw.stop(); gw.wait() }

        var cc = ClientConfig()
        try cc.set("client.header.X-User", "alice")
        let alice = try StreamClient(engine: gw, url: "ws://127.0.0.1:\(gw.port)/", config: cc)
        let opened = expectation(description: "alice opens")
        alice.onOpen = { _ in opened.fulfill() }
        alice.start()

        var nc = ClientConfig()
        try nc.set("reconnect.enabled", "false")
        let nobody = try StreamClient(engine: gw, url: "ws://127.0.0.1:\(gw.port)/", config: nc)
        let refused = expectation(description: "nobody refused")
        nobody.onError = { e in if e.code == "handshake_failed" && e.message.contains("401") { refused.fulfill() } }
        nobody.start()
        wait(for: [opened, refused], timeout: 10)
        alice.close()
        nobody.close()
        lock.lock()
        XCTAssertEqual(Set(seen), ["alice", "-"])
        XCTAssertTrue(audit.contains { $0.contains("\"event\":\"auth_success\"") && $0.contains("\"sub\":\"alice\"") })
        XCTAssertTrue(audit.contains { $0.contains("\"event\":\"auth_failure\"") })
        lock.unlock()
    }

    /// The engine's wss client verifies the server certificate and its host name.
    func testSecureClientVerifiesHostName() throws {
        let dir = NSTemporaryDirectory() + "sot-tls-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem",
                       "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)

        var c = EngineConfig()
        try c.set("listen", "127.0.0.1:0")
        try c.set("embedded.brokers", "1")
        try c.set("tls.cert_file", dir + "/cert.pem")
        try c.set("tls.key_file", dir + "/key.pem")
        let gw = Engine(config: c)
        try gw.start()
        defer { gw.stop(); gw.wait() }

        func attempt(_ host: String, verify: Bool = true) throws -> (opened: Bool, error: ClientError?) {
            var cc = ClientConfig()
            try cc.set("client.tls.ca_file", dir + "/cert.pem")
            try cc.set("reconnect.enabled", "false")
            if !verify { try cc.set("client.tls.verify", "false") }
            let client = try StreamClient(engine: gw, url: "wss://\(host):\(gw.port)/", config: cc)
            let done = expectation(description: "outcome for \(host)")
            let lock = NSLock()
            var result: (Bool, ClientError?) = (false, nil)
            client.onOpen = { _ in lock.lock(); result.0 = true; lock.unlock(); done.fulfill() }
            client.onError = { e in lock.lock(); if result.1 == nil { result.1 = e }; lock.unlock(); done.fulfill() }
            client.start()
            wait(for: [done], timeout: 10)
            client.close()
            lock.lock(); defer { lock.unlock() }
            return result
        }
        let good = try attempt("localhost")
        XCTAssertTrue(good.opened, "a certificate for localhost is accepted for localhost: \(String(describing: good.error))")
        let wrongHost = try attempt("127.0.0.1")
        XCTAssertFalse(wrongHost.opened, "a certificate for localhost is refused for 127.0.0.1")
        XCTAssertEqual(wrongHost.error?.code, "tls_failed")
        XCTAssertTrue(wrongHost.error?.message.contains("certificate verify failed") ?? false, "\(String(describing: wrongHost.error))")
    }
}
