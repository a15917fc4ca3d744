import StreamOtterCore

/// NumericDate values (RFC 7519 section 2): seconds since the epoch, as a JWT's `exp`,
/// `nbf` and `iat` and an introspection answer's `exp` carry them.
///
/// A claim is a number chosen by whoever made the token (or answered the introspection), so
/// only a bounded range is accepted: from 0 to `latest`, fractions allowed. Any NumericDate
/// in that range converts to milliseconds in an `Int64` with room to spare; a value outside
/// it (negative, `1e16`, `1e400`, which `Double` reads as infinity) is refused by the caller
/// instead of reaching an integer conversion that would trap.
public enum NumericDate {
    /// The latest accepted NumericDate: 9999-12-31T23:59:59Z.
    public static let latest: Double = 253_402_300_799

    /// The seconds of `value` when it is a JSON number from 0 to `latest`; nil for anything
    /// else (another type, not finite, negative, later than `latest`).
    public static func seconds(_ value: JSONValue) -> Double? {
        guard case .number(let text) = value, let d = Double(text), d.isFinite, d >= 0, d <= latest else { return nil }
        return d
    }

    /// Milliseconds since the epoch for `seconds`, clamped to 0...`latest` x 1000 (NaN
    /// gives 0): never traps, whatever the value.
    public static func milliseconds(_ seconds: Double) -> Int64 {
        let ms = seconds * 1000
        guard ms > 0 else { return 0 }
        return ms < latest * 1000 ? Int64(ms) : Int64(latest) * 1000
    }
}
