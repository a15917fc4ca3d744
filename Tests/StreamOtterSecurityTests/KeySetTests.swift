import XCTest
import Glibc
import StreamOtterCore
@testable import StreamOtterSecurity

final class KeySetTests: XCTestCase {
    let now: Double = 1_750_000_000

    func claims() -> JSONValue { .object([("sub", .string("bob")), ("exp", .number(String(Int(now) + 60)))]) }

    func testJWKSRoundTripForEveryKeyType() throws {
        let jwks = JSONValue.object([("keys", .array([
            TestKeys.rsa.publicKey.jwk(kid: "r1", alg: .rs256),
            TestKeys.rsaOther.publicKey.jwk(kid: "r2"),
            TestKeys.p256.publicKey.jwk(kid: "e1", alg: .es256),
            TestKeys.p384.publicKey.jwk(kid: "e2", alg: .es384),
            TestKeys.ed.publicKey.jwk(kid: "o1", alg: .edDSA),
            .object([("kty", .string("RSA")), ("use", .string("enc")), ("n", .string("AQAB")), ("e", .string("AQAB"))]),
        ]))])
        let keys = try JWTKey.fromJWKS(String(decoding: jwks.serialized(), as: UTF8.self))
        XCTAssertEqual(keys.count, 5)
        XCTAssertEqual(keys.first { $0.id == "r1" }?.algorithms, [.rs256])
        XCTAssertEqual(keys.first { $0.id == "r2" }?.algorithms, [.rs256, .rs384, .rs512, .ps256])
        let now = self.now
        let v = JWTVerifier(keySet: KeySet(keys: keys), clock: { now })
        let cases: [(JWTAlgorithm, PrivateKey, String)] = [(.rs256, TestKeys.rsa, "r1"), (.ps256, TestKeys.rsaOther, "r2"),
                                                          (.es256, TestKeys.p256, "e1"), (.es384, TestKeys.p384, "e2"), (.edDSA, TestKeys.ed, "o1")]
        for (alg, key, kid) in cases {
            XCTAssertNoThrow(try v.verify(try JWTSigner.sign(claims: claims(), algorithm: alg, key: .privateKey(key), kid: kid)), "\(alg)")
        }
        // r1 is bound to RS256 by its JWK alg: RS512 refused.
        XCTAssertThrowsError(try v.verify(try JWTSigner.sign(claims: claims(), algorithm: .rs512, key: .privateKey(TestKeys.rsa), kid: "r1"))) {
            XCTAssertEqual($0 as? JWTError, .algorithmNotAllowed)
        }
    }

    func testJWKSRestrictedByConfiguredAlgorithms() throws {
        let one = String(decoding: JSONValue.object([("keys", .array([TestKeys.rsa.publicKey.jwk(kid: "r1", alg: .rs512)]))]).serialized(), as: UTF8.self)
        XCTAssertThrowsError(try JWTKey.fromJWKS(one, algorithms: [.rs256]))
        let noAlg = String(decoding: TestKeys.p256.publicKey.jwk(kid: "e").serialized(), as: UTF8.self)
        XCTAssertThrowsError(try JWTKey.fromJWKS(noAlg, algorithms: [.rs256]))
        XCTAssertEqual(try JWTKey.fromJWKS(noAlg, algorithms: [.rs256, .es256]).first?.algorithms, [.es256])
    }

