/// Minimal DER (X.690) encoding and decoding for what JOSE needs: SubjectPublicKeyInfo for
/// JWK import/export and ECDSA-Sig-Value for the JOSE r||s <-> DER conversion.
enum DER {
    static let oidRSAEncryption: [UInt8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01]
    static let oidRSAPSS: [UInt8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0A]
    static let oidECPublicKey: [UInt8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01]
    static let oidP256: [UInt8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07]
    static let oidP384: [UInt8] = [0x2B, 0x81, 0x04, 0x00, 0x22]
    static let oidP521: [UInt8] = [0x2B, 0x81, 0x04, 0x00, 0x23]
    static let oidEd25519: [UInt8] = [0x2B, 0x65, 0x70]

    static func length(_ n: Int) -> [UInt8] {
        if n < 0x80 { return [UInt8(n)] }
        var bytes: [UInt8] = []
        var v = n
        while v > 0 { bytes.insert(UInt8(v & 0xFF), at: 0); v >>= 8 }
        return [0x80 | UInt8(bytes.count)] + bytes
    }

    static func tlv(_ tag: UInt8, _ content: [UInt8]) -> [UInt8] {
        [tag] + length(content.count) + content
    }

    static func sequence(_ parts: [UInt8]...) -> [UInt8] { tlv(0x30, parts.flatMap { $0 }) }
    static func oid(_ v: [UInt8]) -> [UInt8] { tlv(0x06, v) }
    static let null: [UInt8] = [0x05, 0x00]
    static func bitString(_ v: [UInt8]) -> [UInt8] { tlv(0x03, [0] + v) }

    /// A non-negative INTEGER from big-endian unsigned bytes (leading zeros stripped, a zero
    /// byte added when the high bit is set).
    static func unsignedInteger(_ v: [UInt8]) -> [UInt8] {
        var s = v[...]
        while s.count > 1, s.first == 0 { s = s.dropFirst() }
        if s.isEmpty { s = [0] }
        var c = Array(s)
        if c[0] & 0x80 != 0 { c.insert(0, at: 0) }
        return tlv(0x02, c)
    }

    /// A reader over DER bytes.
    struct Reader {
        let bytes: [UInt8]
        var pos: Int

        init(_ bytes: [UInt8]) { self.bytes = bytes; self.pos = 0 }

        var isAtEnd: Bool { pos >= bytes.count }

        /// Reads one TLV; returns (tag, content).
        mutating func read() -> (UInt8, [UInt8])? {
            guard pos + 2 <= bytes.count else { return nil }
            let tag = bytes[pos]
            var len = Int(bytes[pos + 1])
            pos += 2
            if len & 0x80 != 0 {
                let n = len & 0x7F
                guard n >= 1, n <= 3, pos + n <= bytes.count else { return nil }
                len = 0
                for i in 0..<n { len = len << 8 | Int(bytes[pos + i]) }
                pos += n
            }
            guard len >= 0, pos + len <= bytes.count else { return nil }
            let content = Array(bytes[pos..<(pos + len)])
            pos += len
            return (tag, content)
        }

        mutating func expect(_ tag: UInt8) -> [UInt8]? {
            guard let (t, c) = read(), t == tag else { return nil }
            return c
        }
    }

    /// Unsigned big-endian magnitude of a DER INTEGER's content (leading zeros dropped).
    static func magnitude(_ content: [UInt8]) -> [UInt8] {
        var s = content[...]
        while s.count > 1, s.first == 0 { s = s.dropFirst() }
        return Array(s)
    }

    /// JOSE ECDSA signature (r||s, each `size` bytes) -> DER ECDSA-Sig-Value.
    static func ecdsaSignature(fromJOSE sig: [UInt8], size: Int) -> [UInt8]? {
        guard sig.count == 2 * size else { return nil }
        return sequence(unsignedInteger(Array(sig[0..<size])), unsignedInteger(Array(sig[size...])))
    }

    /// DER ECDSA-Sig-Value -> JOSE r||s with each part left-padded to `size` bytes.
    static func joseSignature(fromDER der: [UInt8], size: Int) -> [UInt8]? {
        var outer = Reader(der)
        guard let seq = outer.expect(0x30), outer.isAtEnd else { return nil }
        var inner = Reader(seq)
        guard let r = inner.expect(0x02), let s = inner.expect(0x02), inner.isAtEnd else { return nil }
        let rm = magnitude(r), sm = magnitude(s)
        guard rm.count <= size, sm.count <= size else { return nil }
        return [UInt8](repeating: 0, count: size - rm.count) + rm + [UInt8](repeating: 0, count: size - sm.count) + sm
    }
}
