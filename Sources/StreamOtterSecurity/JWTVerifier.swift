import COpenSSL
import StreamOtterCore

/// A token that passed verification.
public struct VerifiedToken: Sendable {
    /// The payload (a JSON object).
    public let claims: JSONValue
    /// The protected header (a JSON object).
    public let header: JSONValue
    /// The algorithm that verified the signature.
    public let algorithm: JWTAlgorithm
    /// The `kid` of the key that verified it (nil for a key without id).
    public let keyID: String?
    /// `sub`, when present and a string.
    public var subject: String? { claims["sub"]?.stringValue }
    /// `exp` in seconds since the epoch, when present (0...`NumericDate.latest`).
    public let expiresAt: Double?
}

/// Verifies compact JWS tokens (JWT) with OpenSSL.
///
/// Steps, in order; the first failure is thrown as a `JWTError`:
/// 1. Structure: at most `maxTokenBytes`, three parts, strict base64url, header and payload
///    JSON objects, no `crit` header; no member name twice in one object of the header or
///    the payload (`duplicateMember`).
/// 2. Algorithm: `alg` must name a supported algorithm (`none` never is).
/// 3. Key selection: when the token has `kid` and any key has an id, only keys with that id
///    are candidates (none: `unknownKey`); otherwise every key. Candidates whose allow-list
///    lacks `alg` are dropped (none left: `algorithmNotAllowed`).
/// 4. Signature: checked against each candidate (constant-time for HMAC); none verifies:
///    `badSignature`.
/// 5. Claims: `exp` (required when `requireExpiry`), `nbf`, with `leewaySeconds`; `iss`
///    when `issuers` is non-empty; `aud` when `audiences` is non-empty. `exp`, `nbf` and
///    `iat` must be numbers from 0 to `NumericDate.latest` (`invalidClaim`), so `expiresAt`
///    always converts to integer milliseconds.
///
/// Thread-safe; `verify` does CPU work only (an RSA-2048 verify takes tens of microseconds).
public final class JWTVerifier: @unchecked Sendable {
    /// Claim checks.
    public struct Options: Sendable {
        /// Accepted `iss` values; empty: `iss` is not checked.
        public var issuers: [String]
        /// Accepted audiences; the token's `aud` (string or array) must contain one. Empty:
        /// `aud` is not checked.
        public var audiences: [String]
        /// Clock skew allowed for `exp` and `nbf`, in seconds.
        public var leewaySeconds: Double
        /// Refuse tokens without `exp` (default true).
        public var requireExpiry: Bool
        /// Longest accepted token, in bytes.
        public var maxTokenBytes: Int

        public init(issuers: [String] = [], audiences: [String] = [], leewaySeconds: Double = 30,
                    requireExpiry: Bool = true, maxTokenBytes: Int = 16 * 1024) {
            self.issuers = issuers
            self.audiences = audiences
            self.leewaySeconds = leewaySeconds
            self.requireExpiry = requireExpiry
            self.maxTokenBytes = maxTokenBytes
        }
    }

    /// The keys (reloadable).
    public let keySet: KeySet
    /// The claim checks.
    public let options: Options
    private let clock: @Sendable () -> Double

    /// `clock` returns wall-clock seconds since the epoch (inject a fixed one in tests).
    public init(keySet: KeySet, options: Options = Options(),
                clock: @escaping @Sendable () -> Double = SecurityClock.wallSeconds) {
        self.keySet = keySet
        self.options = options
        self.clock = clock
    }

    /// Verifies `token` (the compact serialization, without `Bearer `).
    public func verify(_ token: String) throws -> VerifiedToken {
        let bytes = Array(token.utf8)
        guard bytes.count <= options.maxTokenBytes else { throw JWTError.malformed }
        let parts = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw JWTError.malformed }
        guard let headerBytes = Base64URL.decode(bytes: parts[0]),
              let payloadBytes = Base64URL.decode(bytes: parts[1]),
              let signature = Base64URL.decode(bytes: parts[2]) else { throw JWTError.malformed }
        guard let header = try? JSON.parse(headerBytes), case .object = header,
              let claims = try? JSON.parse(payloadBytes), case .object = claims else { throw JWTError.malformed }
        if header["crit"] != nil { throw JWTError.malformed }
        if header.duplicateMemberName != nil || claims.duplicateMemberName != nil { throw JWTError.duplicateMember }
        guard let algName = header["alg"]?.stringValue else { throw JWTError.malformed }
        guard let alg = JWTAlgorithm(rawValue: algName) else { throw JWTError.algorithmNotAllowed }
        let kid: String?
        switch header["kid"] {
        case nil: kid = nil
        case .string(let s)?: kid = s
        default: throw JWTError.malformed
        }

