import COpenSSL
import StreamOtterCore

/// The kind of an asymmetric key, as far as JOSE cares.
public enum PublicKeyKind: Equatable, Sendable, CustomStringConvertible {
    /// RSA with its modulus size in bits.
    case rsa(bits: Int)
    /// ECDSA on P-256 (`ES256`).
    case p256
    /// ECDSA on P-384 (`ES384`).
    case p384
    /// Ed25519 (`EdDSA`).
    case ed25519

    public var description: String {
        switch self {
        case .rsa(let bits): return "RSA-\(bits)"
        case .p256: return "EC P-256"
        case .p384: return "EC P-384"
        case .ed25519: return "Ed25519"
        }
    }
}

/// An immutable public key held as an OpenSSL `EVP_PKEY`, for signature verification.
///
/// Created from PEM text (a `PUBLIC KEY` SubjectPublicKeyInfo block or a `CERTIFICATE`),
/// from a JWK object (kty `RSA`, `EC` with crv P-256/P-384, `OKP` with crv Ed25519), or from
/// DER SubjectPublicKeyInfo. Only RSA, P-256, P-384 and Ed25519 keys are accepted.
/// Thread-safe: OpenSSL permits concurrent verification with one `EVP_PKEY`.
public final class PublicKey: @unchecked Sendable {
    let pkey: OpaquePointer
    /// The key type and size.
    public let kind: PublicKeyKind
    /// The DER SubjectPublicKeyInfo of the key.
    public let spki: [UInt8]

    /// Takes ownership of `pkey`.
    init(owning pkey: OpaquePointer) throws {
        self.pkey = pkey
        var buf: UnsafeMutablePointer<UInt8>? = nil
        let n = i2d_PUBKEY(pkey, &buf)
        guard n > 0, let b = buf else {
            EVP_PKEY_free(pkey)
            throw SecurityConfigError("cannot encode public key")
        }
        spki = Array(UnsafeBufferPointer(start: b, count: Int(n)))
        CRYPTO_free(b, #file, #line)
        guard let kind = PublicKey.classify(spki: spki) else {
            EVP_PKEY_free(pkey)
            throw SecurityConfigError("unsupported public key type (RSA, EC P-256/P-384 and Ed25519 are supported)")
        }
        if case .rsa(let bits) = kind, bits < 2048 {
            EVP_PKEY_free(pkey)
            throw SecurityConfigError("RSA key of \(bits) bits is too small (2048 minimum)")
        }
        self.kind = kind
    }

    deinit { EVP_PKEY_free(pkey) }

    /// Parses DER SubjectPublicKeyInfo.
    public convenience init(spkiDER der: [UInt8]) throws {
        let key: OpaquePointer? = der.withUnsafeBufferPointer { buf in
            var p: UnsafePointer<UInt8>? = buf.baseAddress
            return d2i_PUBKEY(nil, &p, buf.count)
        }
        guard let k = key else { throw SecurityConfigError("invalid public key: \(OpenSSLError.drain())") }
        try self.init(owning: k)
    }

    /// Parses every `PUBLIC KEY` and `CERTIFICATE` block in PEM text, in order.
    /// Throws when there is none or one is invalid.
    public static func all(pem: String) throws -> [PublicKey] {
        var keys: [PublicKey] = []
        var block: [Substring] = []
        var label: Substring? = nil
        for rawLine in pem.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let line = rawLine.drop(while: { $0 == " " || $0 == "\t" })
            if label == nil {
                if line.hasPrefix("-----BEGIN ") && line.hasSuffix("-----") {
                    label = line.dropFirst(11).dropLast(5)
                    block = [line]
                }
                continue
            }
            block.append(line)
            if line.hasPrefix("-----END ") {
                let text = block.joined(separator: "\n") + "\n"
                switch label! {
                case "PUBLIC KEY": keys.append(try PublicKey(pemBlock: text, certificate: false))
                case "CERTIFICATE": keys.append(try PublicKey(pemBlock: text, certificate: true))
                case let l where l.hasSuffix("PRIVATE KEY"):
                    throw SecurityConfigError("PEM holds a private key; give the verifier a public key or certificate")
                default:
                    throw SecurityConfigError("unsupported PEM block '\(label!)' (PUBLIC KEY or CERTIFICATE expected)")
                }
                label = nil
            }
        }
        if label != nil { throw SecurityConfigError("truncated PEM block") }
        if keys.isEmpty { throw SecurityConfigError("no PUBLIC KEY or CERTIFICATE block in PEM text") }
        return keys
    }

