/// A `streamotter.v1` frame that breaks the protocol: a field the client needs is missing,
/// has the wrong type, or holds a number outside the range the protocol gives it.
public struct ServerFrameViolation: Error, Equatable, Sendable, CustomStringConvertible {
    /// Says which field of which frame, and why (no text taken from the frame itself).
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Reads the fields of a frame a server sent (docs/protocol.md, "Server messages"): the
/// untrusted side of `ServerFrames`. Numbers come out only in the protocol's ranges, so a
/// client can store and do arithmetic on them without trapping:
///
/// | field | range |
/// |---|---|
/// | `partition` (of `message` and `ack`) | 0 ... 2^31-1 |
/// | `offset` of a `message` | 0 ... 2^63-2 (the next offset, `offset + 1`, fits) |
/// | `offset` of an `ack` | any int64 (negative: Kafka reported none, for example acks=0) |
/// | `timestamp` of a `message` | absent, or an int64 (negative means unknown: -1) |
/// | `offsets` of an `ok` | absent, or an object of `"<partition>": <next offset>` with partitions 0 ... 2^31-1 (decimal digits) and offsets 0 ... 2^63-1 |
///
/// Integers are JSON numbers without fraction or exponent. Anything else throws
/// `ServerFrameViolation`. Fields the client does not use are not looked at (the protocol
/// tells clients to ignore fields they do not know).
public struct ServerFrameReader {
    public let members: [(String, JSONValue)]
    /// The `op` member when it is a string.
    public let op: String?

    /// nil when `bytes` is not a JSON object: no `streamotter.v1` frame at all (a server
    /// that is not a gateway may send anything; the client hands it to the host only).
    public init?(_ bytes: [UInt8]) {
        guard let v = try? JSON.parse(bytes), case .object(let members) = v else { return nil }
        self.members = members
        op = members.first { $0.0 == "op" }?.1.stringValue
    }

    /// The first member called `key`.
    public func value(_ key: String) -> JSONValue? { members.first { $0.0 == key }?.1 }

    /// The member `key` when it is a string; nil when absent or of another type.
    public func string(_ key: String) -> String? { value(key)?.stringValue }

    /// A record's partition: required, 0 ... Int32.max.
    public func partition() throws(ServerFrameViolation) -> Int32 {
        let p = try integer("partition", in: 0...Int64(Int32.max))
        return Int32(p)
    }

    /// A record's offset (of a `message`): required, 0 ... Int64.max - 1.
    public func recordOffset() throws(ServerFrameViolation) -> Int64 {
        try integer("offset", in: 0...(Int64.max - 1))
    }

    /// An `ack`'s offset: required, any Int64 (negative when Kafka reported none).
    public func ackOffset() throws(ServerFrameViolation) -> Int64 {
        try integer("offset", in: Int64.min...Int64.max)
    }

    /// A `message`'s timestamp: -1 when absent or negative (unknown).
    public func timestamp() throws(ServerFrameViolation) -> Int64 {
        guard value("timestamp") != nil else { return -1 }
        return max(-1, try integer("timestamp", in: Int64.min...Int64.max))
    }

    /// The `offsets` of a subscribe's `ok` (partition -> next offset), sorted by partition;
    /// nil when absent.
    public func startOffsets() throws(ServerFrameViolation) -> [(partition: Int32, offset: Int64)]? {
        guard let v = value("offsets") else { return nil }
        guard case .object(let entries) = v else { throw ServerFrameViolation("\(frameName): offsets is not an object") }
        var out: [(partition: Int32, offset: Int64)] = []
        out.reserveCapacity(entries.count)
        for (k, o) in entries {
            guard let p = ServerFrameReader.decimal(k), p <= Int64(Int32.max) else {
                throw ServerFrameViolation("\(frameName): offsets has a key that is not a partition (0 to 2147483647)")
            }
            guard case .number(let text) = o, let n = Int64(text), n >= 0 else {
                throw ServerFrameViolation("\(frameName): offsets[\(p)] is not an offset (an integer 0 to 9223372036854775807)")
            }
            out.append((Int32(p), n))
        }
        return out.sorted { $0.partition < $1.partition }
    }

    private var frameName: String { "'\(op.map { String($0.unicodeScalars.prefix(16)) } ?? "?")' frame" }

    private func integer(_ key: String, in range: ClosedRange<Int64>) throws(ServerFrameViolation) -> Int64 {
        guard let v = value(key) else { throw ServerFrameViolation("\(frameName): \(key) is missing") }
        guard case .number(let text) = v, let n = Int64(text) else {
            throw ServerFrameViolation("\(frameName): \(key) is not an integer that fits in 64 bits")
        }
        guard range.contains(n) else {
            throw ServerFrameViolation("\(frameName): \(key) \(n) is outside \(range.lowerBound)...\(range.upperBound)")
        }
        return n
    }

    /// A non-negative decimal integer written with digits only (an object key).
    static func decimal(_ s: String) -> Int64? {
        guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return Int64(s)
    }
}
