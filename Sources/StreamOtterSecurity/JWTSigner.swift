import COpenSSL
import StreamOtterCore

/// A private key for signing tokens: for tests, tools (`streamotter token`), and local
/// development. The gateway itself never signs.
public final class PrivateKey: @unchecked Sendable {
    /// Key types `generate` can create.
    public enum KeyType: Sendable {
        case rsa(bits: Int)
        case p256
        case p384
        case ed25519
    }

    let pkey: OpaquePointer
    /// The matching public key.
    public let publicKey: PublicKey

    private init(owning pkey: OpaquePointer) throws {
        self.pkey = pkey
        var buf: UnsafeMutablePointer<UInt8>? = nil
        let n = i2d_PUBKEY(pkey, &buf)
        guard n > 0, let b = buf else { EVP_PKEY_free(pkey); throw SecurityConfigError("cannot encode public key") }
        let der = Array(UnsafeBufferPointer(start: b, count: Int(n)))
        CRYPTO_free(b, #file, #line)
        do { publicKey = try PublicKey(spkiDER: der) } catch { EVP_PKEY_free(pkey); throw error }
    }

    deinit { EVP_PKEY_free(pkey) }

    /// Generates a fresh key with OpenSSL (`EVP_PKEY_generate`).
    public static func generate(_ type: KeyType) throws -> PrivateKey {
        let name: String
        switch type {
        case .rsa: name = "RSA"
        case .p256, .p384: name = "EC"
        case .ed25519: name = "ED25519"
        }
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, name, nil) else { throw SecurityConfigError("keygen: \(OpenSSLError.drain())") }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_keygen_init(ctx) == 1 else { throw SecurityConfigError("keygen init: \(OpenSSLError.drain())") }
        switch type {
        case .rsa(let bits):
            guard EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, Int32(bits)) == 1 else { throw SecurityConfigError("keygen bits: \(OpenSSLError.drain())") }
        case .p256:
            guard EVP_PKEY_CTX_set_group_name(ctx, "P-256") == 1 else { throw SecurityConfigError("keygen group: \(OpenSSLError.drain())") }
        case .p384:
            guard EVP_PKEY_CTX_set_group_name(ctx, "P-384") == 1 else { throw SecurityConfigError("keygen group: \(OpenSSLError.drain())") }
        case .ed25519: break
        }
        var key: OpaquePointer? = nil
        guard EVP_PKEY_generate(ctx, &key) == 1, let k = key else { throw SecurityConfigError("keygen: \(OpenSSLError.drain())") }
        return try PrivateKey(owning: k)
    }

    /// Reads a PEM private key (PKCS#8 `PRIVATE KEY`, or traditional RSA/EC forms).
    public convenience init(pem: String) throws {
        var text = pem
        let key: OpaquePointer? = text.withUTF8 { buf in
            guard let bio = BIO_new_mem_buf(buf.baseAddress, Int32(buf.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let k = key else { throw SecurityConfigError("invalid PEM private key: \(OpenSSLError.drain())") }
        try self.init(owning: k)
    }

    /// PKCS#8 PEM text of the private key (unencrypted).
    public var pem: String {
        guard let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        guard PEM_write_bio_PrivateKey(bio, pkey, nil, nil, 0, nil, nil) == 1 else { return "" }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32($0.count)) }
            if n <= 0 { break }
            out += buf[0..<Int(n)]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Signs `input` with `alg` (JOSE signature format: r||s for ECDSA).
    public func sign(_ input: [UInt8], algorithm alg: JWTAlgorithm) throws -> [UInt8] {
        guard !alg.isHMAC, alg.accepts(publicKey.kind) else {
            throw SecurityConfigError("\(alg.rawValue) cannot sign with a \(publicKey.kind) key")
        }
        guard let ctx = EVP_MD_CTX_new() else { throw SecurityConfigError("out of memory") }
        defer { EVP_MD_CTX_free(ctx) }
        var pctx: OpaquePointer? = nil
        guard EVP_DigestSignInit(ctx, &pctx, alg.digest, nil, pkey) == 1 else { throw SecurityConfigError("sign init: \(OpenSSLError.drain())") }
        if alg == .ps256 {
            guard let p = pctx,
                  EVP_PKEY_CTX_set_rsa_padding(p, RSA_PKCS1_PSS_PADDING) == 1,
                  EVP_PKEY_CTX_set_rsa_pss_saltlen(p, RSA_PSS_SALTLEN_DIGEST) == 1,
                  EVP_PKEY_CTX_set_rsa_mgf1_md(p, EVP_sha256()) == 1 else { throw SecurityConfigError("pss: \(OpenSSLError.drain())") }
        }
        var len = 0
        guard input.withUnsafeBufferPointer({ EVP_DigestSign(ctx, nil, &len, $0.baseAddress, $0.count) }) == 1 else {
            throw SecurityConfigError("sign: \(OpenSSLError.drain())")
        }
        var sig = [UInt8](repeating: 0, count: len)
        let rc = sig.withUnsafeMutableBufferPointer { s in
            input.withUnsafeBufferPointer { m in EVP_DigestSign(ctx, s.baseAddress, &len, m.baseAddress, m.count) }
        }
        guard rc == 1 else { throw SecurityConfigError("sign: \(OpenSSLError.drain())") }
        sig = Array(sig[0..<len])
        if let size = alg.ecCoordinateSize {
            guard let jose = DER.joseSignature(fromDER: sig, size: size) else { throw SecurityConfigError("bad ECDSA signature") }
            return jose
        }
        return sig
    }
}

/// Creates compact JWS tokens. For tests and tools; the gateway only verifies.
public enum JWTSigner {
    /// The signing material.
    public enum Key {
        case hmac([UInt8])
        case privateKey(PrivateKey)
    }

    /// Signs `claims` (a JSON object) with `alg`; `kid` and `extraHeader` members go in the
    /// protected header.
    public static func sign(claims: JSONValue, algorithm alg: JWTAlgorithm, key: Key, kid: String? = nil,
                            extraHeader: [(String, JSONValue)] = []) throws -> String {
        var header: [(String, JSONValue)] = [("alg", .string(alg.rawValue)), ("typ", .string("JWT"))]
        if let kid = kid { header.append(("kid", .string(kid))) }
        header += extraHeader
        return try sign(headerJSON: JSONValue.object(header).serialized(), payload: claims.serialized(), algorithm: alg, key: key)
    }

    /// Signs raw header and payload bytes (for building odd tokens in tests).
    public static func sign(headerJSON: [UInt8], payload: [UInt8], algorithm alg: JWTAlgorithm, key: Key) throws -> String {
        let input = Base64URL.encode(headerJSON) + "." + Base64URL.encode(payload)
        let signature: [UInt8]
        switch key {
        case .hmac(let secret):
            guard alg.isHMAC, let mac = JWTVerifier.hmac(alg, secret, Array(input.utf8)) else {
                throw SecurityConfigError("\(alg.rawValue) cannot sign with an HMAC secret")
            }
            signature = mac
        case .privateKey(let pk):
            signature = try pk.sign(Array(input.utf8), algorithm: alg)
        }
        return input + "." + Base64URL.encode(signature)
    }
}
