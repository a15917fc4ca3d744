import StreamOtterCore
import XCTest

final class WebSocketHandshakeTests: XCTestCase {
    private func request(method: String = "GET", version: String = "HTTP/1.1", _ headers: [(String, String)]) -> HTTPRequest {
        HTTPRequest(method: method, target: "/ws", version: version, headers: headers.map { (name: $0.0, value: $0.1) })
    }

    private func baseHeaders(protocols: [String] = [], version: String = "13", key: String = "dGhlIHNhbXBsZSBub25jZQ==") -> [(String, String)] {
        var h = [("Host", "server.example.com"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
                 ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]
        if !protocols.isEmpty { h.append(("Sec-WebSocket-Protocol", protocols.joined(separator: ", "))) }
        return h
    }

    func testRFCSampleAcceptKey() {
        // RFC 6455 section 1.3 and 4.2.2. (The value "s3pPLMBiTxaQ9kYGzzhZ5OhGFGs=" quoted
        // in some notes is wrong; `openssl sha1 -binary | base64` agrees with the RFC.)
        XCTAssertEqual(WebSocketHandshake.acceptKey(for: "dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    func testAcceptsValidUpgrade() {
        let r = request(baseHeaders())
        XCTAssertTrue(WebSocketHandshake.isUpgradeRequest(r))
        XCTAssertEqual(WebSocketHandshake.evaluate(r, supported: ["streamotter.v1"]),
                       .accept(acceptKey: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", subprotocol: nil))
    }

    func testTokensAreCaseInsensitiveAndListed() {
        let r = request([("host", "h"), ("Upgrade", "WebSocket"), ("Connection", "keep-alive, UPGRADE"),
                         ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")])
        XCTAssertEqual(WebSocketHandshake.evaluate(r, supported: []), .accept(acceptKey: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", subprotocol: nil))
    }

    func testNotAnUpgrade() {
        let r = request([("Host", "x")])
        XCTAssertFalse(WebSocketHandshake.isUpgradeRequest(r))
        guard case .reject(400, _, _) = WebSocketHandshake.evaluate(r, supported: []) else { return XCTFail() }
    }

    func testMissingOrRepeatedHostIs400() {
        let without = baseHeaders().filter { $0.0 != "Host" }
        guard case .reject(400, let reason, _) = WebSocketHandshake.evaluate(request(without), supported: []) else { return XCTFail() }
        XCTAssertTrue(reason.contains("Host"), reason)
        guard case .reject(400, _, _) = WebSocketHandshake.evaluate(request(baseHeaders() + [("HOST", "other")]), supported: []) else {
            return XCTFail()
        }
    }

    func testMethodNotGetIs405() {
        guard case .reject(405, _, let headers) = WebSocketHandshake.evaluate(request(method: "POST", baseHeaders()), supported: []) else {
            return XCTFail()
        }
        XCTAssertEqual(headers.first?.0, "Allow")
    }

    func testHTTP10Is400() {
        guard case .reject(400, _, _) = WebSocketHandshake.evaluate(request(version: "HTTP/1.0", baseHeaders()), supported: []) else {
            return XCTFail()
        }
    }

    func testMissingConnectionUpgradeIs400() {
        let h = baseHeaders().filter { $0.0 != "Connection" } + [("Connection", "keep-alive")]
        guard case .reject(400, _, _) = WebSocketHandshake.evaluate(request(h), supported: []) else { return XCTFail() }
    }

    func testVersion12Is426WithVersionHeader() {
        let decision = WebSocketHandshake.evaluate(request(baseHeaders(version: "12")), supported: [])
        guard case .reject(426, _, let headers) = decision else { return XCTFail("\(decision)") }
        XCTAssertEqual(headers.map { $0.0 }, ["Sec-WebSocket-Version"])
        XCTAssertEqual(headers.map { $0.1 }, ["13"])
        let missing = request(baseHeaders().filter { $0.0 != "Sec-WebSocket-Version" })
        guard case .reject(426, _, _) = WebSocketHandshake.evaluate(missing, supported: []) else { return XCTFail() }
    }

    func testBadKeyIs400() {
        for key in ["", "abc", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZXg=", "AAAAAAAAAAAAAAAAAAAAAAAA", "!!!!!!!!!!!!!!!!!!!!!!=="] {
            guard case .reject(400, _, _) = WebSocketHandshake.evaluate(request(baseHeaders(key: key)), supported: []) else {
                return XCTFail("key \(key)")
            }
        }
        let twoKeys = request(baseHeaders() + [("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
        guard case .reject(400, _, _) = WebSocketHandshake.evaluate(twoKeys, supported: []) else { return XCTFail() }
    }

    func testSubprotocolSelection() {
        let key = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        // Client order wins among supported ones.
        XCTAssertEqual(WebSocketHandshake.evaluate(request(baseHeaders(protocols: ["b", "a"])), supported: ["a", "b"]),
                       .accept(acceptKey: key, subprotocol: "b"))
        XCTAssertEqual(WebSocketHandshake.evaluate(request(baseHeaders(protocols: ["chat", "streamotter.v1"])), supported: ["streamotter.v1"]),
                       .accept(acceptKey: key, subprotocol: "streamotter.v1"))
        // Offered across two header lines.
        let twoLines = request(baseHeaders() + [("Sec-WebSocket-Protocol", "x"), ("Sec-WebSocket-Protocol", "streamotter.v1")])
        XCTAssertEqual(WebSocketHandshake.evaluate(twoLines, supported: ["streamotter.v1"]), .accept(acceptKey: key, subprotocol: "streamotter.v1"))
        // Offered, none supported.
        let decision = WebSocketHandshake.evaluate(request(baseHeaders(protocols: ["chat"])), supported: ["streamotter.v1"])
        guard case .reject(400, _, _) = decision else { return XCTFail("\(decision)") }
        // None offered.
        XCTAssertEqual(WebSocketHandshake.evaluate(request(baseHeaders()), supported: ["streamotter.v1"]), .accept(acceptKey: key, subprotocol: nil))
    }

    func testFromParsedRequest() throws {
        let text = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: streamotter.v1\r\n\r\n"
        let (r, _) = try XCTUnwrap(try bytes(text).withUnsafeBytes { try HTTPRequestParser.parse($0, limits: HTTPLimits()) })
        XCTAssertEqual(WebSocketHandshake.evaluate(r, supported: ["streamotter.v1"]),
                       .accept(acceptKey: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", subprotocol: "streamotter.v1"))
    }

    func testAcceptResponse() {
        XCTAssertEqual(String(decoding: WebSocketHandshake.acceptResponse(acceptKey: "K=", subprotocol: nil), as: UTF8.self),
                       "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: K=\r\n\r\n")
        XCTAssertEqual(String(decoding: WebSocketHandshake.acceptResponse(acceptKey: "K=", subprotocol: "p"), as: UTF8.self),
                       "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: K=\r\nSec-WebSocket-Protocol: p\r\n\r\n")
    }

    func testSimpleResponse() {
        let text = String(decoding: WebSocketHandshake.simpleResponse(status: 426, reason: "Upgrade Required", body: "née",
                                                                       headers: [("Sec-WebSocket-Version", "13")]), as: UTF8.self)
        XCTAssertEqual(text, "HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n" +
                       "Connection: close\r\nSec-WebSocket-Version: 13\r\n\r\nnée")
        let injected = String(decoding: WebSocketHandshake.simpleResponse(status: 400, reason: "a\r\nX: y", body: "", contentType: "t",
                                                                           headers: [("H", "v\r\nEvil: 1")]), as: UTF8.self)
        XCTAssertFalse(injected.contains("\r\nX: y"))
        XCTAssertFalse(injected.contains("\r\nEvil"))
    }

    func testHTTPStatusPhrases() {
        XCTAssertEqual(HTTPStatus.reasonPhrase(431), "Request Header Fields Too Large")
        XCTAssertEqual(HTTPStatus.reasonPhrase(426), "Upgrade Required")
    }
}
