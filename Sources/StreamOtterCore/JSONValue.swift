/// A parsed JSON value (RFC 8259).
///
/// Rules:
/// - Numbers keep their literal text (`"1.50"` stays `1.50`) so nothing is lost to Double.
/// - Objects keep member order and duplicates, as pairs (`subscript(key:)` finds the first
///   of a repeated name; `duplicateMemberName` tells whether there is one).
/// - Equality is structural and order-sensitive for object members.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.number(a), .number(b)): return a == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// The value of the first member called `key` when this is an object; else nil.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for (k, v) in members where k == key { return v }
        return nil
    }

    /// A member name that occurs twice in one object, looking into nested objects and arrays
    /// too (the outer object first); nil when no object repeats a name. Names are compared as
    /// `String`s (Unicode canonical equivalence), the way `subscript(key:)` matches them, so
    /// two names that lookup cannot tell apart count as a repeat. For input whose meaning
    /// must not depend on which of two members a reader takes (RFC 7519 section 4 lets a JWT
    /// parser reject such claims or take the last one; others take the last, `subscript`
    /// the first).
    public var duplicateMemberName: String? {
        switch self {
        case .array(let items):
            for item in items {
                if let d = item.duplicateMemberName { return d }
            }
            return nil
        case .object(let members):
            if members.count > 1 {
                var seen = Set<String>(minimumCapacity: members.count)
                for (k, _) in members where !seen.insert(k).inserted { return k }
            }
            for (_, v) in members {
                if let d = v.duplicateMemberName { return d }
            }
            return nil
        default:
            return nil
        }
    }

    /// The string when this is `.string`; else nil.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// Compact JSON text for this value (member order kept, strings escaped as by
    /// `JSON.appendString`).
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        append(to: &out)
        return out
    }

    /// Appends compact JSON text for this value to `out`.
    public func append(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .number(let n): out.append(contentsOf: n.utf8)
        case .string(let s): JSON.appendString(s, to: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                item.append(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (i, (k, v)) in members.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSON.appendString(k, to: &out)
                out.append(UInt8(ascii: ":"))
                v.append(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }
}
