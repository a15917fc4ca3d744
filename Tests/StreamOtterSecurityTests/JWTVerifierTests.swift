import XCTest
import Glibc
import StreamOtterCore
@testable import StreamOtterSecurity

/// Keys are generated once per test process (RSA keygen is slow in debug builds).
enum TestKeys {
    static let rsa = try! PrivateKey.generate(.rsa(bits: 2048))
    static let rsaOther = try! PrivateKey.generate(.rsa(bits: 2048))
    static let p256 = try! PrivateKey.generate(.p256)
    static let p384 = try! PrivateKey.generate(.p384)
    static let ed = try! PrivateKey.generate(.ed25519)
    static let secret = Array("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".utf8)
}

func tempPath(_ name: String) -> String {
    "/tmp/sot-sec-\(getpid())-\(name)"
}

func writeFile(_ path: String, _ text: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    precondition(fd >= 0)
    _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

final class JWTVerifierTests: XCTestCase {
    let now: Double = 1_750_000_000

    func claims(exp: Double? = nil, nbf: Double? = nil, iss: String? = "https://issuer.example",
                aud: JSONValue? = .string("streamotter"), sub: String = "alice") -> JSONValue {
        var m: [(String, JSONValue)] = [("sub", .string(sub))]
        if let iss = iss { m.append(("iss", .string(iss))) }
        if let aud = aud { m.append(("aud", aud)) }
        m.append(("exp", .number(String(Int(exp ?? now + 300)))))
        if let nbf = nbf { m.append(("nbf", .number(String(Int(nbf))))) }
        m.append(("realm_access", .object([("roles", .array([.string("reader")]))])))
        return .object(m)
    }

    func verifier(_ keys: [JWTKey], issuers: [String] = ["https://issuer.example"], audiences: [String] = ["streamotter"],
                  leeway: Double = 30) -> JWTVerifier {
        let now = self.now
        return JWTVerifier(keySet: KeySet(keys: keys),
                           options: .init(issuers: issuers, audiences: audiences, leewaySeconds: leeway),
                           clock: { now })
    }

    func allKeys() throws -> [JWTKey] {
        [
            try JWTKey.hmac(id: "h1", secret: TestKeys.secret, algorithms: [.hs256, .hs384, .hs512]),
            try JWTKey(id: "r1", algorithms: [.rs256, .rs384, .rs512, .ps256], material: .publicKey(TestKeys.rsa.publicKey)),
            try JWTKey(id: "e256", algorithms: [.es256], material: .publicKey(TestKeys.p256.publicKey)),
            try JWTKey(id: "e384", algorithms: [.es384], material: .publicKey(TestKeys.p384.publicKey)),
            try JWTKey(id: "ed", algorithms: [.edDSA], material: .publicKey(TestKeys.ed.publicKey)),
        ]
    }

    func token(_ alg: JWTAlgorithm, kid: String?, claims c: JSONValue? = nil) throws -> String {
        let key: JWTSigner.Key
        switch alg {
        case .hs256, .hs384, .hs512: key = .hmac(TestKeys.secret)
        case .rs256, .rs384, .rs512, .ps256: key = .privateKey(TestKeys.rsa)
        case .es256: key = .privateKey(TestKeys.p256)
        case .es384: key = .privateKey(TestKeys.p384)
        case .edDSA: key = .privateKey(TestKeys.ed)
        }
        return try JWTSigner.sign(claims: c ?? claims(), algorithm: alg, key: key, kid: kid)
    }

    func kidFor(_ alg: JWTAlgorithm) -> String {
        switch alg {
        case .hs256, .hs384, .hs512: return "h1"
        case .rs256, .rs384, .rs512, .ps256: return "r1"
        case .es256: return "e256"
        case .es384: return "e384"
        case .edDSA: return "ed"
        }
    }

    func assertRefused(_ v: JWTVerifier, _ token: String, _ expected: JWTError, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try v.verify(token), file: file, line: line) { error in
            XCTAssertEqual(error as? JWTError, expected, "got \(error)", file: file, line: line)
        }
    }

    // MARK: valid tokens

    func testEveryAlgorithmVerifies() throws {
        let v = verifier(try allKeys())
        for alg in JWTAlgorithm.allCases {
            let t = try token(alg, kid: kidFor(alg))
            let result = try v.verify(t)
            XCTAssertEqual(result.algorithm, alg)
            XCTAssertEqual(result.subject, "alice")
            XCTAssertEqual(result.keyID, kidFor(alg))
            XCTAssertEqual(result.expiresAt, now + 300)
            XCTAssertEqual(result.claims["realm_access"]?["roles"], .array([.string("reader")]))
        }
    }

    func testTokensWithoutKidTryEveryKeyAllowingTheAlgorithm() throws {
        let v = verifier(try allKeys())
        for alg in JWTAlgorithm.allCases {
            XCTAssertNoThrow(try v.verify(try token(alg, kid: nil)), "\(alg)")
        }
    }

    func testKeysWithoutIdsAcceptTokensWithAnyKid() throws {
        let key = try JWTKey(id: nil, algorithms: [.es256], material: .publicKey(TestKeys.p256.publicKey))
        XCTAssertNoThrow(try verifier([key]).verify(try token(.es256, kid: "whatever")))
    }

    func testAudienceArrayAndMultipleIssuers() throws {
        let v = verifier(try allKeys(), issuers: ["a", "https://issuer.example"], audiences: ["x", "streamotter"])
        XCTAssertNoThrow(try v.verify(try token(.hs256, kid: "h1", claims: claims(aud: .array([.string("other"), .string("streamotter")])))))
        let open = verifier(try allKeys(), issuers: [], audiences: [])
        XCTAssertNoThrow(try open.verify(try token(.hs256, kid: "h1", claims: claims(iss: nil, aud: nil))))
    }

    // MARK: forged tokens

    func testAlgNoneIsRefused() throws {
        let v = verifier(try allKeys())
        let header = Base64URL.encode(Array(#"{"alg":"none","typ":"JWT"}"#.utf8))
        let payload = Base64URL.encode(claims().serialized())
        assertRefused(v, header + "." + payload + ".", .algorithmNotAllowed)
        // Casing tricks and a kid do not help.
        for alg in ["None", "NONE", "nOnE"] {
            let h = Base64URL.encode(Array(#"{"alg":"\#(alg)","kid":"h1"}"#.utf8))
            assertRefused(v, h + "." + payload + ".", .algorithmNotAllowed)
        }
        // No alg member at all.
        assertRefused(v, Base64URL.encode(Array(#"{"typ":"JWT"}"#.utf8)) + "." + payload + ".", .malformed)
    }

    func testEmptyAndGarbageSignaturesAreRefused() throws {
        let v = verifier(try allKeys())
        for alg in JWTAlgorithm.allCases {
            let t = try token(alg, kid: kidFor(alg))
            let signingInput = t.split(separator: ".", omittingEmptySubsequences: false)[0...1].joined(separator: ".")
            assertRefused(v, signingInput + ".", .badSignature)
            assertRefused(v, signingInput + "." + Base64URL.encode([UInt8](repeating: 0x41, count: 64)), .badSignature)
            assertRefused(v, signingInput + "." + Base64URL.encode([UInt8](repeating: 0, count: 256)), .badSignature)
            // Flip one bit of the real signature.
            var sig = Base64URL.decode(t.split(separator: ".")[2])!
            sig[sig.count / 2] ^= 0x01
            assertRefused(v, signingInput + "." + Base64URL.encode(sig), .badSignature)
            // Signature not base64url.
            assertRefused(v, signingInput + ".@@@@", .malformed)
        }
    }

    func testRSAPublicKeyUsedAsHMACSecretIsRefused() throws {
        // The classic key-confusion forgery: sign HS256 with the PEM text of the public key.
        let pemBytes = Array(TestKeys.rsa.publicKey.pem.utf8)
        let forged = try JWTSigner.sign(claims: claims(), algorithm: .hs256, key: .hmac(pemBytes), kid: "r1")
        let v = verifier(try allKeys())
        assertRefused(v, forged, .algorithmNotAllowed)
        let forgedNoKid = try JWTSigner.sign(claims: claims(), algorithm: .hs256, key: .hmac(pemBytes))
        let rsaOnly = verifier([try JWTKey(id: "r1", algorithms: [.rs256], material: .publicKey(TestKeys.rsa.publicKey))])
        assertRefused(rsaOnly, forgedNoKid, .algorithmNotAllowed)
        // Also with the DER bytes as the secret.
        let forgedDER = try JWTSigner.sign(claims: claims(), algorithm: .hs256, key: .hmac(TestKeys.rsa.publicKey.spki), kid: "r1")
        assertRefused(v, forgedDER, .algorithmNotAllowed)
        // Binding the RSA key to HS256 is impossible, and a PEM text as an HMAC secret is refused.
        XCTAssertThrowsError(try JWTKey(id: "r1", algorithms: [.hs256], material: .publicKey(TestKeys.rsa.publicKey)))
        XCTAssertThrowsError(try JWTKey.hmac(id: "x", secret: pemBytes, algorithms: [.hs256]))
    }

    func testAlgorithmNotInKeysAllowListIsRefused() throws {
        let key = try JWTKey(id: "r1", algorithms: [.rs256], material: .publicKey(TestKeys.rsa.publicKey))
        let v = verifier([key])
        XCTAssertNoThrow(try v.verify(try token(.rs256, kid: "r1")))
        assertRefused(v, try token(.rs512, kid: "r1"), .algorithmNotAllowed)
        assertRefused(v, try token(.ps256, kid: "r1"), .algorithmNotAllowed)
        assertRefused(v, try token(.es256, kid: "r1"), .algorithmNotAllowed)
        // Unknown algorithm names.
        let payload = Base64URL.encode(claims().serialized())
        let h = Base64URL.encode(Array(#"{"alg":"HS1","kid":"r1"}"#.utf8))
        assertRefused(v, h + "." + payload + "." + Base64URL.encode([1, 2, 3]), .algorithmNotAllowed)
    }

    func testUnknownKidIsRefused() throws {
        let v = verifier(try allKeys())
        assertRefused(v, try token(.rs256, kid: "r2"), .unknownKey)
        // A token signed by another RSA key but claiming our kid: bad signature.
        let other = try JWTSigner.sign(claims: claims(), algorithm: .rs256, key: .privateKey(TestKeys.rsaOther), kid: "r1")
        assertRefused(v, other, .badSignature)
        // No keys at all.
        assertRefused(verifier([]), try token(.rs256, kid: nil), .unknownKey)
    }

    func testExpiryAndNotBefore() throws {
        let v = verifier(try allKeys(), leeway: 30)
        assertRefused(v, try token(.hs256, kid: "h1", claims: claims(exp: now - 31)), .expired)
        XCTAssertNoThrow(try v.verify(try token(.hs256, kid: "h1", claims: claims(exp: now - 29))))
        assertRefused(verifier(try allKeys(), leeway: 0), try token(.hs256, kid: "h1", claims: claims(exp: now)), .expired)
        assertRefused(v, try token(.hs256, kid: "h1", claims: claims(nbf: now + 31)), .notYetValid)
        XCTAssertNoThrow(try v.verify(try token(.hs256, kid: "h1", claims: claims(nbf: now + 29))))
        // Missing exp refused by default.
        let noExp = JSONValue.object([("sub", .string("a")), ("iss", .string("https://issuer.example")), ("aud", .string("streamotter"))])
        assertRefused(v, try token(.hs256, kid: "h1", claims: noExp), .missingExpiry)
        let lenient = JWTVerifier(keySet: KeySet(keys: try allKeys()), options: .init(requireExpiry: false), clock: { 0 })
        XCTAssertNil(try lenient.verify(try token(.hs256, kid: "h1", claims: noExp)).expiresAt)
        // exp with the wrong type.
        let badExp = JSONValue.object([("exp", .string("tomorrow"))])
        assertRefused(v, try token(.hs256, kid: "h1", claims: badExp), .invalidClaim)
    }

    func testIssuerAndAudienceMismatch() throws {
        let v = verifier(try allKeys())
        assertRefused(v, try token(.es256, kid: "e256", claims: claims(iss: "https://evil.example")), .issuerMismatch)
        assertRefused(v, try token(.es256, kid: "e256", claims: claims(iss: nil)), .issuerMismatch)
        assertRefused(v, try token(.es256, kid: "e256", claims: claims(aud: .string("other"))), .audienceMismatch)
        assertRefused(v, try token(.es256, kid: "e256", claims: claims(aud: .array([.string("a"), .string("b")]))), .audienceMismatch)
        assertRefused(v, try token(.es256, kid: "e256", claims: claims(aud: nil)), .audienceMismatch)
        assertRefused(v, try token(.es256, kid: "e256", claims: claims(aud: .number("1"))), .invalidClaim)
    }

    func testTamperedPayloadIsRefused() throws {
        let v = verifier(try allKeys())
        for alg in JWTAlgorithm.allCases {
            let parts = try token(alg, kid: kidFor(alg)).split(separator: ".").map(String.init)
            let evil = Base64URL.encode(claims(sub: "admin").serialized())
            assertRefused(v, parts[0] + "." + evil + "." + parts[2], .badSignature)
            // Header swapped to another kid/alg is refused too.
            let h2 = Base64URL.encode(Array(#"{"alg":"\#(alg.rawValue)","kid":"\#(kidFor(alg))","x":1}"#.utf8))
            assertRefused(v, h2 + "." + parts[1] + "." + parts[2], .badSignature)
        }
    }

    func testMalformedTokens() throws {
        let v = verifier(try allKeys())
        let good = try token(.hs256, kid: "h1")
        let p = good.split(separator: ".").map(String.init)
        for bad in ["", ".", "..", "a.b", "a.b.c.d", p[0] + "." + p[1], p[0] + "." + p[1] + "." + p[2] + ".x",
                    p[0] + "=." + p[1] + "." + p[2], p[0] + "." + p[1] + "=." + p[2], "e30.e30.e30",
                    Base64URL.encode(Array("[1]".utf8)) + "." + p[1] + "." + p[2],
                    p[0] + "." + Base64URL.encode(Array("not json".utf8)) + "." + p[2],
                    " " + good, good + " ", String(repeating: "a", count: 20_000)] {
            XCTAssertThrowsError(try v.verify(bad), "\(bad.prefix(40))")
        }
        assertRefused(v, p[0] + "." + Base64URL.encode(Array("\"str\"".utf8)) + "." + p[2], .malformed)
        // crit header.
        let crit = try JWTSigner.sign(claims: claims(), algorithm: .hs256, key: .hmac(TestKeys.secret), kid: "h1",
                                      extraHeader: [("crit", .array([.string("exp")]))])
        assertRefused(v, crit, .malformed)
    }

    func testECDSASignatureMustBeJOSEFormat() throws {
        // A DER-encoded ECDSA signature (what OpenSSL produces natively) is not accepted.
        let t = try token(.es256, kid: "e256")
        let parts = t.split(separator: ".").map(String.init)
        let jose = Base64URL.decode(parts[2])!
        let der = DER.ecdsaSignature(fromJOSE: jose, size: 32)!
        XCTAssertEqual(DER.joseSignature(fromDER: der, size: 32), jose)
        assertRefused(verifier(try allKeys()), parts[0] + "." + parts[1] + "." + Base64URL.encode(der), .badSignature)
    }

    func testHMACSecretLengthEnforced() {
        XCTAssertThrowsError(try JWTKey.hmac(id: nil, secret: Array("short".utf8)))
        XCTAssertThrowsError(try JWTKey.hmac(id: nil, secret: [UInt8](repeating: 7, count: 32), algorithms: [.hs512]))
        XCTAssertNoThrow(try JWTKey.hmac(id: nil, secret: [UInt8](repeating: 7, count: 64), algorithms: [.hs512]))
        XCTAssertThrowsError(try JWTKey(id: nil, algorithms: [], material: .hmacSecret(TestKeys.secret)))
        XCTAssertThrowsError(try JWTKey(id: nil, algorithms: [.es384], material: .publicKey(TestKeys.p256.publicKey)))
        XCTAssertThrowsError(try JWTKey(id: nil, algorithms: [.edDSA], material: .publicKey(TestKeys.rsa.publicKey)))
    }

    // MARK: claim values and duplicate names

    /// Signs `payload` (JSON text, used as is) with HS256 and the key `h1`.
    func rawToken(_ payload: String, header: String = #"{"alg":"HS256","kid":"h1"}"#) throws -> String {
        try JWTSigner.sign(headerJSON: Array(header.utf8), payload: Array(payload.utf8), algorithm: .hs256, key: .hmac(TestKeys.secret))
    }

    func testNumericDatesOutsideTheirRangeAreInvalidClaims() throws {
        // exp x 1000 beyond Int64 (exp from about 9.3e15 s) trapped the gateway when it made
        // the connection's expiry in milliseconds; 1e400 reads as infinity.
        let v = verifier(try allKeys(), issuers: [], audiences: [])
        let future = String(Int(now) + 300)
        for bad in ["1e16", "10000000000000000", "9300000000000000", "9.3e15", "1e308", "1e400", "-1e400", "-1", "-0.5",
                    "253402300800", "253402300799.5"] {
            assertRefused(v, try rawToken(#"{"sub":"a","exp":\#(bad)}"#), .invalidClaim)
            assertRefused(v, try rawToken(#"{"sub":"a","exp":\#(future),"nbf":\#(bad)}"#), .invalidClaim)
            assertRefused(v, try rawToken(#"{"sub":"a","exp":\#(future),"iat":\#(bad)}"#), .invalidClaim)
        }
        for bad in [#""1e16""#, "null", "true", "[1]", "{}"] {
            assertRefused(v, try rawToken(#"{"sub":"a","exp":\#(bad)}"#), .invalidClaim)
            assertRefused(v, try rawToken(#"{"sub":"a","exp":\#(future),"iat":\#(bad)}"#), .invalidClaim)
        }
        // The ends of the range and fractions are NumericDates.
        let latest = try v.verify(try rawToken(#"{"sub":"a","exp":253402300799,"nbf":0,"iat":0}"#))
        XCTAssertEqual(latest.expiresAt, NumericDate.latest)
        XCTAssertEqual(try v.verify(try rawToken(#"{"sub":"a","exp":\#(future).25,"iat":1.5e9}"#)).expiresAt, now + 300.25)
    }

    func testNumericDateMillisecondsNeverTrap() {
        XCTAssertEqual(NumericDate.milliseconds(1_750_000_000.5), 1_750_000_000_500)
        XCTAssertEqual(NumericDate.milliseconds(NumericDate.latest), 253_402_300_799_000)
        for huge in [1e16, 1e300, .greatestFiniteMagnitude, .infinity] {
            XCTAssertEqual(NumericDate.milliseconds(huge), 253_402_300_799_000, "\(huge)")
        }
        for low in [0, -1, -1e300, -.infinity, .nan] {
            XCTAssertEqual(NumericDate.milliseconds(low), 0, "\(low)")
        }
    }

    func testDuplicateMemberNamesAreRefused() throws {
        // Other JWT libraries take the last of two members (RFC 7519 section 4 allows that or
        // refusing): the same token must not be alice here and bob there.
        let v = verifier(try allKeys(), issuers: [], audiences: [])
        let exp = String(Int(now) + 300)
        assertRefused(v, try rawToken(#"{"sub":"alice","sub":"bob","exp":\#(exp)}"#), .duplicateMember)
        assertRefused(v, try rawToken(#"{"sub":"carol","exp":\#(exp),"exp":1}"#), .duplicateMember)
        assertRefused(v, try rawToken(#"{"sub":"carol","exp":1,"exp":\#(exp)}"#), .duplicateMember)
        // An escaped spelling is the same name.
        assertRefused(v, try rawToken(#"{"sub":"alice","s\u0075b":"bob","exp":\#(exp)}"#), .duplicateMember)
        // In a nested object (a roles claim path) and in an object inside an array.
        assertRefused(v, try rawToken(#"{"sub":"a","exp":\#(exp),"realm_access":{"roles":["reader"],"roles":["admin"]}}"#),
                      .duplicateMember)
        assertRefused(v, try rawToken(#"{"sub":"a","exp":\#(exp),"x":[{"k":1,"k":2}]}"#), .duplicateMember)
        // In the header.
        let claims = #"{"sub":"a","exp":\#(exp)}"#
        assertRefused(v, try rawToken(claims, header: #"{"alg":"HS256","kid":"h1","kid":"r1"}"#), .duplicateMember)
        assertRefused(v, try rawToken(claims, header: #"{"alg":"HS256","alg":"none","kid":"h1"}"#), .duplicateMember)
        // The same name in different objects is no repeat.
        XCTAssertEqual(try v.verify(try rawToken(#"{"sub":"a","exp":\#(exp),"o":{"sub":"b","exp":1}}"#)).subject, "a")
        XCTAssertEqual(JWTError.duplicateMember.reason, "duplicate_member")
    }

    func testErrorReasonsAreStable() {
        XCTAssertEqual(JWTError.algorithmNotAllowed.reason, "algorithm_not_allowed")
        XCTAssertEqual(JWTError.badSignature.reason, "bad_signature")
        XCTAssertEqual(JWTError.expired.reason, "expired")
        XCTAssertEqual(JWTError.unknownKey.reason, "unknown_key")
    }
}