    /// Parses the first `PUBLIC KEY` or `CERTIFICATE` block in PEM text.
    public convenience init(pem: String) throws {
        let keys = try PublicKey.all(pem: pem)
        try self.init(spkiDER: keys[0].spki)
    }

    private convenience init(pemBlock: String, certificate: Bool) throws {
        var text = pemBlock
        let key: OpaquePointer? = text.withUTF8 { buf -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(buf.baseAddress, Int32(buf.count)) else { return nil }
            defer { BIO_free(bio) }
            if certificate {
                guard let x509 = PEM_read_bio_X509(bio, nil, nil, nil) else { return nil }
                defer { X509_free(x509) }
                return X509_get_pubkey(x509)
            }
            return PEM_read_bio_PUBKEY(bio, nil, nil, nil)
        }
        guard let k = key else { throw SecurityConfigError("invalid PEM \(certificate ? "certificate" : "public key"): \(OpenSSLError.drain())") }
        try self.init(owning: k)
    }

    /// Builds a key from one JWK object (RFC 7517/7518): `kty` RSA (`n`, `e`), EC (`crv`
    /// P-256 or P-384, `x`, `y`) or OKP (`crv` Ed25519, `x`).
    public convenience init(jwk: JSONValue) throws {
        guard case .object = jwk, let kty = jwk["kty"]?.stringValue else { throw SecurityConfigError("JWK without kty") }
        func field(_ name: String) throws -> [UInt8] {
            guard let s = jwk[name]?.stringValue, let v = Base64URL.decode(s), !v.isEmpty else {
                throw SecurityConfigError("JWK (\(kty)) has no valid base64url '\(name)'")
            }
            return v
        }
        let der: [UInt8]
        switch kty {
        case "RSA":
            let n = try field("n"), e = try field("e")
            let rsaKey = DER.sequence(DER.unsignedInteger(n), DER.unsignedInteger(e))
            der = DER.sequence(DER.sequence(DER.oid(DER.oidRSAEncryption), DER.null), DER.bitString(rsaKey))
        case "EC":
            let crv = jwk["crv"]?.stringValue ?? ""
            let (oid, size): ([UInt8], Int)
            switch crv {
            case "P-256": (oid, size) = (DER.oidP256, 32)
            case "P-384": (oid, size) = (DER.oidP384, 48)
            default: throw SecurityConfigError("unsupported EC curve '\(crv)' (P-256, P-384)")
            }
            let x = try field("x"), y = try field("y")
            guard x.count == size, y.count == size else { throw SecurityConfigError("EC JWK coordinates must be \(size) bytes") }
            der = DER.sequence(DER.sequence(DER.oid(DER.oidECPublicKey), DER.oid(oid)), DER.bitString([4] + x + y))
        case "OKP":
            guard jwk["crv"]?.stringValue == "Ed25519" else { throw SecurityConfigError("unsupported OKP curve (Ed25519)") }
            let x = try field("x")
            guard x.count == 32 else { throw SecurityConfigError("Ed25519 JWK x must be 32 bytes") }
            der = DER.sequence(DER.sequence(DER.oid(DER.oidEd25519)), DER.bitString(x))
        default:
            throw SecurityConfigError("unsupported JWK kty '\(kty)' (RSA, EC, OKP)")
        }
        try self.init(spkiDER: der)
    }

