/// Parses streamotter.v1 client request frames (the payload of one text frame).
///
/// Request shapes:
/// - `{"op":"subscribe","id":"s1","channel":"orders","from":"latest"}`; `from` is
///   `"latest"` (default), `"earliest"`, `{"offsets":{"0":42,"1":7}}` or
///   `{"timestamp":1700000000000}`.
/// - `{"op":"unsubscribe","id":"u1","channel":"orders"}`
/// - `{"op":"publish","id":"p1","channel":"orders","key":"k","headers":{"h":"v"},"data":<any JSON>}`
///
/// Rules:
/// - Not a JSON object (or not JSON at all), a field of the wrong type, a missing required
///   field, or a duplicated top-level field -> `bad_request`.
/// - `op` missing, not a string, or not subscribe/unsubscribe/publish/auth -> `unknown_op`
/// - `auth` without a string `token` -> `bad_request`
/// - `channel` not matching `[A-Za-z0-9._-]{1,249}`, or `.` or `..` -> `invalid_channel`.
/// - `from` malformed; partition keys not canonical decimal integers in 0...Int32.max;
///   offsets or timestamp not non-negative integers fitting Int64 (no fraction or
///   exponent); `offsets` empty -> `invalid_from`.
/// - `headers` must be an object of strings whose names contain no NUL and do not repeat
///   -> `bad_request`.
/// - `id`, when present, must be a string of at most 256 Unicode scalars; it is carried
///   into every later error so the reply can name the request.
/// - An optional field (`id`, `from`, `key`, `headers`) set to null counts as absent.
///   Unknown fields are ignored (forward compatibility).
/// - Checks run in this order: JSON object, id, op, channel, op-specific fields.
/// - `data` is never turned into a `JSONValue`: its byte range is validated in place and
///   copied out in compact form.
public enum ProtocolParser {
    public static let maxIdLength = 256
    public static let maxChannelLength = 249

    /// The top-level fields the protocol knows, recognised from their bytes without
    /// building a String; other fields are validated and skipped.
    private enum Known: Int {
        case op, id, channel, key, headers, token, from

        static func match(_ b: UnsafeRawBufferPointer) -> Known? {
            func eq(_ name: StaticString) -> Bool { bytesEqual(b, name) }
            switch b.count {
            case 2: return eq("op") ? .op : eq("id") ? .id : nil
            case 3: return eq("key") ? .key : nil
            case 4: return eq("from") ? .from : nil
            case 5: return eq("token") ? .token : nil
            case 7: return eq("channel") ? .channel : eq("headers") ? .headers : nil
            default: return nil
            }
        }

        var name: String {
            switch self {
            case .op: return "op"
            case .id: return "id"
            case .channel: return "channel"
            case .key: return "key"
            case .headers: return "headers"
            case .token: return "token"
            case .from: return "from"
            }
        }
    }

    /// The id an error reply names when the request could not be read to its end: the
    /// `id` member read so far, if it is a string within the length limit.
    private static func readableID(_ v: JSONValue?) -> String? {
        guard case .string(let s)? = v else { return nil }
        if s.utf8.count > maxIdLength && s.unicodeScalars.count > maxIdLength { return nil }
        return s
    }

