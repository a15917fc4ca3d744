import StreamOtterCore
import XCTest

final class HTTPRequestParserTests: XCTestCase {
    private let upgradeRequest = bytes(
        "GET /ws?token=abc&x=1 HTTP/1.1\r\n" +
        "Host: example.com\r\n" +
        "Upgrade: websocket\r\n" +
        "Connection: keep-alive, Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        "Sec-WebSocket-Version: 13\r\n" +
        "Sec-WebSocket-Protocol: chat, streamotter.v1\r\n" +
        "Sec-WebSocket-Protocol:   other  \r\n" +
        "\r\n")

    private func parse(_ b: [UInt8], limits: HTTPLimits = HTTPLimits()) throws -> (HTTPRequest, Int)? {
        try b.withUnsafeBytes { try HTTPRequestParser.parse($0, limits: limits) }
    }

    private func assertStatus(_ b: [UInt8], _ status: Int, limits: HTTPLimits = HTTPLimits(), file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(b, limits: limits), file: file, line: line) {
            XCTAssertEqual(($0 as? HTTPError)?.status, status, "\($0)", file: file, line: line)
        }
    }

    func testParsesUpgradeRequest() throws {
        let trailing = upgradeRequest + [0x81, 0x80]  // WebSocket bytes after the head
        let (request, consumed) = try XCTUnwrap(try parse(trailing))
        XCTAssertEqual(consumed, upgradeRequest.count)
        XCTAssertEqual(request.method, "GET")
        XCTAssertEqual(request.target, "/ws?token=abc&x=1")
        XCTAssertEqual(request.path, "/ws")
        XCTAssertEqual(request.query, "token=abc&x=1")
        XCTAssertEqual(request.version, "HTTP/1.1")
        XCTAssertEqual(request.headers.count, 7)
        XCTAssertEqual(request.header("host"), "example.com")
        XCTAssertEqual(request.header("SEC-WEBSOCKET-KEY"), "dGhlIHNhbXBsZSBub25jZQ==")
        XCTAssertEqual(request.header("sec-websocket-protocol"), "chat, streamotter.v1")
        XCTAssertEqual(request.headerValues("Sec-WebSocket-Protocol"), ["chat", "streamotter.v1", "other"])
        XCTAssertEqual(request.headerValues("Connection"), ["keep-alive", "Upgrade"])
        XCTAssertNil(request.header("missing"))
        XCTAssertEqual(request.headerValues("missing"), [])
    }

    func testEverySplitReturnsNilUntilComplete() throws {
        for split in 0..<upgradeRequest.count {
            XCTAssertNil(try parse(Array(upgradeRequest[..<split])), "prefix \(split)")
        }
        XCTAssertEqual(try parse(upgradeRequest)?.1, upgradeRequest.count)
    }

    func testNoQueryAndHTTP10() throws {
        let (request, _) = try XCTUnwrap(try parse(bytes("GET /healthz HTTP/1.0\r\n\r\n")))
        XCTAssertEqual(request.path, "/healthz")
        XCTAssertNil(request.query)
        XCTAssertEqual(request.version, "HTTP/1.0")
        XCTAssertTrue(request.headers.isEmpty)
        XCTAssertEqual(try parse(bytes("GET /a? HTTP/1.1\r\n\r\n"))?.0.query, "")
    }

    func testEmptyHeaderValueAndObsText() throws {
        let (request, _) = try XCTUnwrap(try parse(bytes("GET / HTTP/1.1\r\nX-Empty:\r\nX-Utf: caf\u{e9}\r\n\r\n")))
        XCTAssertEqual(request.header("x-empty"), "")
        XCTAssertEqual(request.header("x-utf"), "café")
    }

    func test431OnOversizeHead() {
        let limits = HTTPLimits(maxHeaderBytes: 64, maxHeaderCount: 64)
        let big = bytes("GET / HTTP/1.1\r\nX-Long: " + String(repeating: "a", count: 100))
        assertStatus(big, 431, limits: limits)
        // Exactly at the limit is fine; one over is not.
        let exact = bytes("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 64 - 16 - 3 - 4) + "\r\n\r\n")
        XCTAssertEqual(exact.count, 64)
        XCTAssertNotNil(try parse(exact, limits: limits))
        let over = bytes("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 64 - 16 - 3 - 3) + "\r\n\r\n")
        assertStatus(over, 431, limits: limits)
        // Without the end in sight, the limit triggers as soon as it is exceeded.
        assertStatus([UInt8](repeating: 0x61, count: 9000), 431)
    }

    func test431OnOversizeWithoutEnd() {
        var head = bytes("GET / HTTP/1.1\r\n")
        while head.count <= 8192 { head += bytes("X-Filler: 0123456789\r\n") }
        assertStatus(head, 431)
        XCTAssertNil(try parse(Array(head[..<8000])))
    }

    func test431OnTooManyHeaders() throws {
        var head = "GET / HTTP/1.1\r\n"
        for i in 0..<65 { head += "X-\(i): v\r\n" }
        assertStatus(bytes(head + "\r\n"), 431)
        let limits = HTTPLimits(maxHeaderBytes: 8192, maxHeaderCount: 3)
        assertStatus(bytes("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"), 431, limits: limits)
        XCTAssertNotNil(try parse(bytes("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), limits: limits))
    }

    func test400OnMalformed() {
        let cases = [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 \r\n\r\n",
            "/ HTTP/1.1\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTX/1.1\r\n\r\n",
            "GET / HTTP/11\r\n\r\n",
            "\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nName : value\r\n\r\n",
            "GET / HTTP/1.1\r\n: value\r\n\r\n",
            "GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nA: 1\r\n\tfolded\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\u{01}c\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\u{7f}c\r\n\r\n",
            "GET /a\u{01}b HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n",
        ]
        for c in cases { assertStatus(bytes(c), 400) }
        // Bare LF is detected before the head is complete.
        assertStatus(bytes("GET / HTTP/1.1\n"), 400)
    }

    func test505OnOtherVersions() {
        assertStatus(bytes("GET / HTTP/2.0\r\n\r\n"), 505)
        assertStatus(bytes("GET / HTTP/0.9\r\n\r\n"), 505)
        assertStatus(bytes("GET / HTTP/1.2\r\n\r\n"), 505)
    }
}
