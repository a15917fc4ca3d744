// libFuzzer target: the streamotter.v1 request parser (ProtocolParser).
// Rules checked: a refused request gets one of the documented codes (bad_request,
// unknown_op, invalid_channel, invalid_from); an accepted one has a valid channel, an id of
// at most 256 characters, offsets and timestamps >= 0, and a publish value that is valid
// compact JSON (parsing it and writing it compactly again gives the same bytes).

private let codes: Set<String> = ["bad_request", "unknown_op", "invalid_channel", "invalid_from"]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    do {
        let req = try ProtocolParser.parse(bytes)
        func checkId(_ id: String?) {
            if let id { check(id.unicodeScalars.count <= ProtocolParser.maxIdLength, "id too long") }
        }
        switch req {
        case .subscribe(let id, let channel, let from):
            checkId(id)
            check(ProtocolParser.isValidChannel(channel), "invalid channel accepted")
            switch from {
            case .offsets(let o): check(!o.isEmpty && o.allSatisfy { $0.key >= 0 && $0.value >= 0 }, "bad offsets \(o)")
            case .timestamp(let t): check(t >= 0, "negative timestamp")
            default: break
            }
        case .unsubscribe(let id, let channel):
            checkId(id)
            check(ProtocolParser.isValidChannel(channel), "invalid channel accepted")
        case .publish(let id, let channel, _, _, let value):
            checkId(id)
            check(ProtocolParser.isValidChannel(channel), "invalid channel accepted")
            guard let v = try? JSON.parse(value) else { return fatalErrorReturn("publish value is not JSON") }
            _ = v
            var again: [UInt8] = []
            value.withUnsafeBytes { JSON.appendCompact($0, to: &again) }
            check(again == value, "publish value not in compact form")
        default:
            break  // operations added later (auth, ...) have their own tests
        }
    } catch let e as ProtocolError {
        check(codes.contains(e.code), "undocumented error code \(e.code)")
    } catch {
        check(false, "unexpected error type \(error)")
    }
    return 0
}

private func fatalErrorReturn(_ m: String) -> CInt { check(false, m); return 0 }
