import StreamOtterCore
import XCTest

final class ProtocolParserTests: XCTestCase {
    private func parse(_ s: String) throws -> ClientRequest { try withBytes(s) { try ProtocolParser.parse($0) } }

    private func assertError(_ s: String, _ code: String, id: String? = nil, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(s), s, file: file, line: line) {
            guard let e = $0 as? ProtocolError else { return XCTFail("\($0)", file: file, line: line) }
            XCTAssertEqual(e.code, code, "\(s): \(e.message)", file: file, line: line)
            XCTAssertEqual(e.id, id, s, file: file, line: line)
        }
    }

    func testSubscribe() throws {
        XCTAssertEqual(try parse(#"{"op":"subscribe","id":"s1","channel":"orders"}"#), .subscribe(id: "s1", channel: "orders", from: .latest))
        XCTAssertEqual(try parse(#"{"op":"subscribe","channel":"a.b_c-D9","from":"earliest"}"#), .subscribe(id: nil, channel: "a.b_c-D9", from: .earliest))
        XCTAssertEqual(try parse(#"{"channel":"x","from":"latest","op":"subscribe"}"#), .subscribe(id: nil, channel: "x", from: .latest))
        XCTAssertEqual(try parse(#" { "op" : "subscribe" , "channel" : "x" , "from" : null , "id" : null } "#), .subscribe(id: nil, channel: "x", from: .latest))
    }

    func testSubscribeOffsetsAndTimestamp() throws {
        XCTAssertEqual(try parse(#"{"op":"subscribe","channel":"o","from":{"offsets":{"0":42,"1":0,"2147483647":9223372036854775807}}}"#),
                       .subscribe(id: nil, channel: "o", from: .offsets([0: 42, 1: 0, Int32.max: Int64.max])))
        XCTAssertEqual(try parse(#"{"op":"subscribe","channel":"o","from":{"timestamp":1700000000000}}"#),
                       .subscribe(id: nil, channel: "o", from: .timestamp(1_700_000_000_000)))
        XCTAssertEqual(try parse(#"{"op":"subscribe","channel":"o","from":{"timestamp":0}}"#), .subscribe(id: nil, channel: "o", from: .timestamp(0)))
    }

    func testInvalidFrom() {
        let bad = [
            #""newest""#, "1", "true", "[]", "{}", #"{"offsets":{}}"#, #"{"offsets":[]}"#, #"{"offsets":{"a":1}}"#,
            #"{"offsets":{"-1":1}}"#, #"{"offsets":{"01":1}}"#, #"{"offsets":{"2147483648":1}}"#, #"{"offsets":{"0":-1}}"#,
            #"{"offsets":{"0":1.5}}"#, #"{"offsets":{"0":1e3}}"#, #"{"offsets":{"0":"1"}}"#, #"{"offsets":{"0":9223372036854775808}}"#,
            #"{"offsets":{"0":1,"0":2}}"#, #"{"timestamp":-1}"#, #"{"timestamp":1.0}"#, #"{"timestamp":"1"}"#, #"{"timestamp":null}"#,
            #"{"timestamp":1,"offsets":{"0":1}}"#, #"{"other":1}"#,
        ]
        for from in bad {
            assertError(#"{"op":"subscribe","id":"s9","channel":"o","from":"# + from + "}", "invalid_from", id: "s9")
        }
    }

    func testUnsubscribe() throws {
        XCTAssertEqual(try parse(#"{"op":"unsubscribe","id":"u1","channel":"orders"}"#), .unsubscribe(id: "u1", channel: "orders"))
        assertError(#"{"op":"unsubscribe","id":"u1"}"#, "bad_request", id: "u1")
    }

    func testPublish() throws {
        XCTAssertEqual(try parse(#"{"op":"publish","id":"p1","channel":"orders","key":"k1","headers":{"h":"v","é":"ü"},"data": { "a" : [1, 2] , "b":"x y"} }"#),
                       .publish(id: "p1", channel: "orders", key: bytes("k1"), headers: [("h", bytes("v")), ("é", bytes("ü"))], value: bytes(#"{"a":[1,2],"b":"x y"}"#)))
        XCTAssertEqual(try parse(#"{"op":"publish","channel":"c","data":null}"#), .publish(id: nil, channel: "c", key: nil, headers: [], value: bytes("null")))
        XCTAssertEqual(try parse(#"{"data":"s\"q","op":"publish","channel":"c","key":null,"headers":null}"#),
                       .publish(id: nil, channel: "c", key: nil, headers: [], value: bytes(#""s\"q""#)))
        XCTAssertEqual(try parse(#"{"op":"publish","channel":"c","data":-1.5e3}"#), .publish(id: nil, channel: "c", key: nil, headers: [], value: bytes("-1.5e3")))
        XCTAssertEqual(try parse(#"{"op":"publish","channel":"c","data":[],"future_field":{"x":1}}"#), .publish(id: nil, channel: "c", key: nil, headers: [], value: bytes("[]")))
    }

    func testPublishErrors() {
        assertError(#"{"op":"publish","id":"p2","channel":"c"}"#, "bad_request", id: "p2")
        assertError(#"{"op":"publish","id":"p2","channel":"c","data":1,"key":5}"#, "bad_request", id: "p2")
        assertError(#"{"op":"publish","id":"p2","channel":"c","data":1,"headers":[]}"#, "bad_request", id: "p2")
        assertError(#"{"op":"publish","id":"p2","channel":"c","data":1,"headers":{"h":1}}"#, "bad_request", id: "p2")
        assertError(#"{"op":"publish","id":"p2","channel":"c","data":1,"data":2}"#, "bad_request", id: "p2")
        assertError(#"{"op":"publish","id":"p2","channel":"c","data":[1,}"#, "bad_request", id: "p2")
    }

    func testBadRequest() {
        for text in ["", "nope", "[]", "1", "\"op\"", "null", #"{"op":"subscribe","channel":"x"} x"#, #"{"op":"subscribe""#,
                     #"{"op":"subscribe","op":"subscribe","channel":"x"}"#] {
            assertError(text, "bad_request")
        }
        assertError(#"{"op":"subscribe","channel":5,"id":"a"}"#, "bad_request", id: "a")
        assertError(#"{"op":"subscribe","id":"a"}"#, "bad_request", id: "a")
        assertError(#"{"op":"subscribe","channel":null,"id":"a"}"#, "bad_request", id: "a")
    }

    func testIdRules() throws {
        assertError(#"{"op":"subscribe","channel":"x","id":5}"#, "bad_request")
        assertError(#"{"op":"subscribe","channel":"x","id":{}}"#, "bad_request")
        let long = String(repeating: "é", count: 257)
        assertError(#"{"op":"subscribe","channel":"x","id":""# + long + #""}"#, "bad_request")
        let max = String(repeating: "é", count: 256)
        XCTAssertEqual(try parse(#"{"op":"subscribe","channel":"x","id":""# + max + #""}"#).id, max)
        XCTAssertEqual(try parse(#"{"op":"subscribe","channel":"x","id":"a\"b"}"#).id, "a\"b")
    }

    func testUnknownOp() {
        assertError(#"{"channel":"x","id":"i1"}"#, "unknown_op", id: "i1")
        assertError(#"{"op":"auth","id":"i2"}"#, "bad_request", id: "i2")
        assertError(#"{"op":"auth","id":"i3","token":7}"#, "bad_request", id: "i3")
        XCTAssertEqual(try ProtocolParser.parse(Array(#"{"op":"auth","id":"a1","token":"tok"}"#.utf8)), .auth(id: "a1", token: "tok"))
        assertError(#"{"op":"Subscribe","channel":"x"}"#, "unknown_op")
        assertError(#"{"op":1,"channel":"x","id":"i3"}"#, "unknown_op", id: "i3")
        assertError(#"{"op":null,"channel":"x"}"#, "unknown_op")
        assertError(#"{}"#, "unknown_op")
    }

    func testInvalidChannel() throws {
        for channel in ["", "a b", "a/b", "é", "a*", String(repeating: "a", count: 250), "a\\u0000", ".", ".."] {
            assertError(#"{"op":"subscribe","id":"c1","channel":""# + channel + #""}"#, "invalid_channel", id: "c1")
            assertError(#"{"op":"publish","id":"c2","channel":""# + channel + #"","data":1}"#, "invalid_channel", id: "c2")
        }
        let longest = String(repeating: "a", count: 249)
        XCTAssertEqual(try parse(#"{"op":"unsubscribe","channel":""# + longest + #""}"#).channel, longest)
        XCTAssertTrue(ProtocolParser.isValidChannel("Orders.v2_eu-1"))
    }

    func testParseArrayOverload() throws {
        XCTAssertEqual(try ProtocolParser.parse(bytes(#"{"op":"unsubscribe","channel":"x"}"#)), .unsubscribe(id: nil, channel: "x"))
    }

    func testEscapedKeysAreTheSameFieldsAndDuplicatesOfThemAreRefused() throws {
        // Keys are matched on their decoded bytes: an escaped "op" is op, and twice is a duplicate.
        XCTAssertEqual(try parse(#"{"\u006fp":"unsubscribe","ch\u0061nnel":"x"}"#), .unsubscribe(id: nil, channel: "x"))
        assertError(#"{"op":"unsubscribe","\u006fp":"unsubscribe","channel":"x"}"#, "bad_request")
        assertError(#"{"op":"publish","channel":"x","data":1,"d\u0061ta":2}"#, "bad_request")
        assertError(#"{"op":"unsubscribe","channel":"x","zz":1,"\u007a\u007a":2}"#, "bad_request")
        // Unknown keys are ignored, and distinct ones are fine however many there are.
        let many = (0..<20_000).map { "\"k\($0)\":0" }.joined(separator: ",")
        XCTAssertEqual(try parse("{" + many + #","op":"unsubscribe","channel":"x"}"#), .unsubscribe(id: nil, channel: "x"))
    }

    func testHeaderNamesWithNulAreRefused() throws {
        assertError(#"{"op":"publish","id":"p","channel":"c","data":1,"headers":{"streamotter-id\u0000x":"forged"}}"#, "bad_request", id: "p")
        assertError(#"{"op":"publish","channel":"c","data":1,"headers":{"\u0000":"v"}}"#, "bad_request")
        // NUL in a header value is fine (values are bytes).
        guard case .publish(_, _, _, let headers, _) = try parse(#"{"op":"publish","channel":"c","data":1,"headers":{"h":"a\u0000b"}}"#) else {
            return XCTFail("not a publish")
        }
        XCTAssertEqual(headers.first?.1, [0x61, 0, 0x62])
    }

    func testErrorsFoundAfterTheIdNameIt() {
        // Found while reading the frame, after its id: the reply still names the request.
        assertError(#"{"op":"publish","id":"p7","channel":"c","data":1,"extra":1,"extra":2}"#, "bad_request", id: "p7")
        assertError(#"{"id":"p8","op":"publish","channel":"c","data":[1,}"#, "bad_request", id: "p8")
        let deep = String(repeating: "[", count: 70) + String(repeating: "]", count: 70)
        assertError(#"{"id":"p9","op":"publish","channel":"c","data":"# + deep + "}", "bad_request", id: "p9")
        // Before the id, or an id that is not a readable string: no id.
        assertError(#"{"op":"publish","x":1,"x":2,"id":"late","channel":"c","data":1}"#, "bad_request")
        assertError(#"{"id":5,"op":"publish","channel":"c","data":[1,}"#, "bad_request")
    }

    func testRepeatedHeaderNamesAreRefused() throws {
        // Parsers disagree on which of a repeated member wins: the request is refused.
        assertError(#"{"op":"publish","id":"p","channel":"c","data":1,"headers":{"trace":"A","trace":"B"}}"#, "bad_request", id: "p")
        assertError(#"{"op":"publish","channel":"c","data":1,"headers":{"t":"A","\u0074":"B"}}"#, "bad_request")
        guard case .publish(_, _, _, let headers, _) = try parse(#"{"op":"publish","channel":"c","data":1,"headers":{"t":"A","T":"B"}}"#) else {
            return XCTFail("not a publish")
        }
        XCTAssertEqual(headers.map(\.0), ["t", "T"])
    }

    func testDataIsCopiedCompactWithStringsUnchanged() throws {
        guard case .publish(_, _, _, _, let v1) = try parse(#"{"op":"publish","channel":"c","data":{"a":"x y","b":[1, 2]}}"#),
              case .publish(_, _, _, _, let v2) = try parse(#"{"op":"publish","channel":"c","data":{"a":"x\"y"}}"#) else {
            return XCTFail("not a publish")
        }
        XCTAssertEqual(String(decoding: v1, as: UTF8.self), #"{"a":"x y","b":[1,2]}"#)
        XCTAssertEqual(String(decoding: v2, as: UTF8.self), #"{"a":"x\"y"}"#)
    }
}
