import StreamOtterCore
import XCTest

final class SHA1Tests: XCTestCase {
    private func hexString(_ digest: [UInt8]) -> String {
        digest.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    func testFIPSVectors() {
        XCTAssertEqual(hexString(SHA1.hash(bytes(""))), "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        XCTAssertEqual(hexString(SHA1.hash(bytes("abc"))), "a9993e364706816aba3e25717850c26c9cd0d89d")
        XCTAssertEqual(hexString(SHA1.hash(bytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
                       "84983e441c3bd26ebaae4aa1f95129e5e54670f1")
        XCTAssertEqual(hexString(SHA1.hash(bytes("The quick brown fox jumps over the lazy dog"))),
                       "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12")
    }

    func testMillionA() {
        let data = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        XCTAssertEqual(hexString(SHA1.hash(data)), "34aa973cd4c4daa4f61eeb2bdbad27316534016f")
    }

    func testPaddingBoundaries() {
        // Lengths around the 55/56/64-byte padding edges must all produce 20 bytes and
        // differ from each other.
        var seen = Set<[UInt8]>()
        for n in 50...130 {
            let digest = SHA1.hash([UInt8](repeating: 0x61, count: n))
            XCTAssertEqual(digest.count, 20)
            XCTAssertTrue(seen.insert(digest).inserted)
        }
        XCTAssertEqual(hexString(SHA1.hash([UInt8](repeating: 0x61, count: 64))),
                       "0098ba824b5c16427bd7a1122a5a442a25ec644d")
    }
}
