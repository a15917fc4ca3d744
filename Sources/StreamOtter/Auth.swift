import Glibc
import StreamOtterCore

/// An upgrade request handed to the host's authentication callback.
public struct AuthRequest: Sendable {
    /// Names this request in the answer.
    public let id: UInt64
    /// The request target (path and query).
    public let path: String
    public let headers: [(String, String)]
    /// The client's IP address.
    public let peerAddress: String
    /// The client certificate's subject (mTLS), nil without one.
    public let tlsSubject: String?
}

/// The host's answer to an upgrade request.
public enum AuthAnswer: Sendable {
    case allow(Identity)
    /// No upgrade: an HTTP status (401, 403, ...) and a reason for the response body.
    case deny(status: Int, reason: String)
}

/// Authentication by the host's callback. The callback runs on the loop thread; the
/// answer may come from any thread, later (it must come before ws.handshake_timeout_ms).
final class CustomAuthenticator: UpgradeAuthenticator {
    let loop: EventLoop
    let handler: (AuthRequest, @escaping (AuthAnswer) -> Void) -> Void
    var next: UInt64 = 1

    init(loop: EventLoop, handler: @escaping (AuthRequest, @escaping (AuthAnswer) -> Void) -> Void) {
        self.loop = loop
        self.handler = handler
    }

    weak var audit: GatewayAudit?

    func authenticate(_ c: WebSocketConnection, _ request: HTTPRequest, _ done: @escaping (UpgradeDecision) -> Void) {
        let done: (UpgradeDecision) -> Void = { [weak self, weak server = c.server, cid = c.id] d in
            if let c = server?.connections[cid], let audit = self?.audit {
                switch d {
                case .allow(let id): audit.auth(c, ok: true, method: "custom", reason: "ok", subject: id.subject)
                case .deny(let status, let reason): audit.auth(c, ok: false, method: "custom", reason: reason, subject: nil, status: status)
                }
            }
            done(d)
        }
        ask(c, path: request.target, headers: request.headers.map { ($0.name, $0.value) }) { answer in
            switch answer {
            case .success(let identity): done(.allow(identity))
            case .failure(let f): done(.deny((400...599).contains(f.status) ? f.status : 403, f.message))
            }
        }
    }

    /// `{"op":"auth","token":...}` goes to the same callback as a request with path
    /// `(refresh)` and the token in an `Authorization: Bearer` header.
    func verify(token: String, for c: WebSocketConnection, _ done: @escaping (Result<Identity, AuthFailure>) -> Void) {
        ask(c, path: "(refresh)", headers: [("Authorization", "Bearer " + token)], done)
    }

    /// Hands one request to the host's callback; the first answer (from any thread) comes
    /// back on the loop.
    private func ask(_ c: WebSocketConnection, path: String, headers: [(String, String)],
                     _ done: @escaping (Result<Identity, AuthFailure>) -> Void) {
        let req = AuthRequest(id: next, path: path, headers: headers, peerAddress: c.peerAddress, tlsSubject: c.tlsPeerSubject)
        next += 1
        let loop = self.loop
        let answered = AnswerOnce()
        handler(req) { answer in
            guard answered.take() else { return }
            loop.post {
                switch answer {
                case .allow(var identity):
                    if identity.method == "anonymous" { identity.method = "custom" }
                    done(.success(identity))
                case .deny(let status, let reason):
                    done(.failure(AuthFailure(status: status, message: reason)))
                }
            }
        }
    }
}

/// Lets exactly one of several racing answers through.
final class AnswerOnce: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var used = false
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func take() -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if used { return false }
        used = true
        return true
    }
}
