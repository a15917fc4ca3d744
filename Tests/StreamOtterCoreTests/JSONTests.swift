import StreamOtterCore
import XCTest

final class JSONTests: XCTestCase {
    private func isValid(_ s: String) -> Bool { withBytes(s) { JSON.isValid($0) } }
    private func isValid(_ b: [UInt8]) -> Bool { b.withUnsafeBytes { JSON.isValid($0) } }
    private func parse(_ s: String) throws -> JSONValue { try withBytes(s) { try JSON.parse($0) } }
    private func compact(_ s: String) -> String {
        var out: [UInt8] = []
        withBytes(s) { JSON.appendCompact($0, to: &out) }
        return String(decoding: out, as: UTF8.self)
    }

    static let validCorpus = [
        "null", "true", "false", "0", "-0", "1", "-1", "123", "1.5", "-1.5e10", "1E5", "1e+5", "1e-5", "0.0", "0e0",
        "12345678901234567890123456789", "\"\"", "\"abc\"", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\u0000\"", "\"\\u00e9\"",
        "\"\\uD834\\uDD1E\"", "\"\\ud834\\udd1e\"", "\"é€𝄞\"", "\"\u{7f}\"", "[]", "{}", "[1,2,3]", "{\"a\":1}", " \t\r\n[ 1 , { \"a\" : [ ] } ] \n",
        "{\"a\":{\"b\":{\"c\":[null,true,false]}}}", "{\"a\":1,\"a\":2}", "[\"\\u2028\"]",
        String(repeating: "[", count: 64) + String(repeating: "]", count: 64),
    ]

    static let invalidCorpus = [
        "", " ", "nul", "nulll", "True", "NaN", "Infinity", "-Infinity", "+1", "01", "-01", "00", "1.", ".5", "1.e5", "1e", "1e+",
        "-", "0x10", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\uD834\"", "\"\\uD834x\"", "\"\\uD834\\u0041\"", "\"\\uDD1E\"",
        "\"a\u{01}b\"", "\"tab\there\"", "\"new\nline\"", "[", "]", "[1,]", "[,1]", "[1 2]", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{a:1}",
        "{'a':1}", "{\"a\" 1}", "{1:2}", "[1]]", "{} {}", "1 2", "[1]x", "\u{feff}1",
        String(repeating: "[", count: 65) + String(repeating: "]", count: 65),
    ]

    func testValidCorpus() throws {
        for text in JSONTests.validCorpus {
            XCTAssertTrue(isValid(text), text)
            XCTAssertNoThrow(try parse(text), text)
        }
    }

    func testInvalidCorpus() {
        for text in JSONTests.invalidCorpus {
            XCTAssertFalse(isValid(text), text)
            XCTAssertThrowsError(try parse(text), text)
        }
    }

    func testInvalidUTF8InStringIsRejected() {
        XCTAssertFalse(isValid([0x22, 0xC3, 0x22]))
        XCTAssertFalse(isValid([0x22, 0xED, 0xA0, 0x80, 0x22]))
        XCTAssertFalse(isValid([0x22, 0xFF, 0x22]))
        XCTAssertTrue(isValid([0x22, 0xC3, 0xA9, 0x22]))
    }

    func testParsedValues() throws {
        XCTAssertEqual(try parse(" {\"a\": [1, -2.5e3, \"x\\ny\", null, true, false], \"b\": {}} "),
                       .object([("a", .array([.number("1"), .number("-2.5e3"), .string("x\ny"), .null, .bool(true), .bool(false)])),
                                ("b", .object([]))]))
        XCTAssertEqual(try parse("\"\\uD834\\uDD1E\\u00e9\\/\""), .string("𝄞é/"))
        XCTAssertEqual(try parse("\"\\u0000\""), .string("\u{0}"))
        XCTAssertNotEqual(try parse("{\"a\":1,\"b\":2}"), try parse("{\"b\":2,\"a\":1}"))
        XCTAssertEqual(try parse("{\"a\":1}")["a"], .number("1"))
        XCTAssertEqual(try parse("\"s\"").stringValue, "s")
    }

