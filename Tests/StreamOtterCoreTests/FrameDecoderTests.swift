import StreamOtterCore
import XCTest

final class FrameDecoderTests: XCTestCase {
    private let serverLimits = WSLimits()

    private func assertError(_ stream: [UInt8], _ code: UInt16, limits: WSLimits = WSLimits(), file: StaticString = #filePath, line: UInt = #line) {
        let outcome = assertSplitInvariant(stream, limits: limits, file: file, line: line)
        XCTAssertEqual(outcome.error?.closeCode, code, "\(outcome)", file: file, line: line)
    }

    // MARK: Split points

    func testEverySplitPointOfSeveralFrames() {
        var stream: [UInt8] = []
        stream += clientFrame(.text, bytes("Hello"))
        stream += clientFrame(.binary, [0, 1, 2, 3, 255])
        stream += clientFrame(.ping, bytes("p"))
        stream += clientFrame(.text, bytes("frag"), fin: false)
        stream += clientFrame(.pong, [])
        stream += clientFrame(.continuation, bytes("mént"), fin: true)
        stream += clientFrame(.binary, [UInt8](repeating: 9, count: 300))
        stream += clientFrame(.close, [0x03, 0xE8] + bytes("done"))
        let outcome = assertSplitInvariant(stream)
        XCTAssertNil(outcome.error)
        XCTAssertEqual(outcome.events, [
            .text(bytes("Hello")), .binary([0, 1, 2, 3, 255]), .ping(bytes("p")), .pong([]),
            .text(bytes("fragmént")), .binary([UInt8](repeating: 9, count: 300)),
            .close(code: 1000, reason: bytes("done")),
        ])
    }

    func testServerSideUnmaskedFramesWhenNotRequiringMask() {
        let limits = WSLimits(requireMasked: false)
        let stream = FrameEncoder.frame(.text, bytes("hi")) + FrameEncoder.frame(.binary, [1, 2])
        XCTAssertEqual(assertSplitInvariant(stream, limits: limits).events, [.text(bytes("hi")), .binary([1, 2])])
        assertError(FrameEncoder.frame(.text, bytes("hi"), maskKey: 5), 1002, limits: limits)
    }

    // MARK: Exact hex inputs (mask key 00000000)

    func testTwoFragmentTextSplitAfterThirdByte() {
        // "æøæ" minus... : c3 a6 c3 b8 c3 a5 c3 a6, first fragment ends inside a sequence.
        let stream = hex("01 83 00000000 c3 a6 c3") + hex("80 85 00000000 b8 c3 a5 c3 a6")
        let outcome = assertSplitInvariant(stream)
        XCTAssertEqual(outcome, DecodeOutcome(events: [.text(hex("c3 a6 c3 b8 c3 a5 c3 a6"))]))
        if case .text(let message)? = outcome.events.first { XCTAssertEqual(message.count, 8) }
    }

    func testUTF8SplitAcrossFragmentsAndAppendCalls() {
        // 4-byte sequence F0 9D 84 9E split 1/2/1 over three fragments.
        let stream = hex("01 82 00000000 61 f0") + hex("00 82 00000000 9d 84") + hex("80 82 00000000 9e 62")
        // assertSplitInvariant feeds byte by byte and at every two-part split.
        let outcome = assertSplitInvariant(stream)
        XCTAssertEqual(outcome, DecodeOutcome(events: [.text(bytes("a𝄞b"))]))
        // Three appends cutting through both a header and a sequence.
        XCTAssertEqual(decode([Array(stream[0..<7]), Array(stream[7..<15]), Array(stream[15...])]), outcome)
    }

    func testContinuationWithoutMessageIs1002() {
        assertError(hex("80 81 00000000 61"), 1002)
    }

    func testTextWhileMessageOpenIs1002() {
        assertError(hex("01 81 00000000 61") + hex("81 81 00000000 62"), 1002)
        assertError(hex("02 81 00000000 61") + hex("82 81 00000000 62"), 1002)
    }

    func testPingWithFinZeroIs1002() {
        assertError(hex("09 80 00000000"), 1002)
    }

    func testHugeLengthTopBitSetIs1002WithoutAllocation() throws {
        let stream = hex("82 FF 80 00 00 00 00 00 00 00 00 00 00 00")
        assertError(stream, 1002)
        var decoder = FrameDecoder(limits: serverLimits)
        stream.withUnsafeBytes { decoder.append($0) }
        XCTAssertThrowsError(try decoder.next()) { XCTAssertEqual(($0 as? WSProtocolError)?.closeCode, 1002) }
        XCTAssertLessThanOrEqual(decoder.bufferedBytes, 16)
    }

    func testHugeLengthWithoutTopBitIs1009FromHeaderAlone() {
        // 2^62 bytes declared: rejected from the 10-byte header, before the mask key.
        var decoder = FrameDecoder(limits: serverLimits)
        hex("82 FF 40 00 00 00 00 00 00 00").withUnsafeBytes { decoder.append($0) }
        XCTAssertThrowsError(try decoder.next()) { XCTAssertEqual(($0 as? WSProtocolError)?.closeCode, 1009) }
        XCTAssertLessThanOrEqual(decoder.bufferedBytes, 16)
    }

