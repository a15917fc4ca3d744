/// Streaming UTF-8 validator (RFC 3629, Unicode Table 3-7 "well-formed byte sequences").
///
/// Rules:
/// - Sequences may be split across `feed` calls; the validator remembers how many
///   continuation bytes are still owed and the allowed range of the next one.
/// - Rejects overlong forms (C0, C1, E0 80..9F, F0 80..8F), UTF-16 surrogates (ED A0..BF),
///   code points above U+10FFFF (F4 90.., F5..FF) and stray or missing continuation bytes.
/// - Once invalid, every later `feed` returns false until `reset()`.
/// - A complete message is valid when every `feed` returned true and `isAtBoundary` is true.
public struct UTF8Validator: Sendable {
    /// Continuation bytes still expected for the current sequence.
    private var pending: UInt8 = 0
    /// Allowed range for the next continuation byte (narrower than 80...BF only right after
    /// E0, ED, F0 and F4 lead bytes).
    private var nextLow: UInt8 = 0x80
    private var nextHigh: UInt8 = 0xBF
    private var failed = false

    public init() {}

    /// True when no multi-byte sequence is partially fed.
    public var isAtBoundary: Bool { pending == 0 && !failed }

    /// Forgets all state, ready for a new message.
    public mutating func reset() {
        pending = 0
        nextLow = 0x80
        nextHigh = 0xBF
        failed = false
    }

    /// Validates the next chunk; false when the input so far is not a prefix of valid UTF-8.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if failed { return false }
        guard let base = bytes.baseAddress else { return true }
        let count = bytes.count
        var i = 0
        var pending = self.pending
        var low = nextLow
        var high = nextHigh
        while i < count {
            if pending == 0 {
                // ASCII fast path: eight bytes at a time.
                while i + 8 <= count {
                    let word = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                    if word & 0x8080_8080_8080_8080 != 0 { break }
                    i += 8
                }
                if i >= count { break }
                let lead = base.load(fromByteOffset: i, as: UInt8.self)
                i += 1
                if lead < 0x80 { continue }
                low = 0x80
                high = 0xBF
                switch lead {
                case 0xC2...0xDF: pending = 1
                case 0xE0: pending = 2; low = 0xA0
                case 0xE1...0xEC, 0xEE...0xEF: pending = 2
                case 0xED: pending = 2; high = 0x9F
                case 0xF0: pending = 3; low = 0x90
                case 0xF1...0xF3: pending = 3
                case 0xF4: pending = 3; high = 0x8F
                default:
                    failed = true
                    return false
                }
            } else {
                let byte = base.load(fromByteOffset: i, as: UInt8.self)
                i += 1
                if byte < low || byte > high {
                    failed = true
                    return false
                }
                low = 0x80
                high = 0xBF
                pending -= 1
            }
        }
        self.pending = pending
        nextLow = low
        nextHigh = high
        return true
    }

    /// True when `bytes` is complete, valid UTF-8.
    public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var validator = UTF8Validator()
        return validator.feed(bytes) && validator.isAtBoundary
    }
}
