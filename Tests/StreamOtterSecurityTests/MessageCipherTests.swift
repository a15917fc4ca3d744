import XCTest
import Glibc
import StreamOtterCore
@testable import StreamOtterSecurity

final class MessageCipherTests: XCTestCase {
    let k1 = [UInt8](repeating: 0x11, count: 32)
    let k2 = (0..<32).map { UInt8($0) }

    func ring(active: String = "k1") throws -> MessageKeyRing {
        try MessageKeyRing(keys: ["k1": k1, "k2": k2], activeKeyID: active)
    }

    func testRoundTripAndFormat() throws {
        let c = MessageCipher(keyRing: try ring())
        for size in [0, 1, 15, 16, 17, 1000, 100_000] {
            let plain = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let sealed = try c.seal(plain, channel: "orders")
            XCTAssertEqual(sealed.keyID, "k1")
            XCTAssertEqual(sealed.bytes.count, plain.count + 29)
            XCTAssertEqual(sealed.bytes[0], 1)
            if size >= 16 { XCTAssertNotEqual(Array(sealed.bytes[13..<(13 + size)]), plain) }
            XCTAssertEqual(try c.open(sealed.bytes, keyID: sealed.keyID, channel: "orders"), plain)
        }
        // Fresh nonce each time.
        let a = try c.seal([1, 2, 3], channel: "x"), b = try c.seal([1, 2, 3], channel: "x")
        XCTAssertNotEqual(a.bytes, b.bytes)
        XCTAssertEqual(MessageCipher.keyIDHeader, "streamotter-key-id")
    }

    func testTamperingIsRejected() throws {
        let c = MessageCipher(keyRing: try ring())
        let plain = Array("{\"amount\":100}".utf8)
        let sealed = try c.seal(plain, channel: "orders")
        for i in 0..<sealed.bytes.count {
            var t = sealed.bytes
            t[i] ^= 0x01
            XCTAssertThrowsError(try c.open(t, keyID: "k1", channel: "orders"), "byte \(i)") { error in
                let e = error as? MessageCipherError
                XCTAssertTrue(e == .authenticationFailed || (i == 0 && e == .malformed), "\(error)")
            }
        }
        // Truncated, wrong channel, wrong or unknown key id.
        XCTAssertThrowsError(try c.open(Array(sealed.bytes.dropLast()), keyID: "k1", channel: "orders")) { XCTAssertEqual($0 as? MessageCipherError, .authenticationFailed) }
        XCTAssertThrowsError(try c.open(Array(sealed.bytes.prefix(28)), keyID: "k1", channel: "orders")) { XCTAssertEqual($0 as? MessageCipherError, .malformed) }
        XCTAssertThrowsError(try c.open(sealed.bytes, keyID: "k1", channel: "orders2")) { XCTAssertEqual($0 as? MessageCipherError, .authenticationFailed) }
        XCTAssertThrowsError(try c.open(sealed.bytes, keyID: "k2", channel: "orders")) { XCTAssertEqual($0 as? MessageCipherError, .authenticationFailed) }
        XCTAssertThrowsError(try c.open(sealed.bytes, keyID: "k9", channel: "orders")) { XCTAssertEqual($0 as? MessageCipherError, .unknownKey) }
        // Same key under another id (a relabelled header) fails too: the key id is authenticated.
        let alias = MessageCipher(keyRing: try MessageKeyRing(keys: ["k1": k1, "alias": k1], activeKeyID: "k1"))
        XCTAssertThrowsError(try alias.open(sealed.bytes, keyID: "alias", channel: "orders"))
        XCTAssertEqual(try alias.open(sealed.bytes, keyID: "k1", channel: "orders"), plain)
    }

    func testRotationKeepsOldKeysReadable() throws {
        let path = tempPath("msg.keys")
        defer { unlink(path) }
        writeFile(path, "# keys\nk1 \(Base64.encode(k1)) active\n")
        let r = try MessageKeyRing(contentsOfFile: path)
        let c = MessageCipher(keyRing: r)
        let old = try c.seal(Array("old".utf8), channel: "ch")
        XCTAssertEqual(old.keyID, "k1")
        writeFile(path, "k1 \(Base64.encode(k1))\n  k2   \(Base64.encode(k2))   active  # new\n")
        try r.reload()
        XCTAssertEqual(r.activeKeyID, "k2")
        let new = try c.seal(Array("new".utf8), channel: "ch")
        XCTAssertEqual(new.keyID, "k2")
        XCTAssertEqual(try c.open(old.bytes, keyID: "k1", channel: "ch"), Array("old".utf8))
        XCTAssertEqual(try c.open(new.bytes, keyID: "k2", channel: "ch"), Array("new".utf8))
        // A broken file keeps the old ring.
        writeFile(path, "k3 notbase64 active\n")
        XCTAssertThrowsError(try r.reload())
        XCTAssertEqual(r.keyIDs, ["k1", "k2"])
    }

    func testKeyFileErrors() {
        let b = Base64.encode(k1)
        for bad in ["", "k1 \(b)", "k1 \(b) active\nk2 \(b) active", "k1 \(Base64.encode([1, 2, 3])) active",
                    "k/1 \(b) active", "k1 \(b) active\nk1 \(b)", "k1 \(b) primary"] {
            XCTAssertThrowsError(try MessageKeyRing(parsing: bad), bad)
        }
        XCTAssertThrowsError(try MessageKeyRing(keys: ["a": [1]], activeKeyID: "a"))
        XCTAssertThrowsError(try MessageKeyRing(keys: ["a": k1], activeKeyID: "b"))
    }

    func testProviderClosures() throws {
        let keys = ["orders-k": k1, "prices-k": k2]
        let c = MessageCipher(activeKey: { ch in ch.hasPrefix("orders") ? ("orders-k", keys["orders-k"]!) : ("prices-k", keys["prices-k"]!) },
                              key: { keys[$0] })
        let s = try c.seal([9, 9], channel: "orders.eu")
        XCTAssertEqual(s.keyID, "orders-k")
        XCTAssertEqual(try c.open(s.bytes, keyID: "orders-k", channel: "orders.eu"), [9, 9])
        let none = MessageCipher(activeKey: { _ in nil }, key: { _ in nil })
        XCTAssertThrowsError(try none.seal([1], channel: "x")) { XCTAssertEqual($0 as? MessageCipherError, .unknownKey) }
    }
}
