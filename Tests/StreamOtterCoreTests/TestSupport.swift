import StreamOtterCore
import XCTest

/// Bytes from hex text; spaces and newlines are ignored.
func hex(_ text: String) -> [UInt8] {
    let digits = text.unicodeScalars.filter { !$0.properties.isWhitespace }
    precondition(digits.count % 2 == 0, "odd hex digit count")
    var out: [UInt8] = []
    var iterator = digits.makeIterator()
    while let hi = iterator.next(), let lo = iterator.next() {
        out.append(UInt8(String(hi), radix: 16)! << 4 | UInt8(String(lo), radix: 16)!)
    }
    return out
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Deterministic PRNG (SplitMix64) so random tests are reproducible from their seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Everything a decoder produced for a byte stream: the events and the terminal error.
struct DecodeOutcome: Equatable, CustomStringConvertible {
    var events: [WSEvent] = []
    var error: WSProtocolError? = nil
    var description: String { "events: \(events) error: \(String(describing: error))" }
}

/// Feeds `chunks` one append() at a time into a fresh decoder, draining events after each.
func decode(_ chunks: [[UInt8]], limits: WSLimits = WSLimits()) -> DecodeOutcome {
    var decoder = FrameDecoder(limits: limits)
    return decode(chunks, with: &decoder)
}

func decode(_ chunks: [[UInt8]], with decoder: inout FrameDecoder) -> DecodeOutcome {
    var outcome = DecodeOutcome()
    for chunk in chunks {
        chunk.withUnsafeBytes { decoder.append($0) }
        do {
            while let event = try decoder.next() { outcome.events.append(event) }
        } catch let error as WSProtocolError {
            outcome.error = error
            return outcome
        } catch {
            XCTFail("unexpected error type \(error)")
            return outcome
        }
    }
    return outcome
}

/// Checks that feeding `stream` whole, byte by byte, and split at every point into two
/// parts all give the same outcome; returns it.
@discardableResult
func assertSplitInvariant(_ stream: [UInt8], limits: WSLimits = WSLimits(), file: StaticString = #filePath, line: UInt = #line) -> DecodeOutcome {
    let whole = decode([stream], limits: limits)
    let byByte = decode(stream.map { [$0] }, limits: limits)
    XCTAssertEqual(byByte, whole, "byte-by-byte differs", file: file, line: line)
    for split in 0...stream.count {
        let parts = [Array(stream[..<split]), Array(stream[split...])]
        let outcome = decode(parts, limits: limits)
        XCTAssertEqual(outcome, whole, "split at \(split) differs", file: file, line: line)
    }
    return whole
}

/// A masked client frame.
func clientFrame(_ opcode: WSOpcode, _ payload: [UInt8], fin: Bool = true, key: UInt32 = 0x37FA_213D) -> [UInt8] {
    FrameEncoder.frame(opcode, payload, fin: fin, maskKey: key)
}

func withBytes<R>(_ s: String, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
    try Array(s.utf8).withUnsafeBytes(body)
}
