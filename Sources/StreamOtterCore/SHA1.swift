/// SHA-1 (FIPS 180-4). Used only for the WebSocket handshake accept key, where RFC 6455
/// mandates it; not for anything security sensitive.
public enum SHA1 {
    /// The 20-byte digest of `bytes`.
    public static func hash(_ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { hash($0) }
    }

    /// The 20-byte digest of `bytes`.
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var h0: UInt32 = 0x6745_2301
        var h1: UInt32 = 0xEFCD_AB89
        var h2: UInt32 = 0x98BA_DCFE
        var h3: UInt32 = 0x1032_5476
        var h4: UInt32 = 0xC3D2_E1F0

        var w = [UInt32](repeating: 0, count: 80)
        let count = bytes.count
        // Message plus 0x80, zero padding and the 64-bit bit length, in 64-byte blocks.
        let totalBlocks = (count + 8) / 64 + 1
        let bitLength = UInt64(count) &* 8

        @inline(__always)
        func byte(_ index: Int) -> UInt8 {
            if index < count { return bytes[index] }
            if index == count { return 0x80 }
            let fromEnd = totalBlocks * 64 - index  // 1...8 for the length field
            if fromEnd <= 8 { return UInt8(truncatingIfNeeded: bitLength >> (UInt64(fromEnd - 1) * 8)) }
            return 0
        }

        w.withUnsafeMutableBufferPointer { w in
            for block in 0..<totalBlocks {
                let base = block * 64
                for t in 0..<16 {
                    let p = base + t * 4
                    if p + 4 <= count {
                        w[t] = UInt32(bytes[p]) << 24 | UInt32(bytes[p + 1]) << 16 | UInt32(bytes[p + 2]) << 8 | UInt32(bytes[p + 3])
                    } else {
                        w[t] = UInt32(byte(p)) << 24 | UInt32(byte(p + 1)) << 16 | UInt32(byte(p + 2)) << 8 | UInt32(byte(p + 3))
                    }
                }
                for t in 16..<80 {
                    let x = w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]
                    w[t] = x << 1 | x >> 31
                }
                var a = h0, b = h1, c = h2, d = h3, e = h4
                for t in 0..<80 {
                    let f: UInt32
                    let k: UInt32
                    switch t {
                    case 0..<20: f = (b & c) | (~b & d); k = 0x5A82_7999
                    case 20..<40: f = b ^ c ^ d; k = 0x6ED9_EBA1
                    case 40..<60: f = (b & c) | (b & d) | (c & d); k = 0x8F1B_BCDC
                    default: f = b ^ c ^ d; k = 0xCA62_C1D6
                    }
                    let temp = (a << 5 | a >> 27) &+ f &+ e &+ k &+ w[t]
                    e = d
                    d = c
                    c = b << 30 | b >> 2
                    b = a
                    a = temp
                }
                h0 = h0 &+ a
                h1 = h1 &+ b
                h2 = h2 &+ c
                h3 = h3 &+ d
                h4 = h4 &+ e
            }
        }
        var digest = [UInt8]()
        digest.reserveCapacity(20)
        for h in [h0, h1, h2, h3, h4] {
            digest.append(UInt8(truncatingIfNeeded: h >> 24))
            digest.append(UInt8(truncatingIfNeeded: h >> 16))
            digest.append(UInt8(truncatingIfNeeded: h >> 8))
            digest.append(UInt8(truncatingIfNeeded: h))
        }
        return digest
    }
}
