/// Strict RFC 8259 scanner over raw bytes, shared by `JSON` and `ProtocolParser`.
///
/// Rules:
/// - Nesting deeper than `JSONScanner.maxDepth` arrays/objects is rejected.
/// - Strings must be valid UTF-8 with no raw control characters (< 0x20); escapes are the
///   RFC set; `\u` surrogates must form a high+low pair.
/// - Numbers: `-? (0 | [1-9][0-9]*) (\.[0-9]+)? ([eE][+-]?[0-9]+)?`; no NaN, Infinity,
///   leading `+` or leading zeros.
/// - Whitespace is exactly space, tab, LF, CR.
struct JSONScanner {
    static let maxDepth = 64

    let bytes: UnsafeRawBufferPointer
    var index: Int = 0

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    var isAtEnd: Bool { index >= bytes.count }

    @inline(__always)
    func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    func error(_ message: String) -> JSONError { JSONError(message: message, offset: index) }

    @inline(__always)
    mutating func skipWhitespace() {
        while index < bytes.count {
            let c = bytes[index]
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { index += 1 } else { return }
        }
    }

    mutating func expect(_ c: UInt8) throws {
        guard index < bytes.count, bytes[index] == c else {
            throw error("expected '\(Character(Unicode.Scalar(c)))'")
        }
        index += 1
    }

    mutating func literal(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard index + n <= bytes.count else { throw error("invalid literal") }
        let p = word.utf8Start
        for i in 0..<n where bytes[index + i] != p[i] { throw error("invalid literal") }
        index += n
    }

    // MARK: Validation without building values

