import XCTest
import Glibc
import StreamOtterCore
@testable import StreamOtterSecurity

final class AuditLogTests: XCTestCase {
    func testFileSinkWritesJSONLines() throws {
        let path = tempPath("audit.log")
        unlink(path)
        defer { unlink(path) }
        let log = try AuditLog(sink: .file(path: path, fsync: true), clock: { 1_750_000_000.25 })
        log.record(AuditEvent(kind: .authFailure, connectionID: 7, peer: "10.0.0.1:5123", method: "jwt", reason: "expired", status: 401))
        log.record(AuditEvent(kind: .denied, connectionID: 7, subject: "alice", roles: ["reader"], peer: "10.0.0.1:5123",
                              reason: "forbidden", channel: "orders", operation: .publish))
        log.record(AuditEvent(kind: .connectionClose, connectionID: 7, subject: "alice", reason: "client_close", closeCode: 1000))
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        XCTAssertEqual(String(lines[0]), #"{"ts":"2025-06-15T15:06:40.250Z","event":"auth_failure","conn":7,"peer":"10.0.0.1:5123","method":"jwt","reason":"expired","status":401}"#)
        let denied = try JSON.parse(String(lines[1]))
        XCTAssertEqual(denied["op"], .string("publish"))
        XCTAssertEqual(denied["roles"], .array([.string("reader")]))
        XCTAssertEqual(try JSON.parse(String(lines[2]))["close_code"], .number("1000"))
        var st = stat()
        stat(path, &st)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }

    func testNoTokenOrSecretIsEverWritten() throws {
        let secret = "hmac-secret-\(UUID().uuidString)"
        let token = try JWTSigner.sign(claims: .object([("sub", .string("alice")), ("exp", .number("9999999999"))]),
                                       algorithm: .hs256, key: .hmac(Array((secret + secret).utf8)))
        let opaque = "2YotnFZFEjr1zCsicMWpAA2YotnFZFEjr1zCsicMWpAA"
        let path = tempPath("audit-secret.log")
        unlink(path)
        defer { unlink(path) }
        let log = try AuditLog(sink: .file(path: path, fsync: false))
        let box = LineBox()
        let cbLog = try AuditLog(sink: .callback({ box.append($0) }))
        for l in [log, cbLog] {
            l.addRedaction(secret)
            // A careless caller puts credentials into every string field.
            let parts = token.split(separator: ".").map(String.init)
            for value in [token, "Bearer " + token, "token=" + token, opaque, "x " + secret + " y", parts[0], parts[1] + "." + parts[2], "basic dXNlcjpwYXNz"] {
                l.record(AuditEvent(kind: .authFailure, subject: value, roles: [value], peer: value, method: value,
                                    reason: value, channel: value))
            }
            l.record(AuditEvent(kind: .authSuccess, subject: "alice", roles: ["reader"], peer: "127.0.0.1:1", method: "jwt"))
        }
        let fileText = try String(contentsOfFile: path, encoding: .utf8)
        let lines = box.lines
        let all = fileText + lines.joined(separator: "\n")
        XCTAssertFalse(all.isEmpty)
        for forbidden in [token, secret, opaque, "eyJ", token.split(separator: ".")[2].description, "dXNlcjpwYXNz"] {
            XCTAssertFalse(all.contains(forbidden), "audit output contains \(forbidden.prefix(12))...")
        }
        XCTAssertTrue(all.contains("[redacted]"))
        XCTAssertTrue(all.contains(#""sub":"alice""#))
        for line in fileText.split(separator: "\n") { XCTAssertNoThrow(try JSON.parse(String(line))) }
        XCTAssertEqual(lines.count, 9)
    }

    func testLongAndControlCharactersAreSafe() throws {
        let box = LineBox()
        let log = try AuditLog(sink: .callback({ box.append($0) }), clock: { 0 })
        log.record(AuditEvent(kind: .connectionOpen, peer: "a\nb\"c", channel: String(repeating: "x.", count: 300)))
        let got = box.lines
        XCTAssertEqual(got.count, 1)
        XCTAssertFalse(got[0].contains("\n"))
        let v = try JSON.parse(got[0])
        XCTAssertEqual(v["peer"], .string("a\nb\"c"))
        XCTAssertLessThanOrEqual(v["channel"]!.stringValue!.utf8.count, 260)
        XCTAssertEqual(v["ts"], .string("1970-01-01T00:00:00.000Z"))
    }

    func testReopenAfterRotation() throws {
        let path = tempPath("audit-rot.log")
        unlink(path)
        defer { unlink(path); unlink(path + ".1") }
        let log = try AuditLog(sink: .file(path: path, fsync: false))
        log.record(AuditEvent(kind: .connectionOpen, peer: "p1"))
        rename(path, path + ".1")
        try log.reopen()
        log.record(AuditEvent(kind: .connectionOpen, peer: "p2"))
        XCTAssertTrue(try String(contentsOfFile: path, encoding: .utf8).contains("p2"))
        XCTAssertTrue(try String(contentsOfFile: path + ".1", encoding: .utf8).contains("p1"))
    }
}

final class LineBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String] = []
    func append(_ s: String) { lock.lock(); stored.append(s); lock.unlock() }
    var lines: [String] { lock.lock(); defer { lock.unlock() }; return stored }
}