    func testCloseWithOneByteBodyIs1002() {
        assertError(hex("88 81 00000000 03"), 1002)
    }

    func testInvalidUTF8Is1007() {
        assertError(hex("81 82 00000000 c0 80"), 1007)
        assertError(hex("81 83 00000000 ed a0 80"), 1007)
        assertError(hex("81 81 00000000 c3"), 1007)  // ends inside a sequence
        assertError(hex("01 81 00000000 c3") + hex("80 81 00000000 41"), 1007)
        assertError(hex("01 81 00000000 c3") + hex("80 80 00000000"), 1007)  // unfinished at FIN
    }

    func testInvalidFirstFragmentFailsEarly() {
        // Only the first fragment has arrived; the error must not wait for the rest.
        let outcome = decode([hex("01 82 00000000 ff 61")])
        XCTAssertEqual(outcome.error?.closeCode, 1007)
    }

    func testInvalidTextFailsBeforeFrameCompletes() {
        // A 100-byte text frame whose first payload bytes are invalid: fails with only 10
        // payload bytes buffered (Autobahn 6.4.3/6.4.4 "fail fast").
        let frame = clientFrame(.text, [0x61, 0xC0] + [UInt8](repeating: 0x61, count: 98))
        XCTAssertEqual(decode([Array(frame[..<16])]).error?.closeCode, 1007)
        // Valid text split inside a frame and inside a sequence waits and then succeeds.
        let good = clientFrame(.text, bytes("ab€cd"), key: 0x0102_0304)
        var decoder = FrameDecoder(limits: serverLimits)
        XCTAssertEqual(decode([Array(good[..<9]), Array(good[9..<10]), Array(good[10...])], with: &decoder).events, [.text(bytes("ab€cd"))])
    }

    func testLargeBufferIsReleasedWhenIdle() throws {
        var decoder = FrameDecoder(limits: serverLimits)
        let frame = clientFrame(.binary, [UInt8](repeating: 1, count: 200_000))
        frame.withUnsafeBytes { decoder.append($0) }
        XCTAssertEqual(decoder.bufferedBytes, frame.count)
        XCTAssertEqual(try decoder.next(), .binary([UInt8](repeating: 1, count: 200_000)))
        XCTAssertEqual(decoder.bufferedBytes, 0)
        XCTAssertNil(try decoder.next())
    }

    func testFrameOverMaxFrameSizeIs1009AsSoonAsHeaderRead() {
        let limits = WSLimits(maxFrameSize: 100, maxMessageSize: 1000)
        var decoder = FrameDecoder(limits: limits)
        // Header only (length 126 -> 16-bit 200), no mask key and no payload yet.
        hex("82 FE 00 C8").withUnsafeBytes { decoder.append($0) }
        XCTAssertThrowsError(try decoder.next()) { XCTAssertEqual(($0 as? WSProtocolError)?.closeCode, 1009) }
        assertError(clientFrame(.binary, [UInt8](repeating: 1, count: 101)), 1009, limits: limits)
        XCTAssertEqual(assertSplitInvariant(clientFrame(.binary, [UInt8](repeating: 1, count: 100)), limits: limits).events.count, 1)
    }

    func testMessageOverMaxMessageSizeAcrossFragmentsIs1009() {
        let limits = WSLimits(maxFrameSize: 100, maxMessageSize: 150)
        let chunk = [UInt8](repeating: 0x61, count: 80)
        assertError(clientFrame(.text, chunk, fin: false) + clientFrame(.continuation, chunk), 1009, limits: limits)
        let ok = clientFrame(.text, chunk, fin: false) + clientFrame(.continuation, Array(chunk[..<70]))
        XCTAssertEqual(assertSplitInvariant(ok, limits: limits).events, [.text([UInt8](repeating: 0x61, count: 150))])
        // Single frame larger than the message limit.
        assertError(clientFrame(.binary, [UInt8](repeating: 0, count: 90)), 1009, limits: WSLimits(maxFrameSize: 100, maxMessageSize: 50))
    }

    func testUnmaskedClientFrameIs1002() {
        assertError(hex("81 01 61"), 1002)
    }

    func testRSVBitsAre1002() {
        assertError(hex("C1 81 00000000 61"), 1002)
        assertError(hex("A1 81 00000000 61"), 1002)
        assertError(hex("91 81 00000000 61"), 1002)
    }

