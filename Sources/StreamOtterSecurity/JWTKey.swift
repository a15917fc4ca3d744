import StreamOtterCore

/// One verification key with the explicit list of algorithms it may verify.
///
/// The binding is checked at construction: HMAC algorithms only with a secret, RS*/PS256
/// only with RSA (>= 2048 bits), ES256 only with P-256, ES384 only with P-384, EdDSA only
/// with Ed25519. So an RSA public key can never be used as an HMAC secret ("RS256 public key
/// as HS256 secret" forgery), and an HMAC secret that is PEM or JWK text is refused too.
public struct JWTKey: Sendable {
    /// The key material.
    public enum Material: Sendable {
        /// A shared HMAC secret (HS256/384/512).
        case hmacSecret([UInt8])
        /// An asymmetric public key (RS*, PS256, ES*, EdDSA).
        case publicKey(PublicKey)
    }

    /// Key id matched against the token header's `kid`; nil for a key without id.
    public let id: String?
    /// Algorithms this key may verify. Never empty.
    public let algorithms: Set<JWTAlgorithm>
    /// The material.
    public let material: Material

    /// Creates a key; throws when an algorithm does not fit the material, or the list is empty.
    public init(id: String?, algorithms: Set<JWTAlgorithm>, material: Material) throws {
        guard !algorithms.isEmpty else { throw SecurityConfigError("key \(id ?? "(no kid)"): empty algorithm list") }
        switch material {
        case .hmacSecret(let secret):
            for alg in algorithms {
                guard alg.isHMAC else {
                    throw SecurityConfigError("key \(id ?? "(no kid)"): \(alg.rawValue) needs a public key, not an HMAC secret")
                }
                guard secret.count >= alg.minimumSecretBytes else {
                    throw SecurityConfigError("key \(id ?? "(no kid)"): \(alg.rawValue) secret must be at least \(alg.minimumSecretBytes) bytes")
                }
            }
            let text = String(decoding: secret.prefix(64), as: UTF8.self)
            if text.contains("-----BEGIN") || text.contains("\"kty\"") {
                throw SecurityConfigError("key \(id ?? "(no kid)"): the HMAC secret looks like a public key (PEM/JWK); refusing")
            }
        case .publicKey(let key):
            for alg in algorithms where !alg.accepts(key.kind) {
                throw SecurityConfigError("key \(id ?? "(no kid)"): \(alg.rawValue) cannot be used with a \(key.kind) key")
            }
        }
        self.id = id
        self.algorithms = algorithms
        self.material = material
    }

    /// An HMAC key.
    public static func hmac(id: String?, secret: [UInt8], algorithms: Set<JWTAlgorithm> = [.hs256]) throws -> JWTKey {
        try JWTKey(id: id, algorithms: algorithms, material: .hmacSecret(secret))
    }

    /// Keys from PEM text (each `PUBLIC KEY` or `CERTIFICATE` block becomes one key with the
    /// same id and algorithms). With `algorithms` nil, every algorithm compatible with the
    /// key type is allowed (for RSA: RS256, RS384, RS512, PS256).
    /// `algorithms` (when given) is an allow-list shared by several keys: each key gets
    /// the part of it that fits its type, and a key for which nothing fits is refused.
    public static func fromPEM(_ pem: String, id: String?, algorithms: Set<JWTAlgorithm>? = nil) throws -> [JWTKey] {
        try PublicKey.all(pem: pem).map { key in
            let fitting = JWTAlgorithm.compatible(with: key.kind)
            let allowed = algorithms.map { $0.intersection(fitting) } ?? fitting
            guard !allowed.isEmpty else {
                throw SecurityConfigError("key \(id ?? "(no kid)"): none of the allowed algorithms fits a \(key.kind) key")
            }
            return try JWTKey(id: id, algorithms: allowed, material: .publicKey(key))
        }
    }

    /// Keys from JWKS JSON text (`{"keys":[...]}`; a single JWK object is accepted too).
    ///
    /// Each JWK's `kid` becomes the key id. A JWK with `alg` allows only that algorithm
    /// (and it must be in `algorithms` when given, otherwise the JWK is refused); a JWK
    /// without `alg` allows `algorithms` (or, when nil, every algorithm compatible with its
    /// type). JWKs with `"use":"enc"` are skipped. Any invalid JWK fails the whole set.
    public static func fromJWKS(_ text: String, algorithms: Set<JWTAlgorithm>? = nil) throws -> [JWTKey] {
        let json: JSONValue
        do { json = try JSON.parse(text) } catch { throw SecurityConfigError("JWKS is not valid JSON: \(error)") }
        let list: [JSONValue]
        if case .array(let keys)? = json["keys"] { list = keys }
        else if json["kty"] != nil { list = [json] }
        else { throw SecurityConfigError("JWKS has no 'keys' array") }
        var out: [JWTKey] = []
        for jwk in list {
            if jwk["use"]?.stringValue == "enc" { continue }
            let kid = jwk["kid"]?.stringValue
            let key = try PublicKey(jwk: jwk)
            var allowed: Set<JWTAlgorithm>
            if let algName = jwk["alg"]?.stringValue {
                guard let alg = JWTAlgorithm(rawValue: algName) else {
                    throw SecurityConfigError("JWK \(kid ?? "(no kid)"): unsupported alg '\(algName)'")
                }
                if let limit = algorithms, !limit.contains(alg) {
                    throw SecurityConfigError("JWK \(kid ?? "(no kid)"): alg \(algName) is not in the configured allow-list")
                }
                allowed = [alg]
            } else {
                allowed = (algorithms ?? JWTAlgorithm.compatible(with: key.kind)).intersection(JWTAlgorithm.compatible(with: key.kind))
            }
            if allowed.isEmpty { throw SecurityConfigError("JWK \(kid ?? "(no kid)"): no allowed algorithm fits a \(key.kind) key") }
            out.append(try JWTKey(id: kid, algorithms: allowed, material: .publicKey(key)))
        }
        return out
    }
}
