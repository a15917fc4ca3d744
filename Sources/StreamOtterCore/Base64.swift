/// Standard Base64 (RFC 4648 section 4, alphabet `A-Z a-z 0-9 + /`, `=` padding).
///
/// Rules:
/// - `encode` always pads to a multiple of 4 characters.
/// - `decode` is strict: the length must be a multiple of 4, padding only at the end
///   (at most two `=`), no whitespace, and the unused bits of the last symbol must be zero
///   (canonical encoding). Anything else returns nil.
public enum Base64 {
    @usableFromInline
    static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// 0...63 for alphabet bytes, 0xFF otherwise.
    @usableFromInline
    static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    /// Encodes `bytes` as padded Base64 text.
    public static func encode(_ bytes: UnsafeRawBufferPointer) -> String {
        let count = bytes.count
        if count == 0 { return "" }
        let outCount = ((count + 2) / 3) * 4
        return String(unsafeUninitializedCapacity: outCount) { out in
            alphabet.withUnsafeBufferPointer { table in
                var i = 0
                var o = 0
                while i + 3 <= count {
                    let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                    out[o] = table[Int(v >> 18)]
                    out[o + 1] = table[Int((v >> 12) & 63)]
                    out[o + 2] = table[Int((v >> 6) & 63)]
                    out[o + 3] = table[Int(v & 63)]
                    i += 3
                    o += 4
                }
                let rest = count - i
                if rest == 1 {
                    let v = UInt32(bytes[i]) << 16
                    out[o] = table[Int(v >> 18)]
                    out[o + 1] = table[Int((v >> 12) & 63)]
                    out[o + 2] = UInt8(ascii: "=")
                    out[o + 3] = UInt8(ascii: "=")
                    o += 4
                } else if rest == 2 {
                    let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
                    out[o] = table[Int(v >> 18)]
                    out[o + 1] = table[Int((v >> 12) & 63)]
                    out[o + 2] = table[Int((v >> 6) & 63)]
                    out[o + 3] = UInt8(ascii: "=")
                    o += 4
                }
                return o
            }
        }
    }

    /// Encodes `bytes` as padded Base64 text.
    public static func encode(_ bytes: [UInt8]) -> String {
        bytes.withUnsafeBytes { encode($0) }
    }

    /// Appends the padded Base64 text of `bytes` to `out` (no quotes).
    public static func append(_ bytes: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        out.append(contentsOf: encode(bytes).utf8)
    }

    /// Strictly decodes padded Base64 text; nil when `s` is not canonical Base64.
    public static func decode(_ s: String) -> [UInt8]? {
        var s = s
        return s.withUTF8 { decode(UnsafeRawBufferPointer($0)) }
    }

    /// Strictly decodes padded Base64 bytes; nil when not canonical Base64.
    public static func decode(_ text: UnsafeRawBufferPointer) -> [UInt8]? {
        let count = text.count
        if count == 0 { return [] }
        if count % 4 != 0 { return nil }
        var padding = 0
        if text[count - 1] == UInt8(ascii: "=") {
            padding = 1
            if text[count - 2] == UInt8(ascii: "=") { padding = 2 }
        }
        var out = [UInt8]()
        out.reserveCapacity(count / 4 * 3 - padding)
        let ok: Bool = decodeTable.withUnsafeBufferPointer { table in
            var i = 0
            while i < count {
                let lastGroup = i + 4 == count
                let a = table[Int(text[i])]
                let b = table[Int(text[i + 1])]
                if a == 0xFF || b == 0xFF { return false }
                if lastGroup && padding > 0 {
                    if padding == 2 {
                        if b & 0x0F != 0 { return false }
                        out.append(a << 2 | b >> 4)
                    } else {
                        let c = table[Int(text[i + 2])]
                        if c == 0xFF || c & 0x03 != 0 { return false }
                        out.append(a << 2 | b >> 4)
                        out.append(b << 4 | c >> 2)
                    }
                } else {
                    let c = table[Int(text[i + 2])]
                    let d = table[Int(text[i + 3])]
                    if c == 0xFF || d == 0xFF { return false }
                    out.append(a << 2 | b >> 4)
                    out.append(b << 4 | c >> 2)
                    out.append(c << 6 | d)
                }
                i += 4
            }
            return true
        }
        return ok ? out : nil
    }
}
