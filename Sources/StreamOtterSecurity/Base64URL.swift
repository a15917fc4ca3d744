/// Base64url without padding (RFC 4648 section 5, as used by JOSE/JWT, RFC 7515 section 2).
///
/// `decode` is strict: only the URL-safe alphabet, no `=` padding, no whitespace, a length
/// that is not 1 mod 4, and zero unused bits in the last symbol (canonical). Anything else
/// returns nil, so one token has exactly one encoding.
public enum Base64URL {
    static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    static let table: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, b) in alphabet.enumerated() { t[Int(b)] = UInt8(i) }
        return t
    }()

    /// Encodes without padding.
    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var acc: UInt32 = 0
        var n = 0
        for b in bytes {
            acc = acc << 8 | UInt32(b)
            n += 1
            if n == 3 {
                out.append(alphabet[Int(acc >> 18 & 63)])
                out.append(alphabet[Int(acc >> 12 & 63)])
                out.append(alphabet[Int(acc >> 6 & 63)])
                out.append(alphabet[Int(acc & 63)])
                acc = 0
                n = 0
            }
        }
        if n == 1 {
            out.append(alphabet[Int(acc >> 2 & 63)])
            out.append(alphabet[Int(acc << 4 & 63)])
        } else if n == 2 {
            out.append(alphabet[Int(acc >> 10 & 63)])
            out.append(alphabet[Int(acc >> 4 & 63)])
            out.append(alphabet[Int(acc << 2 & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Strictly decodes unpadded base64url text; nil when not canonical.
    public static func decode<S: StringProtocol>(_ text: S) -> [UInt8]? {
        decode(bytes: Array(text.utf8))
    }

    /// Strictly decodes unpadded base64url bytes; nil when not canonical.
    public static func decode<C: Collection>(bytes text: C) -> [UInt8]? where C.Element == UInt8 {
        let count = text.count
        if count % 4 == 1 { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(count * 3 / 4)
        var acc: UInt32 = 0
        var n = 0
        for c in text {
            let v = table[Int(c)]
            if v == 0xFF { return nil }
            acc = acc << 6 | UInt32(v)
            n += 1
            if n == 4 {
                out.append(UInt8(acc >> 16 & 0xFF))
                out.append(UInt8(acc >> 8 & 0xFF))
                out.append(UInt8(acc & 0xFF))
                acc = 0
                n = 0
            }
        }
        if n == 2 {
            if acc & 0x0F != 0 { return nil }
            out.append(UInt8(acc >> 4 & 0xFF))
        } else if n == 3 {
            if acc & 0x03 != 0 { return nil }
            out.append(UInt8(acc >> 10 & 0xFF))
            out.append(UInt8(acc >> 2 & 0xFF))
        }
        return out
    }
}
