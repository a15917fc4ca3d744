/// Payloads of the streamotter.v1 frames the server sends: compact UTF-8 JSON, fields in a
/// fixed order, `id` omitted when nil.
public enum ServerFrames {
    /// `{"op":"ok","id":"s1"}`
    public static func ok(id: String?) -> [UInt8] {
        var out = opening("ok")
        appendId(id, to: &out)
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// `{"op":"ack","id":"p1","channel":"orders","partition":0,"offset":123}`
    public static func ack(id: String?, channel: String, partition: Int32, offset: Int64) -> [UInt8] {
        var out: [UInt8] = []
        appendAck(id: id, channel: channel, partition: partition, offset: offset, to: &out)
        return out
    }

    /// Appends the `ack` payload to `out` (the hot path reuses one buffer).
    public static func appendAck(id: String?, channel: String, partition: Int32, offset: Int64, to out: inout [UInt8]) {
        out.reserveCapacity(out.count + 64 + (id?.utf8.count ?? 0) + channel.utf8.count)
        appendStatic(#"{"op":"ack""#, to: &out)
        appendId(id, to: &out)
        appendKey("channel", to: &out)
        JSON.appendString(channel, to: &out)
        appendKey("partition", to: &out)
        appendDecimal(Int64(partition), to: &out)
        appendKey("offset", to: &out)
        appendDecimal(offset, to: &out)
        out.append(UInt8(ascii: "}"))
    }

    /// Appends the decimal digits of `value`.
    static func appendDecimal(_ value: Int64, to out: inout [UInt8]) {
        if value < 0 { out.append(UInt8(ascii: "-")) }
        var m = value.magnitude
        if m < 10 {
            out.append(0x30 + UInt8(m))
            return
        }
        // Digits into a stack tuple, then appended in order.
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { buf in
            var i = buf.count
            while m > 0 {
                i -= 1
                buf[i] = 0x30 + UInt8(m % 10)
                m /= 10
            }
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buf[i...]))
        }
    }