    /// Parses one text frame; throws `ProtocolError`.
    public static func parse(_ text: UnsafeRawBufferPointer) throws -> ClientRequest {
        // Known fields by `Known.rawValue`; names of unknown ones only to catch duplicates.
        var known: (JSONValue?, JSONValue?, JSONValue?, JSONValue?, JSONValue?, JSONValue?, JSONValue?)
            = (nil, nil, nil, nil, nil, nil, nil)
        var seen: UInt8 = 0
        var unknownNames = Set<[UInt8]>()
        var dataRange: Range<Int>? = nil
        do {
            var scanner = JSONScanner(text)
            scanner.skipWhitespace()
            guard scanner.peek() == UInt8(ascii: "{") else {
                _ = try JSON.parse(text)  // invalid JSON reports as such
                throw ProtocolError(code: "bad_request", message: "request must be a JSON object", id: nil)
            }
            scanner.index += 1
            scanner.skipWhitespace()
            if scanner.peek() == UInt8(ascii: "}") {
                scanner.index += 1
            } else {
                while true {
                    scanner.skipWhitespace()
                    guard scanner.peek() == UInt8(ascii: "\"") else { throw scanner.error("expected string key") }
                    // The key's bytes: in place when it has no escape, else decoded.
                    let keyStart = scanner.index
                    var decodedKey: [UInt8] = []
                    if try !scanner.scanString(into: nil) {
                        scanner.index = keyStart
                        _ = try withUnsafeMutablePointer(to: &decodedKey) { try scanner.scanString(into: $0) }
                    }
                    let keyEnd = scanner.index
                    scanner.skipWhitespace()
                    try scanner.expect(UInt8(ascii: ":"))
                    try withKeyBytes(text, keyStart, keyEnd, decodedKey) { name in
                        if bytesEqual(name, "data") {
                            scanner.skipWhitespace()
                            let start = scanner.index
                            try scanner.skipValue(depth: 1)
                            if dataRange != nil {
                                throw ProtocolError(code: "bad_request", message: "duplicate field data", id: nil)
                            }
                            dataRange = start..<scanner.index
                        } else if let k = Known.match(name) {
                            let value = try scanner.parseValue(depth: 1)
                            let bit = UInt8(1) << UInt8(k.rawValue)
                            if seen & bit != 0 {
                                throw ProtocolError(code: "bad_request", message: "duplicate field \(k.name)", id: nil)
                            }
                            seen |= bit
                            switch k {
                            case .op: known.0 = value
                            case .id: known.1 = value
                            case .channel: known.2 = value
                            case .key: known.3 = value
                            case .headers: known.4 = value
                            case .token: known.5 = value
                            case .from: known.6 = value
                            }
                        } else {
                            try scanner.skipValue(depth: 1)
                            // A set: a frame of many thousand distinct unknown keys must not
                            // cost a quadratic number of comparisons on the loop thread.
                            let n = Array(name)
                            if !unknownNames.insert(n).inserted {
                                throw ProtocolError(code: "bad_request", message: "duplicate field \(String(decoding: n, as: UTF8.self))", id: nil)
                            }
                        }
                    }
                    scanner.skipWhitespace()
                    guard let d = scanner.peek() else { throw scanner.error("unterminated object") }
                    scanner.index += 1
                    if d == UInt8(ascii: "}") { break }
                    if d != UInt8(ascii: ",") { scanner.index -= 1; throw scanner.error("expected ',' or '}'") }
                }
            }
            scanner.skipWhitespace()
            if !scanner.isAtEnd { throw scanner.error("trailing characters") }
        } catch let error as JSONError {
            throw ProtocolError(code: "bad_request", message: "invalid JSON: \(error.message) at byte \(error.offset)",
                                id: readableID(known.1))
        } catch let error as ProtocolError where error.id == nil {
            // A problem found after the id was read (a duplicate field, say) still names it.
            throw ProtocolError(code: error.code, message: error.message, id: readableID(known.1))
        }

        /// A known field's value; for optional fields a null counts as absent.
        func value(_ k: Known) -> JSONValue? {
            switch k {
            case .op: return known.0
            case .id: return known.1
            case .channel: return known.2
            case .key: return known.3
            case .headers: return known.4
            case .token: return known.5
            case .from: return known.6
            }
        }
        func field(_ k: Known) -> JSONValue? {
            if case .null? = value(k) { return nil }
            return value(k)
        }

        // id
        var id: String? = nil
        if let value = field(.id) {
            guard case .string(let s) = value else {
                throw ProtocolError(code: "bad_request", message: "id must be a string", id: nil)
            }
            if s.utf8.count > maxIdLength && s.unicodeScalars.count > maxIdLength {
                throw ProtocolError(code: "bad_request", message: "id longer than \(maxIdLength) characters", id: nil)
            }
            id = s
        }
        func fail(_ code: String, _ message: String) -> ProtocolError {
            ProtocolError(code: code, message: message, id: id)
        }

        // op
        let op: String
        switch value(.op) {
        case .string(let s)?: op = s
        case nil: throw fail("unknown_op", "missing op")
        default: throw fail("unknown_op", "op must be a string")
        }
        guard op == "subscribe" || op == "unsubscribe" || op == "publish" || op == "auth" else {
            throw fail("unknown_op", "unknown op")
        }
        if op == "auth" {
            guard case .string(let token)? = value(.token), !token.isEmpty else {
                throw fail("bad_request", "auth needs a string token")
            }
            return .auth(id: id, token: token)
        }

        // channel
        guard let channelValue = value(.channel) else {
            throw fail("bad_request", "missing field channel")
        }
        guard case .string(let channel) = channelValue else { throw fail("bad_request", "channel must be a string") }
        if !isValidChannel(channel) {
            throw fail("invalid_channel", "channel must match [A-Za-z0-9._-]{1,\(maxChannelLength)} and not be . or ..")
        }

        switch op {
        case "subscribe":
            let from = try startPosition(field(.from), fail: fail)
            return .subscribe(id: id, channel: channel, from: from)
        case "unsubscribe":
            return .unsubscribe(id: id, channel: channel)
        default:
            guard let range = dataRange else { throw fail("bad_request", "missing field data") }
            var key: [UInt8]? = nil
            if let keyValue = field(.key) {
                guard case .string(let s) = keyValue else { throw fail("bad_request", "key must be a string") }
                key = Array(s.utf8)
            }
            var headers: [(String, [UInt8])] = []
            if let headersValue = field(.headers) {
                guard case .object(let members) = headersValue else {
                    throw fail("bad_request", "headers must be an object of strings")
                }
                headers.reserveCapacity(members.count)
                // A JSON object with a repeated name is read differently by different
                // parsers (most keep the last): refuse it, as for top-level fields.
                if members.count > 1 {
                    var names = Set<String>(minimumCapacity: members.count)
                    for (name, _) in members where !names.insert(name).inserted {
                        throw fail("bad_request", "duplicate header \(name)")
                    }
                }
                for (name, value) in members {
                    guard case .string(let s) = value else {
                        throw fail("bad_request", "header \(name) must be a string")
                    }
                    // C consumers read header names up to the first NUL: a name with one
                    // could pose as another (the reserved streamotter-id among them).
                    if name.utf8.contains(0) {
                        throw fail("bad_request", "header names must not contain NUL (\\u0000)")
                    }
                    headers.append((name, Array(s.utf8)))
                }
            }
            var value: [UInt8] = []
            JSON.appendCompact(UnsafeRawBufferPointer(rebasing: text[range]), to: &value)
            return .publish(id: id, channel: channel, key: key, headers: headers, value: value)
        }
    }

