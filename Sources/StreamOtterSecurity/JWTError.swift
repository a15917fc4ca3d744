/// Why a token was refused. `reason` is a short stable code for logs, audit lines and the
/// C ABI; it never contains token text.
public enum JWTError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Not three base64url parts, bad base64url, header/payload not a JSON object, too long,
    /// or a `crit` header.
    case malformed
    /// The header or the payload names one member twice, in any object (RFC 7519 section 4,
    /// RFC 7515 section 4: names must be unique; other parsers take the last one, so the
    /// token would mean different things to different readers).
    case duplicateMember
    /// The `alg` is `none`, unknown, or not allowed for the selected key(s).
    case algorithmNotAllowed
    /// The token's `kid` matches no configured key, or no key exists for its algorithm.
    case unknownKey
    /// Empty, wrongly sized or wrong signature.
    case badSignature
    /// `exp` is in the past (beyond the leeway).
    case expired
    /// `nbf` is in the future (beyond the leeway).
    case notYetValid
    /// `exp` is required but missing.
    case missingExpiry
    /// A registered claim has the wrong type or value (`exp`/`nbf`/`iat` not a number from 0
    /// to `NumericDate.latest`, `iss` not a string, `aud` not a string or array of strings).
    case invalidClaim
    /// `iss` is not the configured issuer.
    case issuerMismatch
    /// `aud` names none of the configured audiences.
    case audienceMismatch

    /// A short stable code: `malformed`, `duplicate_member`, `algorithm_not_allowed`,
    /// `unknown_key`, `bad_signature`, `expired`, `not_yet_valid`, `missing_expiry`,
    /// `invalid_claim`, `issuer_mismatch`, `audience_mismatch`.
    public var reason: String {
        switch self {
        case .malformed: return "malformed"
        case .duplicateMember: return "duplicate_member"
        case .algorithmNotAllowed: return "algorithm_not_allowed"
        case .unknownKey: return "unknown_key"
        case .badSignature: return "bad_signature"
        case .expired: return "expired"
        case .notYetValid: return "not_yet_valid"
        case .missingExpiry: return "missing_expiry"
        case .invalidClaim: return "invalid_claim"
        case .issuerMismatch: return "issuer_mismatch"
        case .audienceMismatch: return "audience_mismatch"
        }
    }

    public var description: String { "JWT refused: \(reason)" }
}