    private static func appendStatic(_ text: StaticString, to out: inout [UInt8]) {
        out.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// `{"op":"error","id":"p1","code":"forbidden","message":"..."}`
    public static func error(id: String?, code: String, message: String) -> [UInt8] {
        var out = opening("error")
        appendId(id, to: &out)
        appendKey("code", to: &out)
        JSON.appendString(code, to: &out)
        appendKey("message", to: &out)
        JSON.appendString(message, to: &out)
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// Whether a header value goes in `"headers_base64"` (neither null nor UTF-8).
    @inline(__always)
    private static func isBinary(_ v: UnsafeRawBufferPointer?) -> Bool {
        if let v = v { return !UTF8Validator.isValid(v) }
        return false
    }

    /// Appends `{"name":value,...}` for the headers whose `isBinary` is `binary`, in record
    /// order. Kafka allows a name more than once; JSON parsers keep one of a repeated
    /// member, so a repeated name gets one member, at the place of its first occurrence,
    /// whose value is the array of its values in order (`{"x":["1","2"]}`).
    private static func appendHeaderObject(_ headers: [(String, UnsafeRawBufferPointer?)], binary: Bool,
                                           to out: inout [UInt8],
                                           _ value: (UnsafeRawBufferPointer?, inout [UInt8]) -> Void) {
        out.append(UInt8(ascii: "{"))
        var repeated = false
        if headers.count > 1 {
            var names = Set<String>(minimumCapacity: headers.count)
            for (name, v) in headers where isBinary(v) == binary && !names.insert(name).inserted {
                repeated = true
                break
            }
        }
        if !repeated {
            var first = true
            for (name, v) in headers where isBinary(v) == binary {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                JSON.appendString(name, to: &out)
                out.append(UInt8(ascii: ":"))
                value(v, &out)
            }
        } else {
            var order: [String] = []
            var groups: [String: [Int]] = [:]
            for (i, (name, v)) in headers.enumerated() where isBinary(v) == binary {
                if groups[name] == nil { order.append(name) }
                groups[name, default: []].append(i)
            }
            for (n, name) in order.enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                JSON.appendString(name, to: &out)
                out.append(UInt8(ascii: ":"))
                let members = groups[name]!
                if members.count == 1 {
                    value(headers[members[0]].1, &out)
                    continue
                }
                out.append(UInt8(ascii: "["))
                for (k, i) in members.enumerated() {
                    if k > 0 { out.append(UInt8(ascii: ",")) }
                    value(headers[i].1, &out)
                }
                out.append(UInt8(ascii: "]"))
            }
        }
        out.append(UInt8(ascii: "}"))
    }

    /// Appends a `message` frame payload to `out`:
    /// `{"op":"message","channel":..,"partition":..,"offset":..,"timestamp":..,"key":..,"headers":{..},"data":..}`
    ///
    /// Rules:
    /// - `timestamp` omitted when negative (unknown).
    /// - `key` omitted when nil; `"key"` when valid UTF-8, else `"key_base64"`.
    /// - headers: those with a UTF-8 (or nil -> null) value go in `"headers"`, the others
    ///   Base64-encoded in `"headers_base64"`; each object omitted when it would be empty;
    ///   a name repeated within one object gets the array of its values.
    /// - value nil -> `"data":null`; valid JSON -> `"data"` in compact form; else valid
    ///   UTF-8 -> `"text"`; else `"base64"`.
    public static func message(channel: String, partition: Int32, offset: Int64, timestamp: Int64,
                               key: UnsafeRawBufferPointer?, headers: [(String, UnsafeRawBufferPointer?)],
                               value: UnsafeRawBufferPointer?, into out: inout [UInt8]) {
        out.reserveCapacity(out.count + 96 + (value?.count ?? 0) + (key?.count ?? 0))
        out.append(contentsOf: #"{"op":"message""#.utf8)
        appendKey("channel", to: &out)
        JSON.appendString(channel, to: &out)
        appendKey("partition", to: &out)
        out.append(contentsOf: String(partition).utf8)
        appendKey("offset", to: &out)
        out.append(contentsOf: String(offset).utf8)
        if timestamp >= 0 {
            appendKey("timestamp", to: &out)
            out.append(contentsOf: String(timestamp).utf8)
        }
        if let key = key {
            if UTF8Validator.isValid(key) {
                appendKey("key", to: &out)
                JSON.appendString(key, to: &out)
            } else {
                appendKey("key_base64", to: &out)
                appendBase64String(key, to: &out)
            }
        }
        if !headers.isEmpty {
            var textCount = 0
            var binaryCount = 0
            for (_, v) in headers {
                if isBinary(v) { binaryCount += 1 } else { textCount += 1 }
            }
            if textCount > 0 {
                appendKey("headers", to: &out)
                appendHeaderObject(headers, binary: false, to: &out) { v, out in
                    if let v = v { JSON.appendString(v, to: &out) } else { out.append(contentsOf: "null".utf8) }
                }
            }
            if binaryCount > 0 {
                appendKey("headers_base64", to: &out)
                appendHeaderObject(headers, binary: true, to: &out) { v, out in appendBase64String(v!, to: &out) }
            }
        }
        if let value = value {
            if JSON.isValid(value) {
                appendKey("data", to: &out)
                JSON.appendCompact(value, to: &out)
            } else if UTF8Validator.isValid(value) {
                appendKey("text", to: &out)
                JSON.appendString(value, to: &out)
            } else {
                appendKey("base64", to: &out)
                appendBase64String(value, to: &out)
            }
        } else {
            appendKey("data", to: &out)
            out.append(contentsOf: "null".utf8)
        }
        out.append(UInt8(ascii: "}"))
    }

    private static func opening(_ op: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        out.append(contentsOf: #"{"op":""#.utf8)
        out.append(contentsOf: op.utf8)
        out.append(UInt8(ascii: "\""))
        return out
    }

    private static func appendId(_ id: String?, to out: inout [UInt8]) {
        guard let id = id else { return }
        appendKey("id", to: &out)
        JSON.appendString(id, to: &out)
    }

    /// Appends `,"name":`.
    private static func appendKey(_ name: StaticString, to out: inout [UInt8]) {
        out.append(UInt8(ascii: ","))
        out.append(UInt8(ascii: "\""))
        out.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        out.append(UInt8(ascii: "\""))
        out.append(UInt8(ascii: ":"))
    }

    private static func appendBase64String(_ bytes: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        Base64.append(bytes, to: &out)
        out.append(UInt8(ascii: "\""))
    }
}

extension ServerFrames {
    /// The answer to a subscribe: `{"op":"ok","id":"s1","channel":"orders","offsets":{"0":42,"1":7}}`
    /// with the next offset of every partition at which the subscription starts, so a client
    /// can resume every partition, including those that have not delivered anything yet.
    public static func subscribed(id: String?, channel: String, offsets: [(Int32, Int64)]) -> [UInt8] {
        var out = Array("{\"op\":\"ok\"".utf8)
        if let id {
            out.append(contentsOf: ",\"id\":".utf8)
            JSON.appendString(id, to: &out)
        }
        out.append(contentsOf: ",\"channel\":".utf8)
        JSON.appendString(channel, to: &out)
        out.append(contentsOf: ",\"offsets\":{".utf8)
        for (i, (p, o)) in offsets.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: "\"\(p)\":\(o)".utf8)
        }
        out.append(contentsOf: "}}".utf8)
        return out
    }
}
