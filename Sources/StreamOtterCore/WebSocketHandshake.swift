/// The server side of the RFC 6455 opening handshake.
public enum WebSocketHandshake {
    public static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// `base64(sha1(key + guid))`, the Sec-WebSocket-Accept value for `key`.
    public static func acceptKey(for key: String) -> String {
        Base64.encode(SHA1.hash(Array((key + guid).utf8)))
    }

    /// True when the request asks for a WebSocket: an `Upgrade` header containing the token
    /// `websocket` (case-insensitive). Other rules are checked by `evaluate`.
    public static func isUpgradeRequest(_ r: HTTPRequest) -> Bool {
        r.headerHasToken("Upgrade", "websocket")
    }

    /// The outcome of `evaluate`. For `reject`, `reason` is a short detail for logs and the
    /// body, `headers` extra response headers (e.g. `Sec-WebSocket-Version: 13` with 426).
    public enum Decision: Equatable, Sendable {
        case accept(acceptKey: String, subprotocol: String?)
        case reject(status: Int, reason: String, headers: [(String, String)])

        public static func == (lhs: Decision, rhs: Decision) -> Bool {
            switch (lhs, rhs) {
            case let (.accept(k1, p1), .accept(k2, p2)):
                return k1 == k2 && p1 == p2
            case let (.reject(s1, r1, h1), .reject(s2, r2, h2)):
                return s1 == s2 && r1 == r2 && h1.count == h2.count
                    && zip(h1, h2).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
            default:
                return false
            }
        }
    }

    /// Validates an upgrade request, checking in this order:
    /// method GET (else 405 with `Allow: GET`); version HTTP/1.1 (else 400); `Upgrade`
    /// contains `websocket` (else 400); `Connection` contains `upgrade` (else 400);
    /// `Sec-WebSocket-Version` is exactly 13 (else 426 with `Sec-WebSocket-Version: 13`);
    /// exactly one `Sec-WebSocket-Key` that is Base64 of 16 bytes (else 400).
    /// Subprotocol: when the client offers none, accept with nil; otherwise pick the first
    /// protocol in the client's order that is in `supported` (exact match), or reject 400
    /// when none is.
    public static func evaluate(_ r: HTTPRequest, supported: [String]) -> Decision {
        if r.method != "GET" { return .reject(status: 405, reason: "WebSocket upgrade requires GET", headers: [("Allow", "GET")]) }
        if r.version != "HTTP/1.1" { return .reject(status: 400, reason: "WebSocket upgrade requires HTTP/1.1", headers: []) }
        // RFC 6455 §4.1 and RFC 9112 §3.2: exactly one Host header.
        if r.headers.filter({ HTTPRequest.namesEqual($0.name, "Host") }).count != 1 {
            return .reject(status: 400, reason: "an upgrade needs exactly one Host header", headers: [])
        }
        if !r.headerHasToken("Upgrade", "websocket") { return .reject(status: 400, reason: "missing Upgrade: websocket", headers: []) }
        if !r.headerHasToken("Connection", "upgrade") { return .reject(status: 400, reason: "missing Connection: upgrade", headers: []) }
        let versions = r.headers.filter { HTTPRequest.namesEqual($0.name, "Sec-WebSocket-Version") }
        if versions.count != 1 || versions[0].value != "13" {
            return .reject(status: 426, reason: "unsupported WebSocket version", headers: [("Sec-WebSocket-Version", "13")])
        }
        let keys = r.headers.filter { HTTPRequest.namesEqual($0.name, "Sec-WebSocket-Key") }
        guard keys.count == 1, let decoded = Base64.decode(keys[0].value), decoded.count == 16 else {
            return .reject(status: 400, reason: "invalid Sec-WebSocket-Key", headers: [])
        }
        let offered = r.headerValues("Sec-WebSocket-Protocol")
        var subprotocol: String? = nil
        if !offered.isEmpty {
            guard let chosen = offered.first(where: { supported.contains($0) }) else {
                return .reject(status: 400, reason: "no supported subprotocol offered", headers: [])
            }
            subprotocol = chosen
        }
        return .accept(acceptKey: acceptKey(for: keys[0].value), subprotocol: subprotocol)
    }

    /// The complete 101 response.
    public static func acceptResponse(acceptKey: String, subprotocol: String?) -> [UInt8] {
        var s = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
        s += acceptKey
        s += "\r\n"
        if let p = subprotocol {
            s += "Sec-WebSocket-Protocol: "
            s += sanitized(p)
            s += "\r\n"
        }
        s += "\r\n"
        return Array(s.utf8)
    }

    /// A complete response with a body, `Content-Length` and `Connection: close`. CR and LF
    /// are removed from `reason` and header names/values so nothing can inject headers.
    public static func simpleResponse(status: Int, reason: String, body: String, contentType: String = "text/plain; charset=utf-8", headers: [(String, String)] = []) -> [UInt8] {
        let bodyBytes = Array(body.utf8)
        var s = "HTTP/1.1 \(status) \(sanitized(reason))\r\n"
        s += "Content-Type: \(sanitized(contentType))\r\n"
        s += "Content-Length: \(bodyBytes.count)\r\n"
        s += "Connection: close\r\n"
        for (name, value) in headers {
            s += "\(sanitized(name)): \(sanitized(value))\r\n"
        }
        s += "\r\n"
        var out = Array(s.utf8)
        out.append(contentsOf: bodyBytes)
        return out
    }

    private static func sanitized(_ s: String) -> String {
        if !s.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A }) { return s }
        return String(s.unicodeScalars.filter { $0 != "\r" && $0 != "\n" }.map(Character.init))
    }
}
