/// The head of an HTTP/1.x request as parsed by `HTTPRequestParser`.
///
/// Header names keep their original spelling; lookups are case-insensitive (ASCII).
public struct HTTPRequest: Sendable {
    public var method: String
    /// The request target exactly as sent, e.g. `/ws?token=abc`.
    public var target: String
    /// `target` up to (not including) the first `?`.
    public var path: String
    /// The part of `target` after the first `?`; nil when there is no `?`.
    public var query: String?
    /// `HTTP/1.1` or `HTTP/1.0`.
    public var version: String
    /// Headers in arrival order, values with surrounding whitespace removed.
    public var headers: [(name: String, value: String)]

    public init(method: String, target: String, version: String, headers: [(name: String, value: String)]) {
        self.method = method
        self.target = target
        if let q = target.firstIndex(of: "?") {
            path = String(target[..<q])
            query = String(target[target.index(after: q)...])
        } else {
            path = target
            query = nil
        }
        self.version = version
        self.headers = headers
    }

    /// The value of the first header called `name` (ASCII case-insensitive), or nil.
    public func header(_ name: String) -> String? {
        for h in headers where HTTPRequest.namesEqual(h.name, name) { return h.value }
        return nil
    }

    /// Every value of every header called `name`, comma-separated lists split, elements
    /// trimmed of spaces and tabs, empty elements dropped.
    public func headerValues(_ name: String) -> [String] {
        var result: [String] = []
        for h in headers where HTTPRequest.namesEqual(h.name, name) {
            for part in h.value.split(separator: ",", omittingEmptySubsequences: true) {
                let trimmed = HTTPRequest.trim(part)
                if !trimmed.isEmpty { result.append(trimmed) }
            }
        }
        return result
    }

    /// True when the comma-separated values of header `name` contain `token`, compared
    /// ASCII case-insensitively (e.g. `Connection: keep-alive, Upgrade` has "upgrade").
    public func headerHasToken(_ name: String, _ token: String) -> Bool {
        headerValues(name).contains { HTTPRequest.namesEqual($0, token) }
    }

    static func namesEqual(_ a: String, _ b: String) -> Bool {
        let a = a.utf8, b = b.utf8
        if a.count != b.count { return false }
        for (x, y) in zip(a, b) where x != y {
            if asciiLower(x) != asciiLower(y) { return false }
        }
        return true
    }

    @inline(__always)
    static func asciiLower(_ c: UInt8) -> UInt8 {
        (c >= 0x41 && c <= 0x5A) ? c | 0x20 : c
    }

    static func trim(_ s: Substring) -> String {
        var start = s.startIndex
        var end = s.endIndex
        while start < end, s[start] == " " || s[start] == "\t" { start = s.index(after: start) }
        while end > start {
            let before = s.index(before: end)
            if s[before] == " " || s[before] == "\t" { end = before } else { break }
        }
        return String(s[start..<end])
    }
}