        let keys = keySet.keys
        var candidates = keys
        if let kid = kid, keys.contains(where: { $0.id != nil }) {
            candidates = keys.filter { $0.id == kid }
            if candidates.isEmpty { throw JWTError.unknownKey }
        }
        candidates = candidates.filter { $0.algorithms.contains(alg) }
        if candidates.isEmpty {
            throw keys.isEmpty ? JWTError.unknownKey : JWTError.algorithmNotAllowed
        }
        guard !signature.isEmpty else { throw JWTError.badSignature }

        // Signing input: ASCII(header part) '.' ASCII(payload part).
        let signingInput = Array(bytes[0..<(parts[0].count + 1 + parts[1].count)])
        guard let key = candidates.first(where: { JWTVerifier.check(signature, signingInput, alg, $0) }) else {
            throw JWTError.badSignature
        }

        // Claims.
        let now = clock()
        func numeric(_ name: String) throws -> Double? {
            guard let v = claims[name] else { return nil }
            guard let d = NumericDate.seconds(v) else { throw JWTError.invalidClaim }
            return d
        }
        let exp = try numeric("exp")
        let nbf = try numeric("nbf")
        _ = try numeric("iat")
        if let exp = exp {
            if now >= exp + options.leewaySeconds { throw JWTError.expired }
        } else if options.requireExpiry {
            throw JWTError.missingExpiry
        }
        if let nbf = nbf, now + options.leewaySeconds < nbf { throw JWTError.notYetValid }
        if !options.issuers.isEmpty {
            guard let iss = claims["iss"] else { throw JWTError.issuerMismatch }
            guard let s = iss.stringValue else { throw JWTError.invalidClaim }
            guard options.issuers.contains(s) else { throw JWTError.issuerMismatch }
        }
        if !options.audiences.isEmpty {
            let auds: [String]
            switch claims["aud"] {
            case nil: throw JWTError.audienceMismatch
            case .string(let s)?: auds = [s]
            case .array(let items)?:
                auds = try items.map { item -> String in
                    guard let s = item.stringValue else { throw JWTError.invalidClaim }
                    return s
                }
            default: throw JWTError.invalidClaim
            }
            guard auds.contains(where: { options.audiences.contains($0) }) else { throw JWTError.audienceMismatch }
        }
        return VerifiedToken(claims: claims, header: header, algorithm: alg, keyID: key.id, expiresAt: exp)
    }

    /// Verifies one signature with one key. Never throws; false on any failure.
    static func check(_ signature: [UInt8], _ input: [UInt8], _ alg: JWTAlgorithm, _ key: JWTKey) -> Bool {
        defer { OpenSSLError.clear() }
        switch key.material {
        case .hmacSecret(let secret):
            guard alg.isHMAC, let mac = hmac(alg, secret, input), mac.count == signature.count else { return false }
            return mac.withUnsafeBytes { a in signature.withUnsafeBytes { b in CRYPTO_memcmp(a.baseAddress, b.baseAddress, a.count) == 0 } }
        case .publicKey(let pk):
            guard !alg.isHMAC, alg.accepts(pk.kind) else { return false }
            var sig = signature
            if let size = alg.ecCoordinateSize {
                guard let der = DER.ecdsaSignature(fromJOSE: signature, size: size) else { return false }
                sig = der
            } else if alg == .edDSA {
                guard signature.count == 64 else { return false }
            } else if case .rsa(let bits) = pk.kind {
                guard signature.count == (bits + 7) / 8 else { return false }
            }
            guard let ctx = EVP_MD_CTX_new() else { return false }
            defer { EVP_MD_CTX_free(ctx) }
            var pctx: OpaquePointer? = nil
            guard EVP_DigestVerifyInit(ctx, &pctx, alg.digest, nil, pk.pkey) == 1 else { return false }
            if alg == .ps256 {
                guard let p = pctx,
                      EVP_PKEY_CTX_set_rsa_padding(p, RSA_PKCS1_PSS_PADDING) == 1,
                      EVP_PKEY_CTX_set_rsa_pss_saltlen(p, RSA_PSS_SALTLEN_DIGEST) == 1,
                      EVP_PKEY_CTX_set_rsa_mgf1_md(p, EVP_sha256()) == 1 else { return false }
            }
            let rc = sig.withUnsafeBufferPointer { s in
                input.withUnsafeBufferPointer { m in
                    EVP_DigestVerify(ctx, s.baseAddress, s.count, m.baseAddress, m.count)
                }
            }
            return rc == 1
        }
    }

    static func hmac(_ alg: JWTAlgorithm, _ secret: [UInt8], _ input: [UInt8]) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var len: UInt32 = 0
        let ok = secret.withUnsafeBufferPointer { k in
            input.withUnsafeBufferPointer { m in
                out.withUnsafeMutableBufferPointer { o in
                    HMAC(alg.digest, k.baseAddress, Int32(k.count), m.baseAddress, m.count, o.baseAddress, &len) != nil
                }
            }
        }
        return ok ? Array(out[0..<Int(len)]) : nil
    }
}
