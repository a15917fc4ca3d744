// Shared by the libFuzzer harnesses (built by Tests/fuzz/build.sh with
// `swiftc -sanitize=fuzzer,address` together with Sources/StreamOtterCore).
// A harness traps (a finding) when a documented rule is broken, not only on a crash.

/// Input bytes plus a cursor for taking split points from the input itself.
struct FuzzInput {
    let bytes: [UInt8]
    init(_ data: UnsafePointer<UInt8>, _ size: Int) {
        bytes = Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// Splits `payload` at points derived from `seed` (1 to 8 chunks, some empty).
    func chunks(_ payload: ArraySlice<UInt8>, seed: UInt8) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var rest = payload
        var s = UInt32(seed) &* 2654435761 | 1
        let pieces = Int(seed % 8) + 1
        for i in 0..<pieces {
            if i == pieces - 1 || rest.isEmpty {
                out.append(Array(rest))
                break
            }
            s ^= s << 13; s ^= s >> 17; s ^= s << 5
            let n = Int(s % UInt32(rest.count + 1))
            out.append(Array(rest.prefix(n)))
            rest = rest.dropFirst(n)
        }
        return out
    }
}

@inline(never)
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("fuzz finding: \(message())") }
}