    func testDuplicateMemberNames() throws {
        // Parsing keeps both members and lookup finds the first; duplicateMemberName reports
        // the repeat (JWTs and introspection answers are refused for it).
        let twice = try parse(#"{"a":1,"a":2}"#)
        XCTAssertEqual(twice["a"], .number("1"))
        XCTAssertEqual(twice.duplicateMemberName, "a")
        XCTAssertNil(try parse(#"{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}"#).duplicateMemberName)
        XCTAssertNil(try parse("[]").duplicateMemberName)
        XCTAssertNil(try parse("1").duplicateMemberName)
        XCTAssertEqual(try parse(#"{"a":1,"b":{"c":1,"c":2}}"#).duplicateMemberName, "c")
        XCTAssertEqual(try parse(#"[1,{"x":[{"d":0,"e":1,"d":0}]}]"#).duplicateMemberName, "d")
        // Names compare after unescaping, and as lookup compares them (canonical equivalence:
        // a precomposed and a decomposed é are one name).
        XCTAssertEqual(try parse(#"{"\u0061":1,"a":2}"#).duplicateMemberName, "a")
        XCTAssertNotNil(try parse("{\"\u{e9}\":1,\"e\u{301}\":2}").duplicateMemberName)
        XCTAssertNil(try parse(#"{"A":1,"a":2}"#).duplicateMemberName)
    }

    func testErrorOffsets() {
        XCTAssertThrowsError(try parse("[1, x]")) { XCTAssertEqual(($0 as? JSONError)?.offset, 4) }
        XCTAssertThrowsError(try parse("{} x")) { XCTAssertEqual(($0 as? JSONError)?.offset, 3) }
    }

    func testCompactOutput() {
        XCTAssertEqual(compact(" { \"a\" : [ 1 , 2 ] ,\n\t\"b\" : \"x y \\\" z\" } "), "{\"a\":[1,2],\"b\":\"x y \\\" z\"}")
        XCTAssertEqual(compact("\"a\\\\\" "), "\"a\\\\\"")
        XCTAssertEqual(compact("\"\\\\\\\"  \""), "\"\\\\\\\"  \"")
        XCTAssertEqual(compact("  null "), "null")
        XCTAssertEqual(compact("{\"a\":1}"), "{\"a\":1}")
        for text in JSONTests.validCorpus {
            let c = compact(text)
            XCTAssertTrue(isValid(c), c)
            XCTAssertEqual(try parse(c), try parse(text))
            XCTAssertEqual(compact(c), c, "compact is idempotent")
        }
    }

    func testStringEscaping() throws {
        var out: [UInt8] = []
        JSON.appendString("a\"b\\c\n\u{1}\u{1f} é𝄞/", to: &out)
        XCTAssertEqual(String(decoding: out, as: UTF8.self), "\"a\\\"b\\\\c\\u000a\\u0001\\u001f é𝄞/\"")
        XCTAssertEqual(try out.withUnsafeBytes { try JSON.parse($0) }, .string("a\"b\\c\n\u{1}\u{1f} é𝄞/"))
        out = []
        JSON.appendString("", to: &out)
        XCTAssertEqual(out, bytes("\"\""))
        // Every control character round-trips.
        let controls = String((0..<32).map { Character(Unicode.Scalar(UInt8($0))) })
        out = []
        JSON.appendString(controls, to: &out)
        XCTAssertEqual(try out.withUnsafeBytes { try JSON.parse($0) }, .string(controls))
    }

    func testSerializedRoundTrip() throws {
        let value = try parse("{\"a\":[1,{\"b\":\"\\u0001\"}],\"c\":null}")
        XCTAssertEqual(String(decoding: value.serialized(), as: UTF8.self), "{\"a\":[1,{\"b\":\"\\u0001\"}],\"c\":null}")
        XCTAssertEqual(try value.serialized().withUnsafeBytes { try JSON.parse($0) }, value)
    }

    func testSpecialBytesAtEveryPositionOfTheWordScan() throws {
        // The string scan checks eight bytes at a time: put each kind of byte that ends the
        // fast path at every offset of a long run and compare with the expected value.
        for pos in 0..<20 {
            let pad = String(repeating: "a", count: pos)
            let tail = String(repeating: "b", count: 19 - pos)
            XCTAssertEqual(try parse("\"\(pad)\\\"\(tail)\""), .string(pad + "\"" + tail))
            XCTAssertEqual(try parse("\"\(pad)\\\\\(tail)\""), .string(pad + "\\" + tail))
            XCTAssertEqual(try parse("\"\(pad)é\(tail)\""), .string(pad + "é" + tail))
            XCTAssertEqual(try parse("\"\(pad)\(tail)\""), .string(pad + tail))
            XCTAssertThrowsError(try parse("\"\(pad)\u{1f}\(tail)\""), "control byte at \(pos)")
            XCTAssertThrowsError(try ([0x22] + Array(pad.utf8) + [0xff] + Array(tail.utf8) + [0x22] as [UInt8]).withUnsafeBytes { try JSON.parse($0) },
                                 "invalid UTF-8 at \(pos)")
            XCTAssertThrowsError(try parse("\"\(pad)\(tail)"), "unterminated at \(pos)")
        }
    }
}
