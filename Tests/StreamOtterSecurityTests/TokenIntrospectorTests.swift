import XCTest
import Glibc
import StreamOtterCore
@testable import StreamOtterSecurity

final class ManualClock: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Double
    init(_ v: Double) { value = v }
    var now: Double { lock.lock(); defer { lock.unlock() }; return value }
    func advance(_ d: Double) { lock.lock(); value += d; lock.unlock() }
}

final class TokenIntrospectorTests: XCTestCase {
    let t0: Double = 1_750_000_000

    func makeServer() -> TestHTTPServer {
        let t0 = self.t0
        return TestHTTPServer { req in
            guard req.requestLine == "POST /oauth/introspect HTTP/1.1",
                  req.headers["authorization"] == "Basic " + Base64.encode(Array("gateway:s%C3%A9cret+1".utf8)),
                  req.headers["content-type"] == "application/x-www-form-urlencoded" else {
                return .init(status: 401, body: #"{"error":"invalid_client"}"#)
            }
            let token = req.body.components(separatedBy: "&").first { $0.hasPrefix("token=") }.map { String($0.dropFirst(6)) } ?? ""
            switch token {
            case "good": return .init(body: #"{"active":true,"sub":"alice","scope":"read write","exp":\#(Int(t0) + 100),"roles":["reader"]}"#)
            case "noexp": return .init(body: #"{"active":true,"sub":"bob"}"#)
            case "chunked": return .init(body: #"{"active":true,"sub":"carol","exp":\#(Int(t0) + 50)}"#, chunked: true)
            case "past": return .init(body: #"{"active":true,"sub":"dave","exp":\#(Int(t0) - 1)}"#)
            case "slow": return .init(body: #"{"active":true}"#, delaySeconds: 1.5)
            case "boom": return .init(status: 500, body: "{}")
            case "junk": return .init(body: "<html>")
            case "a%2Bb%3Dc.d": return .init(body: #"{"active":true,"sub":"encoded","exp":\#(Int(t0) + 100)}"#)
            case "dup-sub": return .init(body: #"{"active":true,"sub":"alice","sub":"bob","exp":\#(Int(t0) + 100)}"#)
            case "dup-active": return .init(body: #"{"active":false,"active":true,"sub":"alice"}"#)
            case "dup-nested": return .init(body: #"{"active":true,"sub":"alice","realm":{"roles":["a"],"roles":["admin"]}}"#)
            case "exp-huge": return .init(body: #"{"active":true,"sub":"alice","exp":10000000000000000}"#)
            case "exp-inf": return .init(body: #"{"active":true,"sub":"alice","exp":1e400}"#)
            case "exp-negative": return .init(body: #"{"active":true,"sub":"alice","exp":-1}"#)
            case "exp-string": return .init(body: #"{"active":true,"sub":"alice","exp":"\#(Int(t0) + 100)"}"#)
            case "exp-latest": return .init(body: #"{"active":true,"sub":"alice","exp":253402300799}"#)
            case "inactive-exp-junk": return .init(body: #"{"active":false,"exp":1e400}"#)
            default: return .init(body: #"{"active":false}"#)
            }
        }
    }

    func makeIntrospector(_ server: TestHTTPServer, clock: ManualClock, capacity: Int = 100) throws -> TokenIntrospector {
        var c = TokenIntrospector.Configuration(endpoint: "http://127.0.0.1:\(server.port)/oauth/introspect",
                                                clientID: "gateway", clientSecret: "sécret 1")
        c.timeoutSeconds = 0.5
        c.cacheCapacity = capacity
        c.maxCacheSeconds = 300
        c.inactiveCacheSeconds = 10
        return try TokenIntrospector(configuration: c, clock: { clock.now })
    }

    func testActiveTokenIsCachedUntilExp() throws {
        let server = makeServer()
        defer { server.stop() }
        let clock = ManualClock(t0)
        let i = try makeIntrospector(server, clock: clock)
        let r = try i.introspect("good")
        XCTAssertTrue(r.active)
        XCTAssertFalse(r.cached)
        XCTAssertEqual(r.subject, "alice")
        XCTAssertEqual(r.scope, "read write")
        XCTAssertEqual(r.expiresAt, t0 + 100)
        XCTAssertEqual(server.count, 1)
        XCTAssertTrue(server.requests[0].body.contains("token_type_hint=access_token"))
        for _ in 0..<20 { XCTAssertTrue(try i.introspect("good").cached) }
        XCTAssertEqual(server.count, 1)
        clock.advance(99)
        XCTAssertTrue(try i.introspect("good").cached)
        XCTAssertEqual(server.count, 1)
        // At exp the cached answer is not served: the server is asked again, and its
        // answer (exp now past) counts as inactive.
        clock.advance(1)
        let after = try i.introspect("good")
        XCTAssertFalse(after.cached)
        XCTAssertFalse(after.active)
        XCTAssertEqual(server.count, 2)
        XCTAssertEqual(i.requestsSent, 2)
    }

    func testInactiveAnswersAreCachedBriefly() throws {
        let server = makeServer()
        defer { server.stop() }
        let clock = ManualClock(t0)
        let i = try makeIntrospector(server, clock: clock)
        XCTAssertFalse(try i.introspect("revoked").active)
        XCTAssertTrue(try i.introspect("revoked").cached)
        XCTAssertEqual(server.count, 1)
        clock.advance(10)
        XCTAssertFalse(try i.introspect("revoked").cached)
        XCTAssertEqual(server.count, 2)
        // Active with exp in the past: inactive.
        XCTAssertFalse(try i.introspect("past").active)
    }

    func testActiveWithoutExpIsCachedForMaxCacheSeconds() throws {
        let server = makeServer()
        defer { server.stop() }
        let clock = ManualClock(t0)
        let i = try makeIntrospector(server, clock: clock)
        XCTAssertTrue(try i.introspect("noexp").active)
        clock.advance(299)
        XCTAssertTrue(try i.introspect("noexp").cached)
        clock.advance(1)
        XCTAssertFalse(try i.introspect("noexp").cached)
        XCTAssertEqual(server.count, 2)
    }

    func testChunkedResponseAndFormEncoding() throws {
        let server = makeServer()
        defer { server.stop() }
        let i = try makeIntrospector(server, clock: ManualClock(t0))
        XCTAssertEqual(try i.introspect("chunked").subject, "carol")
        XCTAssertEqual(try i.introspect("a+b=c.d").subject, "encoded")
    }

    func testErrorsAreTypedAndNotCached() throws {
        let server = makeServer()
        defer { server.stop() }
        let i = try makeIntrospector(server, clock: ManualClock(t0))
        XCTAssertThrowsError(try i.introspect("boom")) { XCTAssertEqual($0 as? IntrospectionError, .httpStatus(500)) }
        XCTAssertThrowsError(try i.introspect("boom"))
        XCTAssertEqual(server.count, 2)
        XCTAssertThrowsError(try i.introspect("junk")) { XCTAssertEqual($0 as? IntrospectionError, .badResponse) }
        let start = Date()
        XCTAssertThrowsError(try i.introspect("slow")) { XCTAssertEqual($0 as? IntrospectionError, .timeout) }
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.2)
        // Wrong client credentials: the server answers 401.
        var c = i.configuration
        c.clientSecret = "wrong"
        let bad = try TokenIntrospector(configuration: c)
        XCTAssertThrowsError(try bad.introspect("good")) { XCTAssertEqual($0 as? IntrospectionError, .httpStatus(401)) }
        // Nothing listening.
        server.stop()
        let gone = try TokenIntrospector(configuration: i.configuration)
        XCTAssertThrowsError(try gone.introspect("good")) { XCTAssertEqual($0 as? IntrospectionError, .connectFailed) }
    }

    func testDuplicateNamesAndBadExpAreBadResponses() throws {
        // A repeated name means different things to parsers taking the first and the last;
        // an exp that is no NumericDate (1e16 s once trapped the gateway's conversion to
        // milliseconds) cannot bound a connection.
        let server = makeServer()
        defer { server.stop() }
        let i = try makeIntrospector(server, clock: ManualClock(t0))
        for token in ["dup-sub", "dup-active", "dup-nested", "exp-huge", "exp-inf", "exp-negative", "exp-string"] {
            XCTAssertThrowsError(try i.introspect(token), token) { XCTAssertEqual($0 as? IntrospectionError, .badResponse, token) }
        }
        XCTAssertEqual(try i.introspect("exp-latest").expiresAt, NumericDate.latest)
        // An inactive answer is a refusal whatever its exp says.
        let inactive = try i.introspect("inactive-exp-junk")
        XCTAssertFalse(inactive.active)
        XCTAssertNil(inactive.expiresAt)
    }

    func testResponseLengthsFromTheServerCannotOverflow() {
        // Content-Length and chunk sizes up to Int.max, or negative: incomplete (nil), never
        // an overflow in the bounds arithmetic.
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        for (headers, body) in [("Content-Length: 9223372036854775807\r\n", "{}"),
                                ("Content-Length: 9223372036854775806\r\n", "{}"),
                                ("Content-Length: -5\r\n", "{\"active\":true}"),
                                ("Transfer-Encoding: chunked\r\n", "7fffffffffffffff\r\n{}\r\n0\r\n\r\n"),
                                ("Transfer-Encoding: chunked\r\n", "7ffffffffffffffe\r\n{}")] {
            let data = Array((head + headers + "\r\n" + body).utf8)
            XCTAssertNil(HTTPPostClient.parseResponse(data, final: false), headers)
            XCTAssertNil(HTTPPostClient.parseResponse(data, final: true), headers)
        }
        let ok = Array((head + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n").utf8)
        XCTAssertEqual(HTTPPostClient.parseResponse(ok, final: false)?.body, Array("{}".utf8))
        let sized = Array((head + "Content-Length: 2\r\n\r\n{}").utf8)
        XCTAssertEqual(HTTPPostClient.parseResponse(sized, final: false)?.body, Array("{}".utf8))
    }

    func testCacheIsBounded() throws {
        let server = makeServer()
        defer { server.stop() }
        let i = try makeIntrospector(server, clock: ManualClock(t0), capacity: 10)
        for n in 0..<25 { _ = try i.introspect("other-\(n)") }
        XCTAssertLessThanOrEqual(i.cacheCount, 10)
        XCTAssertEqual(server.count, 25)
    }

    func testConcurrentCallers() throws {
        let server = makeServer()
        defer { server.stop() }
        let i = try makeIntrospector(server, clock: ManualClock(t0))
        _ = try i.introspect("good")
        DispatchQueue.concurrentPerform(iterations: 200) { _ in
            XCTAssertTrue((try? i.introspect("good"))?.active ?? false)
        }
        XCTAssertEqual(server.count, 1)
    }

    func testHTTPSRefusesUnverifiedCertificate() throws {
        // A TLS server with a self-signed certificate (openssl s_server): the client must
        // refuse it without a CA file, and accept it with the certificate as CA.
        let key = tempPath("tls.key"), cert = tempPath("tls.crt")
        defer { unlink(key); unlink(cert) }
        writeFile(key, TestKeys.p256.pem)
        let gen = Process()
        gen.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        gen.arguments = ["req", "-new", "-x509", "-key", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                         "-addext", "subjectAltName=DNS:localhost"]
        gen.standardError = FileHandle.nullDevice
        try gen.run(); gen.waitUntilExit()
        let port = 20_000 + Int(getpid() % 20_000)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        server.arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-key", key, "-cert", cert, "-www", "-quiet"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        usleep(300_000)
        var c = TokenIntrospector.Configuration(endpoint: "https://localhost:\(port)/introspect", clientID: "a", clientSecret: "b")
        c.timeoutSeconds = 2
        // No CA: the self-signed certificate is refused.
        XCTAssertThrowsError(try TokenIntrospector(configuration: c).introspect("t")) { XCTAssertEqual($0 as? IntrospectionError, .tlsFailure) }
        c.caFile = cert
        // Trusted CA and matching name: s_server -www does not answer a POST with JSON, so
        // the TLS part succeeded when the error is about the response (or its absence).
        XCTAssertThrowsError(try TokenIntrospector(configuration: c).introspect("t")) {
            let e = $0 as? IntrospectionError
            XCTAssertTrue(e == .badResponse || e == .timeout, "\($0)")
        }
        // Trusted CA, but the certificate does not name 127.0.0.1: refused.
        c.endpoint = "https://127.0.0.1:\(port)/introspect"
        XCTAssertThrowsError(try TokenIntrospector(configuration: c).introspect("t")) { XCTAssertEqual($0 as? IntrospectionError, .tlsFailure) }
    }

    func testEndpointParsing() throws {
        XCTAssertEqual(try HTTPPostClient.parse(url: "https://idp.example/realms/x/introspect"),
                       .init(tls: true, host: "idp.example", port: 443, path: "/realms/x/introspect"))
        XCTAssertEqual(try HTTPPostClient.parse(url: "http://[::1]:8080"), .init(tls: false, host: "::1", port: 8080, path: "/"))
        XCTAssertThrowsError(try HTTPPostClient.parse(url: "ftp://x"))
        XCTAssertThrowsError(try HTTPPostClient.parse(url: "http://user:pw@x/"))
        XCTAssertThrowsError(try HTTPPostClient.parse(url: "http://x:99999/"))
    }
}