    /// Skips one value (whitespace before it is skipped too), validating it.
    mutating func skipValue(depth: Int = 0) throws {
        skipWhitespace()
        guard let c = peek() else { throw error("unexpected end of input") }
        switch c {
        case UInt8(ascii: "{"):
            if depth >= JSONScanner.maxDepth { throw error("nesting too deep") }
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "}") { index += 1; return }
            while true {
                skipWhitespace()
                guard peek() == UInt8(ascii: "\"") else { throw error("expected string key") }
                try scanString(into: nil)
                skipWhitespace()
                try expect(UInt8(ascii: ":"))
                try skipValue(depth: depth + 1)
                skipWhitespace()
                guard let d = peek() else { throw error("unterminated object") }
                index += 1
                if d == UInt8(ascii: "}") { return }
                if d != UInt8(ascii: ",") { index -= 1; throw error("expected ',' or '}'") }
            }
        case UInt8(ascii: "["):
            if depth >= JSONScanner.maxDepth { throw error("nesting too deep") }
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "]") { index += 1; return }
            while true {
                try skipValue(depth: depth + 1)
                skipWhitespace()
                guard let d = peek() else { throw error("unterminated array") }
                index += 1
                if d == UInt8(ascii: "]") { return }
                if d != UInt8(ascii: ",") { index -= 1; throw error("expected ',' or ']'") }
            }
        case UInt8(ascii: "\""):
            try scanString(into: nil)
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        default:
            _ = try scanNumber()
        }
    }

    /// Scans a number at `index`; returns its byte range.
    mutating func scanNumber() throws -> Range<Int> {
        let start = index
        let count = bytes.count
        if index < count && bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < count else { throw error("invalid number") }
        let first = bytes[index]
        if first == UInt8(ascii: "0") {
            index += 1
        } else if first >= UInt8(ascii: "1") && first <= UInt8(ascii: "9") {
            index += 1
            while index < count && isDigit(bytes[index]) { index += 1 }
        } else {
            throw error(start == index ? "unexpected character" : "invalid number")
        }
        if index < count && bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard index < count && isDigit(bytes[index]) else { throw error("invalid number fraction") }
            while index < count && isDigit(bytes[index]) { index += 1 }
        }
        if index < count && (bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E")) {
            index += 1
            if index < count && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) { index += 1 }
            guard index < count && isDigit(bytes[index]) else { throw error("invalid number exponent") }
            while index < count && isDigit(bytes[index]) { index += 1 }
        }
        return start..<index
    }

    @inline(__always)
    func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

    @inline(__always)
    func hexValue(_ c: UInt8) -> UInt32? {
        switch c {
        case 0x30...0x39: return UInt32(c - 0x30)
        case 0x41...0x46: return UInt32(c - 0x41 + 10)
        case 0x61...0x66: return UInt32(c - 0x61 + 10)
        default: return nil
        }
    }

    mutating func scanHex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for i in 0..<4 {
            guard let h = hexValue(bytes[index + i]) else { throw error("invalid \\u escape") }
            v = v << 4 | h
        }
        index += 4
        return v
    }

    /// Scans a string starting at the opening quote. When `out` is given, the decoded UTF-8
    /// bytes are appended to it. Validates UTF-8, control characters and escapes. Returns
    /// true when the string had no escape (its decoded bytes are then exactly the bytes
    /// between the quotes).
    @discardableResult
    mutating func scanString(into out: UnsafeMutablePointer<[UInt8]>?) throws -> Bool {
        index += 1  // opening quote
        let count = bytes.count
        var utf8 = UTF8Validator()
        var runStart = index
        var runASCII = true
        var escaped = false
        let base = bytes.baseAddress
        while true {
            // Fast path: printable ASCII other than the quote and the backslash, eight
            // bytes at a time, then byte by byte.
            if let base {
                while index + 8 <= count {
                    let w = base.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                    if JSONScanner.hasSpecialByte(w) { break }
                    index += 8
                }
            }
            while index < count {
                let c = bytes[index]
                if c >= 0x20 && c < 0x80 && c != 0x22 && c != 0x5C { index += 1 } else { break }
            }
            guard index < count else { throw error("unterminated string") }
            let c = bytes[index]
            if c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") {
                let run = UnsafeRawBufferPointer(rebasing: bytes[runStart..<index])
                if !runASCII {
                    if !utf8.feed(run) || !utf8.isAtBoundary { throw error("invalid UTF-8 in string") }
                    runASCII = true
                }
                out?.pointee.append(contentsOf: run)
                if c == UInt8(ascii: "\"") {
                    index += 1
                    return !escaped
                }
                escaped = true
                index += 1
                guard index < count else { throw error("unterminated escape") }
                let e = bytes[index]
                index += 1
                var decoded: UInt8 = 0
                switch e {
                case UInt8(ascii: "\""): decoded = 0x22
                case UInt8(ascii: "\\"): decoded = 0x5C
                case UInt8(ascii: "/"): decoded = 0x2F
                case UInt8(ascii: "b"): decoded = 0x08
                case UInt8(ascii: "f"): decoded = 0x0C
                case UInt8(ascii: "n"): decoded = 0x0A
                case UInt8(ascii: "r"): decoded = 0x0D
                case UInt8(ascii: "t"): decoded = 0x09
                case UInt8(ascii: "u"):
                    var scalar = try scanHex4()
                    if scalar >= 0xD800 && scalar <= 0xDBFF {
                        guard index + 2 <= count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                            throw error("lone high surrogate")
                        }
                        index += 2
                        let low = try scanHex4()
                        guard low >= 0xDC00 && low <= 0xDFFF else { throw error("invalid low surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                        throw error("lone low surrogate")
                    }
                    if let out = out {
                        let s = Unicode.Scalar(scalar)!
                        out.pointee.append(contentsOf: UTF8.encode(s)!)
                    }
                    runStart = index
                    continue
                default:
                    index -= 1
                    throw error("invalid escape")
                }
                out?.pointee.append(decoded)
                runStart = index
            } else if c < 0x20 {
                throw error("control character in string")
            } else {
                // Non-ASCII: validated as UTF-8 with the rest of the run.
                runASCII = false
                index += 1
            }
        }
    }

    /// True when a byte of `w` is below 0x20, at or above 0x80, a quote or a backslash
    /// (may also be true for a word without one, never false for a word with one).
    @inline(__always)
    static func hasSpecialByte(_ w: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        let control = (w &- ones &* 0x20) & ~w & highs           // bytes < 0x20
        let q = w ^ (ones &* 0x22)
        let quote = (q &- ones) & ~q & highs                      // bytes == '"'
        let b = w ^ (ones &* 0x5C)
        let backslash = (b &- ones) & ~b & highs                  // bytes == '\\'
        return (control | quote | backslash | (w & highs)) != 0
    }

    // MARK: Building values

    /// Parses one value (whitespace before it is skipped).
    mutating func parseValue(depth: Int = 0) throws -> JSONValue {
        skipWhitespace()
        guard let c = peek() else { throw error("unexpected end of input") }
        switch c {
        case UInt8(ascii: "{"):
            if depth >= JSONScanner.maxDepth { throw error("nesting too deep") }
            index += 1
            var members: [(String, JSONValue)] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "}") { index += 1; return .object(members) }
            while true {
                skipWhitespace()
                guard peek() == UInt8(ascii: "\"") else { throw error("expected string key") }
                let key = try parseString()
                skipWhitespace()
                try expect(UInt8(ascii: ":"))
                let value = try parseValue(depth: depth + 1)
                members.append((key, value))
                skipWhitespace()
                guard let d = peek() else { throw error("unterminated object") }
                index += 1
                if d == UInt8(ascii: "}") { return .object(members) }
                if d != UInt8(ascii: ",") { index -= 1; throw error("expected ',' or '}'") }
            }
        case UInt8(ascii: "["):
            if depth >= JSONScanner.maxDepth { throw error("nesting too deep") }
            index += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "]") { index += 1; return .array(items) }
            while true {
                items.append(try parseValue(depth: depth + 1))
                skipWhitespace()
                guard let d = peek() else { throw error("unterminated array") }
                index += 1
                if d == UInt8(ascii: "]") { return .array(items) }
                if d != UInt8(ascii: ",") { index -= 1; throw error("expected ',' or ']'") }
            }
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        default:
            let range = try scanNumber()
            return .number(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self))
        }
    }

    /// Parses a string at the opening quote into a Swift String.
    mutating func parseString() throws -> String {
        let start = index
        if try scanString(into: nil) {
            // No escape: the bytes between the quotes are the string.
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(start + 1)..<(index - 1)]), as: UTF8.self)
        }
        index = start
        var decoded: [UInt8] = []
        try withUnsafeMutablePointer(to: &decoded) { _ = try scanString(into: $0) }
        return String(decoding: decoded, as: UTF8.self)
    }

    /// Scans a string at the opening quote; returns the byte range between the quotes when
    /// the string has no escape, else nil (the string is then validated and skipped).
    mutating func scanPlainString() throws -> Range<Int>? {
        let start = index
        return try scanString(into: nil) ? (start + 1)..<(index - 1) : nil
    }
}
