// libFuzzer target: RFC 6455 frame decoder (FrameDecoder), fed at input-chosen split points.
// Rules checked: a rejected input closes with 1002, 1007 or 1009 only; the same bytes give
// the same events and the same error whatever the split points; text is valid UTF-8;
// control payloads are at most 125 bytes; no message exceeds maxMessageSize; buffered
// bytes never exceed what was fed plus nothing (no unbounded allocation).

private let limits = WSLimits(maxFrameSize: 4096, maxMessageSize: 8192, requireMasked: true)

private func decode(_ chunks: [[UInt8]]) -> ([WSEvent], UInt16?) {
    var d = FrameDecoder(limits: limits)
    var events: [WSEvent] = []
    var fed = 0
    for c in chunks {
        d.append(c)
        fed += c.count
        while true {
            do {
                guard let e = try d.next() else { break }
                events.append(e)
            } catch let e as WSProtocolError {
                check([1002, 1007, 1009].contains(e.closeCode), "undocumented close code \(e.closeCode)")
                return (events, e.closeCode)
            } catch {
                check(false, "unexpected error type \(error)")
            }
        }
        check(d.bufferedBytes <= fed + limits.maxMessageSize, "buffered \(d.bufferedBytes) after feeding \(fed)")
    }
    return (events, nil)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let input = FuzzInput(data, size)
    let payload = input.bytes.dropFirst()
    let (whole, wholeErr) = decode([Array(payload)])
    let (split, splitErr) = decode(input.chunks(payload, seed: input.bytes[0]))
    check(whole == split && wholeErr == splitErr, "split points changed the outcome")
    for e in whole {
        switch e {
        case .text(let t):
            check(String(validating: t, as: UTF8.self) != nil, "invalid UTF-8 delivered")
            check(t.count <= limits.maxMessageSize, "text over the limit")
        case .binary(let b): check(b.count <= limits.maxMessageSize, "binary over the limit")
        case .ping(let p), .pong(let p): check(p.count <= 125, "control payload over 125")
        case .close(let code, let reason):
            check(code == nil ? reason.isEmpty : true, "reason without code")
            check(String(validating: reason, as: UTF8.self) != nil, "close reason not UTF-8")
        }
    }
    return 0
}