    func testReservedOpcodesAre1002() {
        for op in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
            assertError([UInt8(0x80 | op), 0x80, 0, 0, 0, 0], 1002)
        }
    }

    func testControlFrameOver125Is1002() {
        assertError(hex("89 FE 00 7E 00000000") + [UInt8](repeating: 0, count: 126), 1002)
        let ok = clientFrame(.ping, [UInt8](repeating: 1, count: 125))
        XCTAssertEqual(assertSplitInvariant(ok).events, [.ping([UInt8](repeating: 1, count: 125))])
    }

    func testCloseCodeValidation() {
        for code: UInt16 in [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535] {
            assertError(clientFrame(.close, [UInt8(code >> 8), UInt8(code & 0xFF)]), 1002)
        }
        for code: UInt16 in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999] {
            let outcome = assertSplitInvariant(clientFrame(.close, [UInt8(code >> 8), UInt8(code & 0xFF)]))
            XCTAssertEqual(outcome, DecodeOutcome(events: [.close(code: code, reason: [])]), "code \(code)")
        }
    }

    func testEmptyCloseHasNilCode() {
        XCTAssertEqual(assertSplitInvariant(clientFrame(.close, [])).events, [.close(code: nil, reason: [])])
    }

    func testCloseReasonInvalidUTF8Is1007() {
        assertError(clientFrame(.close, [0x03, 0xE8, 0xFF]), 1007)
    }

    // MARK: Fragments

    func testFragments() {
        let stream = clientFrame(.binary, [1], fin: false) + clientFrame(.continuation, [], fin: false)
            + clientFrame(.continuation, [2, 3], fin: false) + clientFrame(.continuation, [4])
            + clientFrame(.text, [], fin: false) + clientFrame(.continuation, [])
        XCTAssertEqual(assertSplitInvariant(stream), DecodeOutcome(events: [.binary([1, 2, 3, 4]), .text([])]))
    }

    func testControlFramesBetweenFragments() {
        let stream = clientFrame(.text, bytes("He"), fin: false) + clientFrame(.ping, bytes("1"))
            + clientFrame(.continuation, bytes("ll"), fin: false) + clientFrame(.pong, bytes("2"))
            + clientFrame(.close, [0x03, 0xE8])
            + clientFrame(.continuation, bytes("o"))
        XCTAssertEqual(assertSplitInvariant(stream).events, [
            .ping(bytes("1")), .pong(bytes("2")), .close(code: 1000, reason: []), .text(bytes("Hello")),
        ])
    }

    // MARK: Failure is sticky; buffering

    func testFailureIsSticky() {
        var decoder = FrameDecoder(limits: serverLimits)
        hex("81 01 61").withUnsafeBytes { decoder.append($0) }
        XCTAssertThrowsError(try decoder.next())
        clientFrame(.text, bytes("ok")).withUnsafeBytes { decoder.append($0) }
        for _ in 0..<3 {
            XCTAssertThrowsError(try decoder.next()) {
                XCTAssertEqual($0 as? WSProtocolError, WSProtocolError(closeCode: 1002, reason: "unmasked frame from client"))
            }
        }
        XCTAssertEqual(decoder.bufferedBytes, 0)
    }

    func testBufferedBytesAndCompaction() throws {
        var decoder = FrameDecoder(limits: serverLimits)
        XCTAssertEqual(decoder.bufferedBytes, 0)
        XCTAssertNil(try decoder.next())
        let frame = clientFrame(.binary, [UInt8](repeating: 7, count: 1000))
        // Many frames with a partial one at the end of each append keep the buffer bounded.
        for _ in 0..<200 {
            let chunk = frame + frame[..<10]
            chunk.withUnsafeBytes { decoder.append($0) }
            while let event = try decoder.next() { XCTAssertEqual(event, .binary([UInt8](repeating: 7, count: 1000))) }
            frame[10...].withUnsafeBytes { decoder.append($0) }
            XCTAssertEqual(try decoder.next(), .binary([UInt8](repeating: 7, count: 1000)))
            XCTAssertNil(try decoder.next())
            XCTAssertEqual(decoder.bufferedBytes, 0)
        }
        frame[..<5].withUnsafeBytes { decoder.append($0) }
        XCTAssertEqual(decoder.bufferedBytes, 5)
        XCTAssertNil(try decoder.next())
    }

    func testLargeFragmentedRandomMessagesMatchAtRandomSplits() {
        var rng = SplitMix64(seed: 99)
        var stream: [UInt8] = []
        var expected: [WSEvent] = []
        for _ in 0..<20 {
            let length = Int.random(in: 0..<3000, using: &rng)
            let payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let pieces = Int.random(in: 1...4, using: &rng)
            var cut = 0
            for i in 0..<pieces {
                let end = i == pieces - 1 ? length : Int.random(in: cut...length, using: &rng)
                stream += clientFrame(i == 0 ? .binary : .continuation, Array(payload[cut..<end]), fin: i == pieces - 1,
                                      key: UInt32.random(in: 0...UInt32.max, using: &rng))
                cut = end
            }
            expected.append(.binary(payload))
        }
        for _ in 0..<30 {
            var chunks: [[UInt8]] = []
            var i = 0
            while i < stream.count {
                let n = Int.random(in: 1...2000, using: &rng)
                chunks.append(Array(stream[i..<min(stream.count, i + n)]))
                i += n
            }
            XCTAssertEqual(decode(chunks), DecodeOutcome(events: expected))
        }
    }
}
