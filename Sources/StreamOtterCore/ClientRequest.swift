/// A request frame from a streamotter.v1 client, as parsed by `ProtocolParser`.
public enum ClientRequest: Equatable, Sendable {
    case subscribe(id: String?, channel: String, from: StartPosition)
    case unsubscribe(id: String?, channel: String)
    /// `key` and header values are the UTF-8 bytes of the JSON strings; `value` is the
    /// compact JSON text of `data` (e.g. `{"a":1}` or `null`).
    case publish(id: String?, channel: String, key: [UInt8]?, headers: [(String, [UInt8])], value: [UInt8])
    /// A credential refresh on an open connection: `{"op":"auth","token":"..."}`.
    case auth(id: String?, token: String)

    public static func == (lhs: ClientRequest, rhs: ClientRequest) -> Bool {
        switch (lhs, rhs) {
        case let (.subscribe(i1, c1, f1), .subscribe(i2, c2, f2)):
            return i1 == i2 && c1 == c2 && f1 == f2
        case let (.unsubscribe(i1, c1), .unsubscribe(i2, c2)):
            return i1 == i2 && c1 == c2
        case let (.publish(i1, c1, k1, h1, v1), .publish(i2, c2, k2, h2, v2)):
            return i1 == i2 && c1 == c2 && k1 == k2 && v1 == v2
                && h1.count == h2.count && zip(h1, h2).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case let (.auth(i1, t1), .auth(i2, t2)):
            return i1 == i2 && t1 == t2
        default:
            return false
        }
    }

    /// The request's `id`, if it had one.
    public var id: String? {
        switch self {
        case .subscribe(let id, _, _), .unsubscribe(let id, _), .publish(let id, _, _, _, _), .auth(let id, _): return id
        }
    }

    /// The request's channel.
    public var channel: String {
        switch self {
        case .subscribe(_, let c, _), .unsubscribe(_, let c), .publish(_, let c, _, _, _): return c
        case .auth: return ""
        }
    }
}