    /// The public JWK members for this key (`kty` and `n`/`e`, `crv`/`x`/`y`, `crv`/`x`),
    /// plus `kid` and `alg` when given.
    public func jwk(kid: String? = nil, alg: JWTAlgorithm? = nil) -> JSONValue {
        var members: [(String, JSONValue)] = []
        var outer = DER.Reader(spki)
        let seq = outer.expect(0x30) ?? []
        var r = DER.Reader(seq)
        _ = r.expect(0x30)
        let bits = Array((r.expect(0x03) ?? [0]).dropFirst())
        switch kind {
        case .rsa:
            var kr = DER.Reader(bits)
            var inner = DER.Reader(kr.expect(0x30) ?? [])
            let n = DER.magnitude(inner.expect(0x02) ?? []), e = DER.magnitude(inner.expect(0x02) ?? [])
            members = [("kty", .string("RSA")), ("n", .string(Base64URL.encode(n))), ("e", .string(Base64URL.encode(e)))]
        case .p256, .p384:
            let size = kind == .p256 ? 32 : 48
            let x = Array(bits[1..<(1 + size)]), y = Array(bits[(1 + size)...])
            members = [("kty", .string("EC")), ("crv", .string(kind == .p256 ? "P-256" : "P-384")),
                       ("x", .string(Base64URL.encode(x))), ("y", .string(Base64URL.encode(y)))]
        case .ed25519:
            members = [("kty", .string("OKP")), ("crv", .string("Ed25519")), ("x", .string(Base64URL.encode(bits)))]
        }
        if let kid = kid { members.append(("kid", .string(kid))) }
        if let alg = alg { members.append(("alg", .string(alg.rawValue))) }
        return .object(members)
    }

    /// PEM `PUBLIC KEY` text of this key.
    public var pem: String {
        let b64 = Base64.encode(spki)
        var lines = "-----BEGIN PUBLIC KEY-----\n"
        var i = b64.startIndex
        while i < b64.endIndex {
            let j = b64.index(i, offsetBy: 64, limitedBy: b64.endIndex) ?? b64.endIndex
            lines += b64[i..<j] + "\n"
            i = j
        }
        return lines + "-----END PUBLIC KEY-----\n"
    }

    static func classify(spki: [UInt8]) -> PublicKeyKind? {
        var outer = DER.Reader(spki)
        guard let seq = outer.expect(0x30) else { return nil }
        var r = DER.Reader(seq)
        guard let algSeq = r.expect(0x30), let bitString = r.expect(0x03), !bitString.isEmpty else { return nil }
        var a = DER.Reader(algSeq)
        guard let oid = a.expect(0x06) else { return nil }
        let key = Array(bitString.dropFirst())
        switch oid {
        case DER.oidRSAEncryption:
            var kr = DER.Reader(key)
            guard let ks = kr.expect(0x30) else { return nil }
            var inner = DER.Reader(ks)
            guard let n = inner.expect(0x02) else { return nil }
            return .rsa(bits: DER.magnitude(n).count * 8 - (DER.magnitude(n).first.map { $0.leadingZeroBitCount } ?? 0))
        case DER.oidECPublicKey:
            guard let curve = a.expect(0x06) else { return nil }
            if curve == DER.oidP256, key.count == 65 { return .p256 }
            if curve == DER.oidP384, key.count == 97 { return .p384 }
            return nil
        case DER.oidEd25519:
            return key.count == 32 ? .ed25519 : nil
        default:
            return nil
        }
    }
}

/// OpenSSL error queue helpers.
enum OpenSSLError {
    /// Returns the queued OpenSSL errors as one line and clears the queue.
    static func drain() -> String {
        var parts: [String] = []
        while true {
            let e = ERR_get_error()
            if e == 0 { break }
            var buf = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(e, &buf, buf.count)
            parts.append(String(cString: buf))
        }
        return parts.isEmpty ? "unknown OpenSSL error" : parts.joined(separator: "; ")
    }

    static func clear() { ERR_clear_error() }
}