    func testBadJWKs() {
        for text in ["", "{}", #"{"keys":[{"kty":"oct","k":"AAAA"}]}"#, #"{"keys":[{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}]}"#,
                     #"{"keys":[{"kty":"RSA","n":"AQAB"}]}"#, #"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
                     #"{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}"#,
                     #"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"!!"}]}"#] {
            XCTAssertThrowsError(try JWTKey.fromJWKS(text), text)
        }
        // A point that is not on the curve.
        let x = Base64URL.encode([UInt8](repeating: 1, count: 32))
        XCTAssertThrowsError(try JWTKey.fromJWKS(#"{"kty":"EC","crv":"P-256","x":"\#(x)","y":"\#(x)"}"#))
    }

    func testPEMFilesAndCertificateAndReload() throws {
        let pemPath = tempPath("keys.pem")
        writeFile(pemPath, TestKeys.rsa.publicKey.pem + "\n" + TestKeys.p256.publicKey.pem)
        let jwksPath = tempPath("keys.jwks")
        writeFile(jwksPath, String(decoding: JSONValue.object([("keys", .array([TestKeys.ed.publicKey.jwk(kid: "o1")]))]).serialized(), as: UTF8.self))
        defer { unlink(pemPath); unlink(jwksPath) }
        let set = try KeySet(sources: [.pemFile(path: pemPath, id: "main", algorithms: nil), .jwksFile(path: jwksPath, algorithms: nil)])
        XCTAssertEqual(set.keys.count, 3)
        let now = self.now
        let v = JWTVerifier(keySet: set, clock: { now })
        let edToken = try JWTSigner.sign(claims: claims(), algorithm: .edDSA, key: .privateKey(TestKeys.ed), kid: "o1")
        XCTAssertNoThrow(try v.verify(edToken))
        XCTAssertNoThrow(try v.verify(try JWTSigner.sign(claims: claims(), algorithm: .es256, key: .privateKey(TestKeys.p256), kid: "main")))
        XCTAssertNoThrow(try v.verify(try JWTSigner.sign(claims: claims(), algorithm: .rs384, key: .privateKey(TestKeys.rsa), kid: "main")))

        // Rotate: the JWKS now holds another key; the old token's kid is unknown.
        let gen = set.generation
        writeFile(jwksPath, String(decoding: TestKeys.p384.publicKey.jwk(kid: "e2", alg: .es384).serialized(), as: UTF8.self))
        try set.reload()
        XCTAssertEqual(set.generation, gen + 1)
        XCTAssertThrowsError(try v.verify(edToken)) { XCTAssertEqual($0 as? JWTError, .unknownKey) }
        XCTAssertNoThrow(try v.verify(try JWTSigner.sign(claims: claims(), algorithm: .es384, key: .privateKey(TestKeys.p384), kid: "e2")))

        // A broken file fails the reload and keeps the old set.
        writeFile(jwksPath, "{ not json")
        XCTAssertThrowsError(try set.reload())
        XCTAssertEqual(set.keys.count, 3)
        XCTAssertEqual(set.generation, gen + 1)

        // A private key PEM is refused with a clear message.
        writeFile(pemPath, TestKeys.rsa.pem)
        XCTAssertThrowsError(try set.reload()) { XCTAssertTrue("\($0)".contains("private key")) }
    }

    func testCertificatePEM() throws {
        // Self-signed certificate made by the openssl command line.
        let keyPath = tempPath("cert.key"), certPath = tempPath("cert.pem")
        defer { unlink(keyPath); unlink(certPath) }
        writeFile(keyPath, TestKeys.p256.pem)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = ["req", "-new", "-x509", "-key", keyPath, "-out", certPath, "-days", "1", "-subj", "/CN=issuer"]
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let keys = try JWTKey.fromPEM(try String(contentsOfFile: certPath, encoding: .utf8), id: "c1")
        XCTAssertEqual(keys.count, 1)
        XCTAssertEqual(keys[0].algorithms, [.es256])
        let now = self.now
        let v = JWTVerifier(keySet: KeySet(keys: keys), clock: { now })
        XCTAssertNoThrow(try v.verify(try JWTSigner.sign(claims: claims(), algorithm: .es256, key: .privateKey(TestKeys.p256), kid: "c1")))
    }

    func testSmallRSAKeyRefusedAndPEMRoundTrip() throws {
        let small = try? PrivateKey.generate(.rsa(bits: 1024))
        XCTAssertNil(small)
        let again = try PrivateKey(pem: TestKeys.ed.pem)
        XCTAssertEqual(again.publicKey.spki, TestKeys.ed.publicKey.spki)
        XCTAssertEqual(try PublicKey(pem: TestKeys.p384.publicKey.pem).spki, TestKeys.p384.publicKey.spki)
        XCTAssertEqual(try PublicKey(jwk: TestKeys.rsa.publicKey.jwk()).spki, TestKeys.rsa.publicKey.spki)
    }

    func testBase64URL() {
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 250) }
            let s = Base64URL.encode(bytes)
            XCTAssertFalse(s.contains("=") || s.contains("+") || s.contains("/"))
            XCTAssertEqual(Base64URL.decode(s), bytes)
        }
        XCTAssertNil(Base64URL.decode("A"))
        XCTAssertNil(Base64URL.decode("AB"))   // non-zero unused bits
        XCTAssertEqual(Base64URL.decode("AA"), [0])
        XCTAssertNil(Base64URL.decode("AA=="))
        XCTAssertNil(Base64URL.decode("a+b/"))
        XCTAssertNil(Base64URL.decode("ab c"))
    }
}

final class KeySetConcurrencyTests: XCTestCase {
    func testVerifyWhileReloading() throws {
        let path = tempPath("conc.jwks")
        defer { unlink(path) }
        let a = String(decoding: TestKeys.p256.publicKey.jwk(kid: "a", alg: .es256).serialized(), as: UTF8.self)
        let both = String(decoding: JSONValue.object([("keys", .array([TestKeys.p256.publicKey.jwk(kid: "a", alg: .es256),
                                                                        TestKeys.ed.publicKey.jwk(kid: "b", alg: .edDSA)]))]).serialized(), as: UTF8.self)
        writeFile(path, a)
        let set = try KeySet(sources: [.jwksFile(path: path, algorithms: nil)])
        let v = JWTVerifier(keySet: set, clock: { 1_000 })
        let token = try JWTSigner.sign(claims: .object([("exp", .number("2000"))]), algorithm: .es256, key: .privateKey(TestKeys.p256), kid: "a")
        let failures = LineBox()
        DispatchQueue.concurrentPerform(iterations: 400) { i in
            if i % 20 == 0 {
                // Replace the file atomically (write, then rename), as an operator's tool would.
                writeFile(path + ".\(i)", i % 40 == 0 ? both : a)
                rename(path + ".\(i)", path)
                _ = try? set.reload()
            }
            do { _ = try v.verify(token) } catch { failures.append("\(error)") }
        }
        for i in stride(from: 0, to: 400, by: 20) { unlink(path + ".\(i)") }
        XCTAssertEqual(failures.lines, [])
        XCTAssertGreaterThan(set.generation, 1)
    }
}
