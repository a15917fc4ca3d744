// libFuzzer target: HTTP/1.1 request head parser and WebSocket upgrade decision.
// Rules checked: a rejected head is answered 400, 431 or 505 (parser) and an upgrade is
// refused with 400, 405 or 426 (handshake); the result does not depend on how the bytes
// were split (feeding grows the buffer, as the server does); the parser never consumes
// more than it was given, nor claims a head larger than maxHeaderBytes.

private let limits = HTTPLimits(maxHeaderBytes: 1024, maxHeaderCount: 16)

private enum Outcome: Equatable {
    case incomplete
    case error(Int)
    case request(String, String, Int, Int)  // method, target, header count, consumed
}

private func parse(_ chunks: [[UInt8]]) -> Outcome {
    var head: [UInt8] = []
    var last = Outcome.incomplete
    for c in chunks {
        head += c
        do {
            if let (req, consumed) = try HTTPRequestParser.parse(head, limits: limits) {
                check(consumed <= head.count, "consumed \(consumed) of \(head.count)")
                check(consumed <= limits.maxHeaderBytes + 4, "head of \(consumed) bytes accepted")
                return .request(req.method, req.target, req.headers.count, consumed)
            }
            last = .incomplete
        } catch let e as HTTPError {
            check([400, 431, 505].contains(e.status), "undocumented status \(e.status)")
            return .error(e.status)
        } catch {
            check(false, "unexpected error type \(error)")
        }
    }
    return last
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHandshake(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let input = FuzzInput(data, size)
    let payload = input.bytes.dropFirst()
    let whole = parse([Array(payload)])
    let split = parse(input.chunks(payload, seed: input.bytes[0]))
    // Fed in pieces, a head may be complete earlier (a prefix) only if the whole input
    // starts with the same head: both must agree on what was parsed or refused.
    check(whole == split, "split points changed the outcome: \(whole) vs \(split)")
    if case .request = whole, let (req, _) = try? HTTPRequestParser.parse(Array(payload), limits: limits) {
        switch WebSocketHandshake.evaluate(req, supported: ["streamotter.v1"]) {
        case .accept(let key, let proto):
            check(key.utf8.count == 28, "accept key of \(key.utf8.count) chars")
            check(proto == nil || proto == "streamotter.v1", "picked \(proto ?? "")")
        case .reject(let status, _, _):
            check([400, 405, 426].contains(status), "undocumented handshake status \(status)")
        }
    }
    return 0
}
