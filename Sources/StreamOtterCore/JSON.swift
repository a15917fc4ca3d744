/// Strict JSON (RFC 8259) parsing, validation and writing over raw UTF-8 bytes.
///
/// Rules (see `JSONScanner` for the grammar details): one value with optional surrounding
/// whitespace and nothing after it; nesting at most 64 deep; strings valid UTF-8 with valid
/// escapes and paired surrogates; no raw control characters; strict number syntax.
public enum JSON {
    /// Parses exactly one JSON value.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws -> JSONValue {
        var scanner = JSONScanner(bytes)
        let value = try scanner.parseValue()
        scanner.skipWhitespace()
        if !scanner.isAtEnd { throw scanner.error("trailing characters") }
        return value
    }

    /// Parses exactly one JSON value from an array.
    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try bytes.withUnsafeBytes { try parse($0) }
    }

    /// Parses exactly one JSON value from a string.
    public static func parse(_ text: String) throws -> JSONValue {
        var text = text
        return try text.withUTF8 { try parse(UnsafeRawBufferPointer($0)) }
    }

    /// True when `bytes` are exactly one JSON value (optional surrounding whitespace).
    /// Builds no values.
    public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var scanner = JSONScanner(bytes)
        do {
            try scanner.skipValue()
        } catch {
            return false
        }
        scanner.skipWhitespace()
        return scanner.isAtEnd
    }

    /// Appends a JSON string literal with quotes. Escapes `"` and `\` with a backslash and
    /// every control character below 0x20 as `\u00XX`; all other bytes are copied, so `s`
    /// must be valid UTF-8.
    public static func appendString(_ s: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var runStart = 0
        let count = s.count
        var i = 0
        while i < count {
            let c = s[i]
            if c >= 0x20 && c != 0x22 && c != 0x5C {
                i += 1
                continue
            }
            if runStart < i { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: s[runStart..<i])) }
            if c == 0x22 || c == 0x5C {
                out.append(UInt8(ascii: "\\"))
                out.append(c)
            } else {
                let hex: StaticString = "0123456789abcdef"
                out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                        hex.utf8Start[Int(c >> 4)], hex.utf8Start[Int(c & 0x0F)]])
            }
            i += 1
            runStart = i
        }
        if runStart < count { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: s[runStart..<count])) }
        out.append(UInt8(ascii: "\""))
    }

    /// Appends a JSON string literal with quotes; see the raw-bytes overload.
    public static func appendString(_ s: String, to out: inout [UInt8]) {
        var s = s
        s.withUTF8 { appendString(UnsafeRawBufferPointer($0), to: &out) }
    }

    /// Appends `json`, which must be valid JSON, with insignificant whitespace removed.
    /// String contents (including escapes) are copied unchanged.
    public static func appendCompact(_ json: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        let count = json.count
        out.reserveCapacity(out.count + count)
        if !mayContainWhitespace(json) {
            out.append(contentsOf: json)
            return
        }
        var i = 0
        var runStart = 0
        while i < count {
            let c = json[i]
            if c == 0x22 {
                // Skip over the string, honouring escapes.
                i += 1
                while i < count {
                    let d = json[i]
                    if d == 0x5C { i += 2; continue }
                    i += 1
                    if d == 0x22 { break }
                }
                continue
            }
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 {
                if runStart < i { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: json[runStart..<i])) }
                i += 1
                runStart = i
                continue
            }
            i += 1
        }
        let end = min(i, count)
        if runStart < end { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: json[runStart..<end])) }
    }

    /// False when no byte of `bytes` is below 0x21 (so none is JSON whitespace); checked
    /// eight bytes at a time.
    static func mayContainWhitespace(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return false }
        let count = bytes.count
        var i = 0
        while i + 8 <= count {
            let w = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            // A byte below 0x21 sets its high bit in (w - 0x21…) & ~w (the classic has-less-than test).
            if (w &- 0x2121_2121_2121_2121) & ~w & 0x8080_8080_8080_8080 != 0 { return true }
            i += 8
        }
        while i < count {
            if base.load(fromByteOffset: i, as: UInt8.self) < 0x21 { return true }
            i += 1
        }
        return false
    }
}
