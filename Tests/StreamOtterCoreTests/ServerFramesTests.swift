import StreamOtterCore
import XCTest

final class ServerFramesTests: XCTestCase {
    private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

    private func message(key: [UInt8]? = nil, headers: [(String, [UInt8]?)] = [], value: [UInt8]?, timestamp: Int64 = 1700) -> [UInt8] {
        var out: [UInt8] = []
        func withHeaders(_ i: Int, _ acc: [(String, UnsafeRawBufferPointer?)], _ body: ([(String, UnsafeRawBufferPointer?)]) -> Void) {
            if i == headers.count { return body(acc) }
            if let v = headers[i].1 {
                v.withUnsafeBytes { withHeaders(i + 1, acc + [(headers[i].0, $0)], body) }
            } else {
                withHeaders(i + 1, acc + [(headers[i].0, nil)], body)
            }
        }
        withHeaders(0, []) { h in
            func withOptional(_ b: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> Void) {
                if let b = b { b.withUnsafeBytes { body($0) } } else { body(nil) }
            }
            withOptional(key) { k in
                withOptional(value) { v in
                    ServerFrames.message(channel: "orders", partition: 3, offset: 42, timestamp: timestamp, key: k, headers: h, value: v, into: &out)
                }
            }
        }
        XCTAssertTrue(out.withUnsafeBytes { JSON.isValid($0) }, text(out))
        return out
    }

    func testOkAckError() {
        XCTAssertEqual(text(ServerFrames.ok(id: "s1")), #"{"op":"ok","id":"s1"}"#)
        XCTAssertEqual(text(ServerFrames.ok(id: nil)), #"{"op":"ok"}"#)
        XCTAssertEqual(text(ServerFrames.ack(id: "p1", channel: "orders", partition: 0, offset: 123)),
                       #"{"op":"ack","id":"p1","channel":"orders","partition":0,"offset":123}"#)
        XCTAssertEqual(text(ServerFrames.error(id: "p1", code: "forbidden", message: "no \"way\"")),
                       #"{"op":"error","id":"p1","code":"forbidden","message":"no \"way\""}"#)
        XCTAssertEqual(text(ServerFrames.error(id: nil, code: "bad_request", message: "x")), #"{"op":"error","code":"bad_request","message":"x"}"#)
        for frame in [ServerFrames.ok(id: "a\u{1}"), ServerFrames.ack(id: nil, channel: "c", partition: -1, offset: -5),
                      ServerFrames.error(id: "\"", code: "c", message: "\n")] {
            XCTAssertTrue(frame.withUnsafeBytes { JSON.isValid($0) }, text(frame))
        }
    }

    func testMessageWithJSONData() {
        XCTAssertEqual(text(message(key: bytes("k1"), headers: [("h", bytes("v"))], value: bytes(#" {"a" : [1, 2]} "#))),
                       #"{"op":"message","channel":"orders","partition":3,"offset":42,"timestamp":1700,"key":"k1","headers":{"h":"v"},"data":{"a":[1,2]}}"#)
        XCTAssertEqual(text(message(value: bytes("42"), timestamp: -1)),
                       #"{"op":"message","channel":"orders","partition":3,"offset":42,"data":42}"#)
        XCTAssertEqual(text(message(value: bytes("\"str\""))).hasSuffix(#","data":"str"}"#), true)
    }

    func testMessageNilValueIsDataNull() {
        XCTAssertTrue(text(message(value: nil)).hasSuffix(#","data":null}"#))
        XCTAssertTrue(text(message(value: bytes("null"))).hasSuffix(#","data":null}"#))
    }

    func testMessageTextForNonJSONUTF8() {
        XCTAssertTrue(text(message(value: bytes("hello \"world\""))).hasSuffix(#","text":"hello \"world\""}"#))
        XCTAssertTrue(text(message(value: [])).hasSuffix(#","text":""}"#))
        XCTAssertTrue(text(message(value: bytes("{bad json"))).hasSuffix(#","text":"{bad json"}"#))
    }

    func testMessageBase64ForBinary() {
        XCTAssertTrue(text(message(value: [0xFF, 0x00, 0x01])).hasSuffix(#","base64":"/wAB"}"#))
    }

    func testKeyAndHeaderEncodings() throws {
        let out = message(key: [0xC3], headers: [("t", bytes("x")), ("b", [0xFF]), ("n", nil)], value: bytes("1"))
        let value = try out.withUnsafeBytes { try JSON.parse($0) }
        XCTAssertEqual(value["key"], nil)
        XCTAssertEqual(value["key_base64"], .string("ww=="))
        XCTAssertEqual(value["headers"], .object([("t", .string("x")), ("n", .null)]))
        XCTAssertEqual(value["headers_base64"], .object([("b", .string("/w=="))]))
        let onlyBinary = try message(headers: [("b", [0xFF])], value: bytes("1")).withUnsafeBytes { try JSON.parse($0) }
        XCTAssertNil(onlyBinary["headers"])
        XCTAssertNotNil(onlyBinary["headers_base64"])
        let noHeaders = try message(value: bytes("1")).withUnsafeBytes { try JSON.parse($0) }
        XCTAssertNil(noHeaders["headers"])
        XCTAssertNil(noHeaders["key"])
    }

    func testRepeatedHeaderNamesBecomeArraysInRecordOrder() throws {
        // Kafka allows a name more than once; a JSON object must not repeat a member.
        let out = message(headers: [("x", bytes("1")), ("y", bytes("a")), ("x", bytes("2")), ("b", [0xFF]), ("x", nil),
                                    ("b", [0xFE]), ("x", [0xFD])], value: bytes("1"))
        let s = text(out)
        XCTAssertTrue(s.contains(#""headers":{"x":["1","2",null],"y":"a"}"#), s)
        XCTAssertTrue(s.contains(#""headers_base64":{"b":["/w==","/g=="],"x":"/Q=="}"#), s)
        // A name that does not repeat stays a string.
        XCTAssertTrue(text(message(headers: [("x", bytes("1")), ("y", bytes("2"))], value: bytes("1")))
            .contains(#""headers":{"x":"1","y":"2"}"#))
    }

    func testMessageOutputParsesAsJSONForRandomValues() {
        var rng = SplitMix64(seed: 5)
        for _ in 0..<500 {
            let n = Int.random(in: 0..<20, using: &rng)
            let value = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let key = (0..<Int.random(in: 0..<5, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = message(key: key, headers: [("h", key)], value: value)  // asserts validity
        }
    }

    func testAppendsToExistingBuffer() {
        var out: [UInt8] = [0xAA]
        bytes("1").withUnsafeBytes { ServerFrames.message(channel: "c", partition: 0, offset: 0, timestamp: 0, key: nil, headers: [], value: $0, into: &out) }
        XCTAssertEqual(out.first, 0xAA)
        XCTAssertEqual(text(Array(out.dropFirst())), #"{"op":"message","channel":"c","partition":0,"offset":0,"timestamp":0,"data":1}"#)
    }

    func testPublishValueRoundTripsIntoMessage() throws {
        guard case .publish(_, _, _, _, let value) = try ProtocolParser.parse(bytes(#"{"op":"publish","channel":"c","data":{ "x" : "y" }}"#)) else {
            return XCTFail()
        }
        let out = message(value: value)
        XCTAssertTrue(text(out).hasSuffix(#""data":{"x":"y"}}"#))
    }
}
