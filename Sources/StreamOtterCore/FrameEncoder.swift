/// Writes WebSocket frames (RFC 6455 section 5.2).
///
/// Rules:
/// - Lengths use the shortest form: 7-bit up to 125, 16-bit up to 65535, else 64-bit.
/// - A mask key is the 4 key bytes as they appear on the wire, read big-endian:
///   wire bytes b0 b1 b2 b3 <-> `b0<<24 | b1<<16 | b2<<8 | b3`.
/// - Servers send unmasked frames (`maskKey: nil`); clients must mask every frame.
public enum FrameEncoder {
    /// Header size for a payload of `payloadLength` bytes: 2, 4 or 10, plus 4 if masked.
    @inlinable
    public static func headerSize(payloadLength: Int, masked: Bool) -> Int {
        let base: Int
        if payloadLength <= 125 { base = 2 } else if payloadLength <= 0xFFFF { base = 4 } else { base = 10 }
        return masked ? base + 4 : base
    }

    /// Writes the header at `into` (which must have `headerSize(...)` bytes) and returns
    /// the number of bytes written. The payload itself is not touched.
    @discardableResult
    public static func writeHeader(into: UnsafeMutableRawPointer, opcode: WSOpcode, fin: Bool, payloadLength: Int, maskKey: UInt32?) -> Int {
        precondition(payloadLength >= 0, "negative payload length")
        into.storeBytes(of: (fin ? 0x80 : 0) | opcode.rawValue, toByteOffset: 0, as: UInt8.self)
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        var offset: Int
        if payloadLength <= 125 {
            into.storeBytes(of: maskBit | UInt8(payloadLength), toByteOffset: 1, as: UInt8.self)
            offset = 2
        } else if payloadLength <= 0xFFFF {
            into.storeBytes(of: maskBit | 126, toByteOffset: 1, as: UInt8.self)
            into.storeBytes(of: UInt8(payloadLength >> 8), toByteOffset: 2, as: UInt8.self)
            into.storeBytes(of: UInt8(payloadLength & 0xFF), toByteOffset: 3, as: UInt8.self)
            offset = 4
        } else {
            into.storeBytes(of: maskBit | 127, toByteOffset: 1, as: UInt8.self)
            let length = UInt64(payloadLength)
            for i in 0..<8 {
                into.storeBytes(of: UInt8(truncatingIfNeeded: length >> UInt64(56 - 8 * i)), toByteOffset: 2 + i, as: UInt8.self)
            }
            offset = 10
        }
        if let key = maskKey {
            for i in 0..<4 {
                into.storeBytes(of: UInt8(truncatingIfNeeded: key >> UInt32(24 - 8 * i)), toByteOffset: offset + i, as: UInt8.self)
            }
            offset += 4
        }
        return offset
    }

    /// A whole frame; the payload is masked with `maskKey` when one is given.
    public static func frame(_ opcode: WSOpcode, _ payload: [UInt8], fin: Bool = true, maskKey: UInt32? = nil) -> [UInt8] {
        let header = headerSize(payloadLength: payload.count, masked: maskKey != nil)
        return [UInt8](unsafeUninitializedCapacity: header + payload.count) { out, initialized in
            let raw = UnsafeMutableRawBufferPointer(out)
            let written = writeHeader(into: raw.baseAddress!, opcode: opcode, fin: fin, payloadLength: payload.count, maskKey: maskKey)
            let body = UnsafeMutableRawBufferPointer(rebasing: raw[written...])
            payload.withUnsafeBytes { body.copyMemory(from: $0) }
            if let key = maskKey { applyMask(body, key: key) }
            initialized = written + payload.count
        }
    }

    /// A close frame with `code` and `reason`. The reason is cut to 123 bytes at a UTF-8
    /// character boundary so that the control frame payload stays within 125 bytes.
    public static func closeFrame(code: UInt16, reason: String, maskKey: UInt32? = nil) -> [UInt8] {
        var payload: [UInt8] = [UInt8(code >> 8), UInt8(code & 0xFF)]
        var reasonBytes = Array(reason.utf8)
        if reasonBytes.count > 123 {
            var cut = 123
            while cut > 0 && reasonBytes[cut] & 0xC0 == 0x80 { cut -= 1 }
            reasonBytes.removeSubrange(cut...)
        }
        payload.append(contentsOf: reasonBytes)
        return frame(.close, payload, fin: true, maskKey: maskKey)
    }

    /// XORs `buf` in place with the mask: byte i ^= keyByte[(i + offset) % 4], key bytes in
    /// wire order. Applying it twice restores the input. `offset` continues a mask over a
    /// payload processed in pieces.
    public static func applyMask(_ buf: UnsafeMutableRawBufferPointer, key: UInt32, offset: Int = 0) {
        guard let base = buf.baseAddress, buf.count > 0 else { return }
        let count = buf.count
        // Key bytes rotated so that position 0 of `buf` uses rotated[0].
        let shift = UInt32((offset & 3) * 8)
        let rotated = shift == 0 ? key : (key << shift | key >> (32 - shift))
        var i = 0
        if count >= 16 {
            // Word of the rotated key bytes repeated twice, laid out in memory order.
            var word: UInt64 = 0
            withUnsafeMutableBytes(of: &word) { w in
                for j in 0..<8 { w[j] = UInt8(truncatingIfNeeded: rotated >> UInt32(24 - 8 * (j & 3))) }
            }
            while i + 8 <= count {
                let v = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                base.storeBytes(of: v ^ word, toByteOffset: i, as: UInt64.self)
                i += 8
            }
        }
        while i < count {
            let keyByte = UInt8(truncatingIfNeeded: rotated >> UInt32(24 - 8 * (i & 3)))
            base.storeBytes(of: base.load(fromByteOffset: i, as: UInt8.self) ^ keyByte, toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }
}
