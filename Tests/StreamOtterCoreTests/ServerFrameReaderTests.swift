import StreamOtterCore
import XCTest

/// The client's reading of server frames: numbers only in the protocol's ranges, anything
/// else a ServerFrameViolation (never a trap).
final class ServerFrameReaderTests: XCTestCase {
    private func reader(_ s: String, file: StaticString = #filePath, line: UInt = #line) -> ServerFrameReader {
        guard let r = ServerFrameReader(bytes(s)) else {
            XCTFail("not a JSON object: \(s)", file: file, line: line)
            return ServerFrameReader(bytes("{}"))!
        }
        return r
    }

    private func violation<T>(_ body: () throws -> T, _ fragment: String,
                              file: StaticString = #filePath, line: UInt = #line) {
        do {
            let v = try body()
            XCTFail("expected a violation mentioning '\(fragment)', got \(v)", file: file, line: line)
        } catch let e as ServerFrameViolation {
            XCTAssertTrue(e.reason.contains(fragment), "\(e.reason)", file: file, line: line)
        } catch {
            XCTFail("\(error)", file: file, line: line)
        }
    }

    func testNotAFrame() {
        XCTAssertNil(ServerFrameReader(bytes("hello")))
        XCTAssertNil(ServerFrameReader(bytes("[1,2]")))
        XCTAssertNil(ServerFrameReader(bytes("\"op\"")))
        XCTAssertNil(ServerFrameReader(bytes("{\"op\":")))
        XCTAssertNil(reader(#"{"op":5}"#).op)
        XCTAssertEqual(reader(#"{"op":"message","op":"ack"}"#).op, "message")   // the first member wins
    }

    func testTheGatewaysOwnFramesRead() throws {
        var m: [UInt8] = []
        let v = Array("{\"n\":1}".utf8)
        v.withUnsafeBytes { vb in
            ServerFrames.message(channel: "orders", partition: Int32.max, offset: Int64.max - 1, timestamp: 1733220000000,
                                 key: nil, headers: [], value: vb, into: &m)
        }
        let r = try XCTUnwrap(ServerFrameReader(m))
        XCTAssertEqual(r.op, "message")
        XCTAssertEqual(try r.partition(), Int32.max)
        XCTAssertEqual(try r.recordOffset(), Int64.max - 1)
        XCTAssertEqual(try r.timestamp(), 1733220000000)

        let a = try XCTUnwrap(ServerFrameReader(ServerFrames.ack(id: "p1", channel: "orders", partition: 2, offset: 9)))
        XCTAssertEqual(try a.partition(), 2)
        XCTAssertEqual(try a.ackOffset(), 9)

        let ok = try XCTUnwrap(ServerFrameReader(ServerFrames.subscribed(id: "s1", channel: "orders",
                                                                          offsets: [(1, 7), (0, Int64.max), (Int32.max, 0)])))
        let starts = try XCTUnwrap(try ok.startOffsets())
        XCTAssertEqual(starts.map { $0.partition }, [0, 1, Int32.max])
        XCTAssertEqual(starts.map { $0.offset }, [Int64.max, 7, 0])
        XCTAssertNil(try reader(#"{"op":"ok","id":"u1"}"#).startOffsets())
    }

    func testPartitionRange() {
        XCTAssertEqual(try reader(#"{"partition":0}"#).partition(), 0)
        XCTAssertEqual(try reader(#"{"partition":-0}"#).partition(), 0)
        XCTAssertEqual(try reader(#"{"partition":2147483647}"#).partition(), Int32.max)
        violation({ try reader(#"{"op":"message","partition":2147483648}"#).partition() }, "'message' frame: partition 2147483648 is outside 0...2147483647")
        violation({ try reader(#"{"partition":1099511627776}"#).partition() }, "outside")
        violation({ try reader(#"{"partition":-1}"#).partition() }, "partition -1 is outside")
        violation({ try reader(#"{"partition":-9223372036854775808}"#).partition() }, "outside")
        violation({ try reader(#"{"partition":99999999999999999999999}"#).partition() }, "not an integer")
        violation({ try reader(#"{"partition":1.0}"#).partition() }, "not an integer")
        violation({ try reader(#"{"partition":1e3}"#).partition() }, "not an integer")
        violation({ try reader(#"{"partition":"1"}"#).partition() }, "not an integer")
        violation({ try reader(#"{"partition":null}"#).partition() }, "not an integer")
        violation({ try reader(#"{"offset":1}"#).partition() }, "partition is missing")
    }

    func testRecordOffsetLeavesRoomForTheNextOffset() {
        XCTAssertEqual(try reader(#"{"offset":0}"#).recordOffset(), 0)
        XCTAssertEqual(try reader(#"{"offset":9223372036854775806}"#).recordOffset(), Int64.max - 1)
        violation({ try reader(#"{"offset":9223372036854775807}"#).recordOffset() }, "offset 9223372036854775807 is outside 0...9223372036854775806")
        violation({ try reader(#"{"offset":9223372036854775808}"#).recordOffset() }, "not an integer")
        violation({ try reader(#"{"offset":-1}"#).recordOffset() }, "outside")
        violation({ try reader(#"{"offset":0.5}"#).recordOffset() }, "not an integer")
        violation({ try reader(#"{}"#).recordOffset() }, "offset is missing")
    }

    func testAckOffsetAndTimestamp() {
        XCTAssertEqual(try reader(#"{"offset":-1001}"#).ackOffset(), -1001)   // acks=0: Kafka reports none
        XCTAssertEqual(try reader(#"{"offset":9223372036854775807}"#).ackOffset(), Int64.max)
        violation({ try reader(#"{"offset":9223372036854775808}"#).ackOffset() }, "not an integer")
        violation({ try reader(#"{"offset":-9223372036854775809}"#).ackOffset() }, "not an integer")

        XCTAssertEqual(try reader(#"{}"#).timestamp(), -1)
        XCTAssertEqual(try reader(#"{"timestamp":-5}"#).timestamp(), -1)
        XCTAssertEqual(try reader(#"{"timestamp":9223372036854775807}"#).timestamp(), Int64.max)
        violation({ try reader(#"{"timestamp":9223372036854775808}"#).timestamp() }, "timestamp is not an integer")
        violation({ try reader(#"{"timestamp":"now"}"#).timestamp() }, "timestamp is not an integer")
    }

    func testStartOffsets() {
        let bad: [(String, String)] = [
            (#"{"op":"ok","offsets":[0]}"#, "offsets is not an object"),
            (#"{"op":"ok","offsets":7}"#, "offsets is not an object"),
            (#"{"op":"ok","offsets":{"2147483648":0}}"#, "offsets has a key that is not a partition"),
            (#"{"op":"ok","offsets":{"-1":0}}"#, "offsets has a key that is not a partition"),
            (#"{"op":"ok","offsets":{"+1":0}}"#, "offsets has a key that is not a partition"),
            (#"{"op":"ok","offsets":{" 1":0}}"#, "offsets has a key that is not a partition"),
            (#"{"op":"ok","offsets":{"":0}}"#, "offsets has a key that is not a partition"),
            (#"{"op":"ok","offsets":{"99999999999999999999":0}}"#, "offsets has a key that is not a partition"),
            (#"{"op":"ok","offsets":{"0":-1}}"#, "offsets[0] is not an offset"),
            (#"{"op":"ok","offsets":{"3":9223372036854775808}}"#, "offsets[3] is not an offset"),
            (#"{"op":"ok","offsets":{"0":"5"}}"#, "offsets[0] is not an offset"),
            (#"{"op":"ok","offsets":{"0":1.5}}"#, "offsets[0] is not an offset"),
        ]
        for (frame, fragment) in bad {
            violation({ try reader(frame).startOffsets() }, "'ok' frame: " + fragment)
        }
        XCTAssertEqual(try reader(#"{"offsets":{}}"#).startOffsets()?.count, 0)
    }

    /// Seeded random members for every accessor: each one returns a value in its range or
    /// throws; none traps.
    func testRandomNumbersNeverTrap() {
        var rng = SplitMix64(seed: 0x5EED_F4A3)
        let pieces = ["0", "-0", "1", "-1", "2147483647", "2147483648", "-2147483649", "9223372036854775806",
                      "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
                      "1e2", "1.5", "-1.0E-3", "\"7\"", "null", "true", "[]", "{}", "18446744073709551616"]
        for _ in 0..<2000 {
            func pick() -> String { pieces[Int.random(in: 0..<pieces.count, using: &rng)] }
            let keys = [pick().filter { $0 != "\"" }, pick().filter { $0 != "\"" }]
            let frame = "{\"partition\":\(pick()),\"offset\":\(pick()),\"timestamp\":\(pick()),"
                + "\"offsets\":{\"\(keys[0])\":\(pick()),\"\(keys[1])\":\(pick())}}"
            guard let r = ServerFrameReader(bytes(frame)) else { continue }   // duplicate keys are fine; invalid JSON is not a frame
            if let p = try? r.partition() { XCTAssertTrue(p >= 0) }
            if let o = try? r.recordOffset() { XCTAssertTrue(o >= 0 && o < Int64.max) }
            _ = try? r.ackOffset()
            if let t = try? r.timestamp() { XCTAssertTrue(t >= -1) }
            if let s = try? r.startOffsets() { XCTAssertTrue(s.allSatisfy { $0.partition >= 0 && $0.offset >= 0 }) }
        }
    }
}
