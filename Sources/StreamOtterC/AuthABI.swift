import CStreamOtterHeader
import Glibc
import StreamOtter

/// Pending upgrade answers by request id (any thread).
final class AuthAnswers {
    private var mutex = pthread_mutex_t()
    private var waiting: [UInt64: (AuthAnswer) -> Void] = [:]
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func put(_ id: UInt64, _ f: @escaping (AuthAnswer) -> Void) {
        pthread_mutex_lock(&mutex); waiting[id] = f; pthread_mutex_unlock(&mutex)
    }
    func take(_ id: UInt64) -> ((AuthAnswer) -> Void)? {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return waiting.removeValue(forKey: id)
    }
}

@_cdecl("sot_engine_set_auth_callback")
public func sot_engine_set_auth_callback(_ e: OpaquePointer?, _ cb: sot_auth_cb?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard let cb else { return fail(-1, "callback must not be NULL") }
    guard !h.started else { return fail(-3, "set the auth callback before sot_engine_start") }
    let answers = h.authAnswers
    let d = h.dispatcher
    // Saturating: ws.handshake_timeout_ms may be as large as the host likes.
    let timeout = Int(clamping: h.engine.config.handshakeTimeoutMs).addingReportingOverflow(1000)
    let forgetAfterMs = timeout.overflow ? Int.max : timeout.partialValue
    h.engine.authHandler = { [weak engine = h.engine] req, answer in
        answers.put(req.id, answer)
        // Forget unanswered requests after the handshake deadline.
        engine?.runAfter(ms: forgetAfterMs) { _ in _ = answers.take(req.id) }
        d.deliver {
            withHeaders(req.headers.map { ($0.0, Array($0.1.utf8)) }) { hp, n in
                req.path.withCString { path in
                    req.peerAddress.withCString { peer in
                        withOptionalCString(req.tlsSubject) { subj in cb(opaque, req.id, path, hp, n, peer, subj) }
                    }
                }
            }
        }
    }
    return 0
}

@_cdecl("sot_auth_allow")
public func sot_auth_allow(_ e: OpaquePointer?, _ request: UInt64, _ subject: UnsafePointer<CChar>?,
                           _ roles: UnsafePointer<CChar>?, _ expiresAt: Int64) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard let answer = h.authAnswers.take(request) else { return fail(-8, "upgrade request \(request) is unknown or answered") }
    let roleList = roles.map { String(cString: $0).split(separator: ",").map { String($0).trimmingCharacters() } } ?? []
    answer(.allow(Identity(subject: subject.map { String(cString: $0) }, roles: roleList.filter { !$0.isEmpty },
                           expiresAtMs: expiresAt > 0 ? expiresAt : nil, method: "custom")))
    return 0
}

@_cdecl("sot_auth_deny")
public func sot_auth_deny(_ e: OpaquePointer?, _ request: UInt64, _ status: Int32, _ reason: UnsafePointer<CChar>?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard status >= 400, status <= 599 else { return fail(-1, "status must be 400-599") }
    guard let answer = h.authAnswers.take(request) else { return fail(-8, "upgrade request \(request) is unknown or answered") }
    answer(.deny(status: Int(status), reason: reason.map { String(cString: $0) } ?? "refused"))
    return 0
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}

@_cdecl("sot_engine_set_audit_callback")
public func sot_engine_set_audit_callback(_ e: OpaquePointer?, _ cb: sot_audit_cb?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard let cb else { return fail(-1, "callback must not be NULL") }
    guard !h.started else { return fail(-3, "set the audit callback before sot_engine_start") }
    let d = h.dispatcher
    h.engine.auditHandler = { line in d.deliver { line.withCString { cb(opaque, $0) } } }
    return 0
}

@_cdecl("sot_engine_set_key_provider")
public func sot_engine_set_key_provider(_ e: OpaquePointer?, _ cb: sot_key_cb?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard let cb else { return fail(-1, "callback must not be NULL") }
    guard !h.started else { return fail(-3, "set the key provider before sot_engine_start") }
    let box = UncheckedSendable(opaque)
    h.engine.keyProvider = { keyID, channel in
        var key = [UInt8](repeating: 0, count: 32)
        var idBuf = [CChar](repeating: 0, count: 65)
        let rc = withOptionalCString(keyID) { k in
            withOptionalCString(channel) { c in cb(box.value, k, c, &key, &idBuf, idBuf.count) }
        }
        guard rc == 0 else { return nil }
        idBuf[idBuf.count - 1] = 0   // a provider that filled the whole buffer: cut, never read past it
        let id = keyID ?? String(cString: idBuf)
        return id.isEmpty ? nil : (id, key)
    }
    return 0
}
