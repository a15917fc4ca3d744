import StreamOtterCore
import XCTest

final class Base64Tests: XCTestCase {
    func testRFC4648Vectors() {
        let vectors: [(String, String)] = [
            ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
        ]
        for (plain, encoded) in vectors {
            XCTAssertEqual(Base64.encode(bytes(plain)), encoded)
            XCTAssertEqual(Base64.decode(encoded), bytes(plain))
        }
    }

    func testRoundTripAllLengthsAndBytes() {
        var rng = SplitMix64(seed: 42)
        for length in 0..<300 {
            let data = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let text = Base64.encode(data)
            XCTAssertEqual(text.utf8.count, (length + 2) / 3 * 4)
            XCTAssertEqual(Base64.decode(text), data, "length \(length)")
        }
        let all = (0...255).map { UInt8($0) }
        XCTAssertEqual(Base64.decode(Base64.encode(all)), all)
    }

    func testEncodeRawBufferMatchesArray() {
        let data: [UInt8] = [0, 1, 2, 250, 251, 252, 253]
        XCTAssertEqual(data.withUnsafeBytes { Base64.encode($0) }, Base64.encode(data))
    }

    func testDecodeRejectsMalformed() {
        for bad in ["Zg", "Zg=", "Z===", "Zm9v!", "Zm 9v", "Zm9v\n", "=Zm9", "Zm=v", "Zh==", "Zm9=", "Zm8=Zm8="] {
            XCTAssertNil(Base64.decode(bad), bad)
        }
    }

    func testWebSocketKeyDecodesTo16Bytes() {
        XCTAssertEqual(Base64.decode("dGhlIHNhbXBsZSBub25jZQ==")?.count, 16)
    }
}
