import StreamOtterCore
import XCTest

/// Seeded random inputs at random split points: the parsers must never crash or hang and
/// must stay internally consistent. Bounded so the whole class runs in about a second.
final class RandomInputTests: XCTestCase {
    private func randomBytes(_ n: Int, _ rng: inout SplitMix64, biased: [UInt8] = []) -> [UInt8] {
        (0..<n).map { _ in
            if !biased.isEmpty && Bool.random(using: &rng) { return biased.randomElement(using: &rng)! }
            return UInt8.random(in: 0...255, using: &rng)
        }
    }

    private func randomChunks(_ data: [UInt8], _ rng: inout SplitMix64) -> [[UInt8]] {
        var chunks: [[UInt8]] = []
        var i = 0
        while i < data.count {
            let n = Int.random(in: 1...max(1, data.count / 3 + 1), using: &rng)
            chunks.append(Array(data[i..<min(data.count, i + n)]))
            i += n
        }
        return chunks
    }

    func testFrameDecoderRandomBytesRandomSplits() {
        var rng = SplitMix64(seed: 0x5EED_0001)
        let limits = WSLimits(maxFrameSize: 4096, maxMessageSize: 8192)
        for iteration in 0..<3000 {
            var data: [UInt8]
            if iteration % 2 == 0 {
                data = randomBytes(Int.random(in: 0..<200, using: &rng), &rng)
            } else {
                // Mostly well-formed masked frames with random corruption: reaches deeper states.
                data = []
                for _ in 0..<Int.random(in: 1...6, using: &rng) {
                    let ops: [WSOpcode] = [.text, .binary, .continuation, .ping, .pong, .close]
                    let payload = randomBytes(Int.random(in: 0..<150, using: &rng), &rng, biased: [0x61, 0xC3, 0xA9, 0x03, 0xE8])
                    data += FrameEncoder.frame(ops.randomElement(using: &rng)!, payload, fin: Bool.random(using: &rng),
                                               maskKey: UInt32.random(in: 0...UInt32.max, using: &rng))
                }
                for _ in 0..<Int.random(in: 0...2, using: &rng) where !data.isEmpty {
                    data[Int.random(in: 0..<data.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            let whole = decode([data], limits: limits)
            let split = decode(randomChunks(data, &rng), limits: limits)
            XCTAssertEqual(split, whole)
        }
    }

    func testHTTPRequestParserRandomBytesRandomSplits() {
        var rng = SplitMix64(seed: 0x5EED_0002)
        let alphabet = bytes("GET / HTTP/1.1\r\n:abc \t\u{0}\u{7f}") + [0xC3, 0xFF]
        let valid = bytes("GET /ws?a=b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        let limits = HTTPLimits(maxHeaderBytes: 256, maxHeaderCount: 8)
        for iteration in 0..<3000 {
            var data: [UInt8]
            if iteration % 2 == 0 {
                data = randomBytes(Int.random(in: 0..<300, using: &rng), &rng, biased: alphabet)
            } else {
                data = valid
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    data[Int.random(in: 0..<data.count, using: &rng)] = alphabet.randomElement(using: &rng)!
                }
            }
            // Incremental: once a prefix gives a result or error, the full input agrees
            // (a prefix that is complete consumes the same head).
            var prefixResult: Result<Int?, HTTPError>? = nil
            var end = 0
            for chunk in randomChunks(data, &rng) {
                end += chunk.count
                do {
                    if let (_, consumed) = try data[..<end].withUnsafeBytes({ try HTTPRequestParser.parse($0, limits: limits) }) {
                        XCTAssertLessThanOrEqual(consumed, end)
                        prefixResult = .success(consumed)
                        break
                    }
                } catch let e as HTTPError {
                    prefixResult = .failure(e)
                    break
                } catch {
                    XCTFail("unexpected error \(error)")
                }
            }
            let full: Result<Int?, HTTPError>
            do {
                full = .success(try data.withUnsafeBytes { try HTTPRequestParser.parse($0, limits: limits) }?.1)
            } catch let e as HTTPError {
                full = .failure(e)
            } catch {
                return XCTFail("unexpected error \(error)")
            }
            if let prefixResult = prefixResult {
                switch (prefixResult, full) {
                case let (.success(a), .success(b)): XCTAssertEqual(a, b)
                case let (.failure(a), .failure(b)): XCTAssertEqual(a.status, b.status)
                default: XCTFail("prefix \(prefixResult) vs full \(full) for \(data)")
                }
            }
        }
    }

    func testProtocolParserAndJSONRandomInput() {
        var rng = SplitMix64(seed: 0x5EED_0003)
        let alphabet = bytes("{}[]\":,\\u0123456789.eE+-truefalsenull opsubscribechannelfromdata ") + [0xC3, 0xA9, 0xFF, 0x01]
        let seeds = [
            #"{"op":"publish","id":"p1","channel":"orders","key":"k","headers":{"h":"v"},"data":{"a":[1,2.5,"\u00e9"]}}"#,
            #"{"op":"subscribe","channel":"o","from":{"offsets":{"0":1}}}"#,
            #"[1,{"a":null},true,"x\n"]"#,
        ].map(bytes)
        for iteration in 0..<4000 {
            var data: [UInt8]
            if iteration % 2 == 0 {
                data = randomBytes(Int.random(in: 0..<120, using: &rng), &rng, biased: alphabet)
            } else {
                data = seeds.randomElement(using: &rng)!
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    let i = Int.random(in: 0..<data.count, using: &rng)
                    switch Int.random(in: 0..<3, using: &rng) {
                    case 0: data[i] = alphabet.randomElement(using: &rng)!
                    case 1: data.remove(at: i)
                    default: data.insert(alphabet.randomElement(using: &rng)!, at: i)
                    }
                    if data.isEmpty { break }
                }
            }
            let valid = data.withUnsafeBytes { JSON.isValid($0) }
            let parsed = try? data.withUnsafeBytes { try JSON.parse($0) }
            XCTAssertEqual(valid, parsed != nil, "isValid and parse disagree on \(String(decoding: data, as: UTF8.self))")
            if valid {
                var compact: [UInt8] = []
                data.withUnsafeBytes { JSON.appendCompact($0, to: &compact) }
                XCTAssertEqual(try? compact.withUnsafeBytes { try JSON.parse($0) }, parsed)
            }
            do {
                let request = try data.withUnsafeBytes { try ProtocolParser.parse($0) }
                XCTAssertTrue(valid)
                if case .publish(_, _, _, _, let value) = request {
                    XCTAssertTrue(value.withUnsafeBytes { JSON.isValid($0) })
                }
            } catch let e as ProtocolError {
                XCTAssertTrue(["bad_request", "unknown_op", "invalid_channel", "invalid_from"].contains(e.code))
            } catch {
                XCTFail("unexpected error \(error)")
            }
            // Random split of the bytes as frames through the decoder, then parse.
            var decoder = FrameDecoder(limits: WSLimits(requireMasked: false))
            let frame = FrameEncoder.frame(.binary, data)
            for chunk in randomChunks(frame, &rng) {
                chunk.withUnsafeBytes { decoder.append($0) }
                if case .binary(let payload)? = try? decoder.next() { XCTAssertEqual(payload, data) }
            }
        }
    }
}
