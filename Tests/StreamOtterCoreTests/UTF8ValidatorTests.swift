import StreamOtterCore
import XCTest

final class UTF8ValidatorTests: XCTestCase {
    private func valid(_ b: [UInt8]) -> Bool { b.withUnsafeBytes { UTF8Validator.isValid($0) } }

    func testValidSequences() {
        XCTAssertTrue(valid([]))
        XCTAssertTrue(valid(bytes("hello, world")))
        XCTAssertTrue(valid(bytes("æøå €𝄞 日本")))
        XCTAssertTrue(valid(hex("7f c2 80 df bf e0 a0 80 ef bf bf f0 90 80 80 f4 8f bf bf")))
        XCTAssertTrue(valid(hex("ed 9f bf ee 80 80")))  // U+D7FF, U+E000 around the surrogates
    }

    func testInvalidSequences() {
        let cases = [
            "80", "bf", "c0 80", "c1 bf", "c2", "c2 41", "e0 80 80", "e0 9f bf", "ed a0 80", "ed bf bf",
            "f0 80 80 80", "f0 8f bf bf", "f4 90 80 80", "f5 80 80 80", "ff", "fe", "e2 82", "f0 9f 98",
            "e2 28 a1", "61 62 63 64 65 66 67 68 c3",
        ]
        for c in cases { XCTAssertFalse(valid(hex(c)), c) }
    }

    func testStreamingAtEverySplit() {
        let text = bytes("aé€𝄞zé𝄞€xxxxxxxxxxxxxxxx𝄞")
        for split in 0...text.count {
            var v = UTF8Validator()
            XCTAssertTrue(text[..<split].withUnsafeBytes { v.feed($0) })
            XCTAssertTrue(text[split...].withUnsafeBytes { v.feed($0) })
            XCTAssertTrue(v.isAtBoundary)
        }
        var v = UTF8Validator()
        for b in text { XCTAssertTrue([b].withUnsafeBytes { v.feed($0) }) }
        XCTAssertTrue(v.isAtBoundary)
    }

    func testPartialSequenceIsNotBoundaryAndResetClears() {
        var v = UTF8Validator()
        XCTAssertTrue(hex("f0 9f").withUnsafeBytes { v.feed($0) })
        XCTAssertFalse(v.isAtBoundary)
        v.reset()
        XCTAssertTrue(v.isAtBoundary)
        XCTAssertFalse(hex("ed").withUnsafeBytes { v.feed($0) } && hex("a0").withUnsafeBytes { v.feed($0) })
        XCTAssertFalse(bytes("a").withUnsafeBytes { v.feed($0) }, "stays failed")
        v.reset()
        XCTAssertTrue(bytes("a").withUnsafeBytes { v.feed($0) })
    }

    func testAgreesWithStandardLibraryOnRandomInput() {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<3000 {
            let length = Int.random(in: 0..<12, using: &rng)
            let pool: [UInt8] = [0x41, 0x7f, 0x80, 0x8f, 0x90, 0xa0, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff]
            let data = (0..<length).map { _ in pool.randomElement(using: &rng)! }
            var decodedValid = true
            var iterator = data.makeIterator()
            var decoder = UTF8()
            loop: while true {
                switch decoder.decode(&iterator) {
                case .scalarValue: continue
                case .emptyInput: break loop
                case .error: decodedValid = false; break loop
                }
            }
            XCTAssertEqual(valid(data), decodedValid, "\(data)")
        }
    }
}
