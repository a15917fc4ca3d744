import StreamOtterCore
import XCTest

final class FrameEncoderTests: XCTestCase {
    func testHeaderSizes() {
        XCTAssertEqual(FrameEncoder.headerSize(payloadLength: 0, masked: false), 2)
        XCTAssertEqual(FrameEncoder.headerSize(payloadLength: 125, masked: false), 2)
        XCTAssertEqual(FrameEncoder.headerSize(payloadLength: 126, masked: false), 4)
        XCTAssertEqual(FrameEncoder.headerSize(payloadLength: 65535, masked: false), 4)
        XCTAssertEqual(FrameEncoder.headerSize(payloadLength: 65536, masked: false), 10)
        XCTAssertEqual(FrameEncoder.headerSize(payloadLength: 0, masked: true), 6)
        XCTAssertEqual(FrameEncoder.headerSize(payloadLength: 126, masked: true), 8)
        XCTAssertEqual(FrameEncoder.headerSize(payloadLength: 1 << 20, masked: true), 14)
    }

    func testRFCExampleFrames() {
        // RFC 6455 section 5.7.
        XCTAssertEqual(FrameEncoder.frame(.text, bytes("Hello")), hex("81 05 48 65 6c 6c 6f"))
        XCTAssertEqual(FrameEncoder.frame(.text, bytes("Hello"), maskKey: 0x37FA_213D), hex("81 85 37 fa 21 3d 7f 9f 4d 51 58"))
        XCTAssertEqual(FrameEncoder.frame(.text, bytes("Hel"), fin: false), hex("01 03 48 65 6c"))
        XCTAssertEqual(FrameEncoder.frame(.continuation, bytes("lo")), hex("80 02 6c 6f"))
        XCTAssertEqual(FrameEncoder.frame(.ping, bytes("Hello")), hex("89 05 48 65 6c 6c 6f"))
        XCTAssertEqual(Array(FrameEncoder.frame(.binary, [UInt8](repeating: 0, count: 256)).prefix(4)), hex("82 7E 01 00"))
        XCTAssertEqual(Array(FrameEncoder.frame(.binary, [UInt8](repeating: 0, count: 65536)).prefix(10)), hex("82 7F 00 00 00 00 00 01 00 00"))
    }

    func testWriteHeaderInPlace() {
        var buffer = [UInt8](repeating: 0xEE, count: 14)
        let n = buffer.withUnsafeMutableBytes {
            FrameEncoder.writeHeader(into: $0.baseAddress!, opcode: .binary, fin: true, payloadLength: 300, maskKey: 0x0102_0304)
        }
        XCTAssertEqual(n, 8)
        XCTAssertEqual(Array(buffer[..<8]), hex("82 FE 01 2C 01 02 03 04"))
        XCTAssertEqual(buffer[8], 0xEE, "writes nothing past the header")
    }

    func testMaskingRoundTrip() {
        var rng = SplitMix64(seed: 1)
        for length in [0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 64, 100, 1000] {
            let original = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let key = UInt32.random(in: 0...UInt32.max, using: &rng)
            var data = original
            data.withUnsafeMutableBytes { FrameEncoder.applyMask($0, key: key) }
            // Reference: byte i ^ keyBytes[i % 4], key bytes big-endian.
            let keyBytes = [UInt8(key >> 24), UInt8((key >> 16) & 0xFF), UInt8((key >> 8) & 0xFF), UInt8(key & 0xFF)]
            XCTAssertEqual(data, original.enumerated().map { $0.element ^ keyBytes[$0.offset % 4] })
            data.withUnsafeMutableBytes { FrameEncoder.applyMask($0, key: key) }
            XCTAssertEqual(data, original)
        }
    }

    func testMaskingInPiecesWithOffset() {
        let original = (0..<97).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let key: UInt32 = 0xA1B2_C3D4
        var whole = original
        whole.withUnsafeMutableBytes { FrameEncoder.applyMask($0, key: key) }
        for split in 0...original.count {
            var pieces = original
            pieces.withUnsafeMutableBytes { raw in
                FrameEncoder.applyMask(UnsafeMutableRawBufferPointer(rebasing: raw[..<split]), key: key, offset: 0)
                FrameEncoder.applyMask(UnsafeMutableRawBufferPointer(rebasing: raw[split...]), key: key, offset: split)
            }
            XCTAssertEqual(pieces, whole, "split \(split)")
        }
    }

    func testMaskedFrameDecodesBack() throws {
        for length in [0, 5, 125, 126, 65535, 65536, 70000] {
            let payload = (0..<length).map { UInt8(truncatingIfNeeded: $0) }
            let outcome = decode([clientFrame(.binary, payload, key: 0xDEAD_BEEF)], limits: WSLimits(maxFrameSize: 1 << 17, maxMessageSize: 1 << 17))
            XCTAssertEqual(outcome, DecodeOutcome(events: [.binary(payload)]), "length \(length)")
        }
    }

    func testCloseFrame() {
        XCTAssertEqual(FrameEncoder.closeFrame(code: 1000, reason: "bye"), hex("88 05 03 e8 62 79 65"))
        let long = String(repeating: "é", count: 100)  // 200 bytes: cut at a character boundary
        let frame = FrameEncoder.closeFrame(code: 1001, reason: long)
        XCTAssertEqual(Int(frame[1]), 2 + 122)
        let outcome = decode([FrameEncoder.closeFrame(code: 4000, reason: long, maskKey: 1)])
        XCTAssertEqual(outcome.events.count, 1)
        if case .close(let code, let reason)? = outcome.events.first {
            XCTAssertEqual(code, 4000)
            XCTAssertEqual(reason.count, 122)
        } else {
            XCTFail("expected close")
        }
    }
}
