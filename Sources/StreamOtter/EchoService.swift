import StreamOtterCore

/// A WebSocket echo server on the engine's transport (mode=echo): every message is sent
/// back as it came. No Kafka. For transport benchmarks and tests. Loop thread only.
final class EchoService: WebSocketServerDelegate {
    unowned let server: WebSocketServer
    init(server: WebSocketServer) { self.server = server }

    func httpResponse(for request: HTTPRequest) -> (Int, String, String) {
        request.path == "/healthz" ? (200, "application/json", "{\"status\":\"ok\",\"mode\":\"echo\"}\n")
            : (404, "text/plain; charset=utf-8", "not found\n")
    }
    func authorizeUpgrade(_ c: WebSocketConnection, request: HTTPRequest, done: @escaping (UpgradeDecision) -> Void) {
        done(.allow(Identity()))
    }
    func connectionOpened(_ c: WebSocketConnection, request: HTTPRequest) {}
    func connectionText(_ c: WebSocketConnection, _ message: [UInt8]) {
        message.withUnsafeBytes { _ = c.sendFrame(.text, $0) }
    }
    func connectionBinary(_ c: WebSocketConnection, _ message: [UInt8]) {
        message.withUnsafeBytes { _ = c.sendFrame(.binary, $0) }
    }
    func connectionClosed(_ c: WebSocketConnection, code: UInt16, reason: String) {}
    func connectionDrained(_ c: WebSocketConnection) {}
}