    @inline(__always)
    static func bytesEqual(_ b: UnsafeRawBufferPointer, _ name: StaticString) -> Bool {
        let n = name.utf8CodeUnitCount
        guard n == b.count else { return false }
        let p = name.utf8Start
        for i in 0..<n where b[i] != p[i] { return false }
        return true
    }

    /// Calls `body` with a key's bytes: in place (between the quotes at `start` and `end`)
    /// when it had no escape, else `decoded`.
    private static func withKeyBytes(_ text: UnsafeRawBufferPointer, _ start: Int, _ end: Int, _ decoded: [UInt8],
                                     _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        if decoded.isEmpty {
            try body(UnsafeRawBufferPointer(rebasing: text[(start + 1)..<(end - 1)]))
        } else {
            try decoded.withUnsafeBytes { try body($0) }
        }
    }

    /// Parses one text frame given as an array.
    public static func parse(_ text: [UInt8]) throws -> ClientRequest {
        try text.withUnsafeBytes { try parse($0) }
    }

    /// True when `channel` matches `[A-Za-z0-9._-]{1,249}` and is not `.` or `..` (Kafka's
    /// rule for topic names: those two are refused by the broker).
    public static func isValidChannel(_ channel: String) -> Bool {
        let utf8 = channel.utf8
        if utf8.isEmpty || utf8.count > maxChannelLength { return false }
        if channel == "." || channel == ".." { return false }
        for c in utf8 {
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                continue
            default:
                return false
            }
        }
        return true
    }

    private static func startPosition(_ value: JSONValue?, fail: (String, String) -> ProtocolError) throws -> StartPosition {
        let usage = "from must be \"latest\", \"earliest\", {\"offsets\":{\"<partition>\":<offset>}} or {\"timestamp\":<ms>}"
        guard let value = value else { return .latest }
        switch value {
        case .string("latest"): return .latest
        case .string("earliest"): return .earliest
        case .object(let members) where members.count == 1:
            let (name, inner) = members[0]
            if name == "timestamp" {
                guard case .number(let n) = inner, let ms = nonNegativeInt64(n) else {
                    throw fail("invalid_from", "timestamp must be an integer >= 0")
                }
                return .timestamp(ms)
            }
            if name == "offsets" {
                guard case .object(let entries) = inner, !entries.isEmpty else {
                    throw fail("invalid_from", "offsets must be a non-empty object")
                }
                var offsets: [Int32: Int64] = [:]
                for (partitionText, offsetValue) in entries {
                    guard let partition = nonNegativeInt64(partitionText), partition <= Int64(Int32.max) else {
                        throw fail("invalid_from", "partition must be an integer >= 0")
                    }
                    guard case .number(let n) = offsetValue, let offset = nonNegativeInt64(n) else {
                        throw fail("invalid_from", "offset must be an integer >= 0")
                    }
                    if offsets.updateValue(offset, forKey: Int32(partition)) != nil {
                        throw fail("invalid_from", "partition \(partition) given twice")
                    }
                }
                return .offsets(offsets)
            }
            throw fail("invalid_from", usage)
        default:
            throw fail("invalid_from", usage)
        }
    }

    /// Canonical non-negative decimal integer (`0` or `[1-9][0-9]*`) fitting Int64; else nil.
    static func nonNegativeInt64(_ text: String) -> Int64? {
        let utf8 = text.utf8
        guard let first = utf8.first, first >= 0x30, first <= 0x39 else { return nil }
        if first == 0x30 && utf8.count > 1 { return nil }
        var value: Int64 = 0
        for c in utf8 {
            guard c >= 0x30 && c <= 0x39 else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(c - 0x30))
            if o1 || o2 { return nil }
            value = a
        }
        return value
    }
}
