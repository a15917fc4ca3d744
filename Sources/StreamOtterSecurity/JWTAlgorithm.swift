import COpenSSL

/// JWS algorithms the verifier supports (RFC 7518, RFC 8037). `none` is not one of them:
/// a token with `"alg":"none"` is always refused.
public enum JWTAlgorithm: String, CaseIterable, Sendable, Hashable {
    case hs256 = "HS256", hs384 = "HS384", hs512 = "HS512"
    case rs256 = "RS256", rs384 = "RS384", rs512 = "RS512"
    case ps256 = "PS256"
    case es256 = "ES256", es384 = "ES384"
    case edDSA = "EdDSA"

    /// True for the HMAC algorithms (HS*), which need a shared secret.
    public var isHMAC: Bool { self == .hs256 || self == .hs384 || self == .hs512 }

    /// Minimum HMAC secret length in bytes (RFC 7518 section 3.2: at least the hash size).
    public var minimumSecretBytes: Int {
        switch self {
        case .hs384: return 48
        case .hs512: return 64
        default: return 32
        }
    }

    /// True when a public key of `kind` may be used with this algorithm.
    public func accepts(_ kind: PublicKeyKind) -> Bool {
        switch (self, kind) {
        case (.rs256, .rsa), (.rs384, .rsa), (.rs512, .rsa), (.ps256, .rsa): return true
        case (.es256, .p256), (.es384, .p384), (.edDSA, .ed25519): return true
        default: return false
        }
    }

    /// The algorithms usable with a key of `kind`.
    public static func compatible(with kind: PublicKeyKind) -> Set<JWTAlgorithm> {
        Set(allCases.filter { $0.accepts(kind) })
    }

    var digest: OpaquePointer? {
        switch self {
        case .hs256, .rs256, .ps256, .es256: return EVP_sha256()
        case .hs384, .rs384, .es384: return EVP_sha384()
        case .hs512, .rs512: return EVP_sha512()
        case .edDSA: return nil
        }
    }

    /// Coordinate size for ECDSA signatures (r and s each).
    var ecCoordinateSize: Int? {
        switch self {
        case .es256: return 32
        case .es384: return 48
        default: return nil
        }
    }
}
