import Glibc
import StreamOtterCore

/// One audit event. Only structured fields: there is no field for a token, a header value
/// or a free-form message, and every string is also screened by `AuditLog` (see there).
public struct AuditEvent: Sendable {
    /// What happened.
    public enum Kind: String, Sendable {
        case authSuccess = "auth_success"
        case authFailure = "auth_failure"
        case denied = "denied"
        case connectionOpen = "connection_open"
        case connectionClose = "connection_close"
        case tokenExpired = "token_expired"
        case tokenRefreshed = "token_refreshed"
        case limitExceeded = "limit_exceeded"
    }

    public var kind: Kind
    /// Seconds since the epoch; nil: the log's clock at `record` time.
    public var time: Double?
    public var connectionID: UInt64?
    /// The identity's subject (`sub`), when known.
    public var subject: String?
    public var roles: [String]
    /// Client address (`ip:port`).
    public var peer: String?
    /// Authentication method: `jwt`, `introspection`, `callback`, `mtls`, `none`.
    public var method: String?
    /// A short stable reason code (`expired`, `bad_signature`, `forbidden`, `client_close`...).
    public var reason: String?
    public var channel: String?
    public var operation: ChannelPermission?
    /// HTTP status of a refused handshake (401, 403, 429...).
    public var status: Int?
    /// WebSocket close code.
    public var closeCode: Int?

    public init(kind: Kind, time: Double? = nil, connectionID: UInt64? = nil, subject: String? = nil, roles: [String] = [],
                peer: String? = nil, method: String? = nil, reason: String? = nil, channel: String? = nil,
                operation: ChannelPermission? = nil, status: Int? = nil, closeCode: Int? = nil) {
        self.kind = kind
        self.time = time
        self.connectionID = connectionID
        self.subject = subject
        self.roles = roles
        self.peer = peer
        self.method = method
        self.reason = reason
        self.channel = channel
        self.operation = operation
        self.status = status
        self.closeCode = closeCode
    }
}

/// Writes audit events as JSON lines to a file or hands them to a callback.
///
/// Line format (one JSON object per line, members in this order, absent fields omitted):
/// `{"ts":"2026-01-02T03:04:05.678Z","event":"auth_failure","conn":7,"sub":"alice",
/// "roles":["reader"],"peer":"10.0.0.1:5123","method":"jwt","reason":"expired",
/// "channel":"orders","op":"publish","status":401,"close_code":4001}`
///
/// No secrets: events carry only structured fields. In addition every string is screened:
/// a value that looks like a JWT or a bearer credential, or that contains a secret given to
/// `addRedaction`, is replaced by `"[redacted]"`; strings are cut at 256 bytes.
///
/// Thread-safe. The file sink does one `write(2)` per line with `O_APPEND` (so lines from
/// several processes do not interleave); `fsync: true` makes each `record` wait for the
/// disk, which blocks: leave it off on the loop thread unless the deployment requires it.
public final class AuditLog: @unchecked Sendable {
    /// Where lines go.
    public enum Sink: Sendable {
        /// Append to a file (created with mode 0600).
        case file(path: String, fsync: Bool)
        /// Each line (without the newline) to a callback, on the recording thread.
        case callback(@Sendable (String) -> Void)
    }

    private let sink: Sink
    private let lock = Lock()
    private var fd: Int32 = -1
    private var secrets: [[UInt8]] = []
    private let clock: @Sendable () -> Double

    public init(sink: Sink, clock: @escaping @Sendable () -> Double = SecurityClock.wallSeconds) throws {
        self.sink = sink
        self.clock = clock
        if case .file(let path, _) = sink {
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
            if fd < 0 { throw SecurityConfigError("cannot open audit log \(path): \(String(cString: strerror(errno)))") }
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Registers a secret (an HMAC key, a client secret...) that must never appear in a
    /// line; any field containing it is redacted. Secrets shorter than 4 bytes are ignored.
    public func addRedaction(_ secret: String) {
        let b = Array(secret.utf8)
        guard b.count >= 4 else { return }
        lock.withLock { secrets.append(b) }
    }

    /// Reopens the file (after log rotation). No-op for a callback sink.
    public func reopen() throws {
        guard case .file(let path, _) = sink else { return }
        let newFD = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        if newFD < 0 { throw SecurityConfigError("cannot open audit log \(path): \(String(cString: strerror(errno)))") }
        lock.withLock {
            if fd >= 0 { close(fd) }
            fd = newFD
        }
    }

    /// Records one event.
    public func record(_ event: AuditEvent) {
        let line = format(event)
        switch sink {
        case .callback(let cb):
            cb(String(decoding: line, as: UTF8.self))
        case .file(_, let doSync):
            var bytes = line
            bytes.append(10)
            lock.withLock {
                var off = 0
                while off < bytes.count {
                    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
                    if n < 0 { if errno == EINTR { continue }; break }
                    off += n
                }
                if doSync { fsync(fd) }
            }
        }
    }

    /// The JSON line for `event` (without newline).
    public func format(_ event: AuditEvent) -> [UInt8] {
        let known = lock.withLock { secrets }
        func clean(_ s: String) -> JSONValue { .string(AuditLog.screen(s, secrets: known)) }
        var m: [(String, JSONValue)] = [("ts", .string(AuditLog.timestamp(event.time ?? clock()))), ("event", .string(event.kind.rawValue))]
        if let c = event.connectionID { m.append(("conn", .number(String(c)))) }
        if let s = event.subject { m.append(("sub", clean(s))) }
        if !event.roles.isEmpty { m.append(("roles", .array(event.roles.map(clean)))) }
        if let p = event.peer { m.append(("peer", clean(p))) }
        if let x = event.method { m.append(("method", clean(x))) }
        if let r = event.reason { m.append(("reason", clean(r))) }
        if let c = event.channel { m.append(("channel", clean(c))) }
        if let o = event.operation { m.append(("op", .string(o.rawValue))) }
        if let s = event.status { m.append(("status", .number(String(s)))) }
        if let c = event.closeCode { m.append(("close_code", .number(String(c)))) }
        return JSONValue.object(m).serialized()
    }

    /// Replaces credential-looking text and known secrets by `[redacted]`; cuts at 256 bytes.
    static func screen(_ s: String, secrets: [[UInt8]]) -> String {
        let b = Array(s.utf8)
        for secret in secrets where b.count >= secret.count {
            for i in 0...(b.count - secret.count) where b[i..<(i + secret.count)].elementsEqual(secret) { return "[redacted]" }
        }
        if looksLikeCredential(b) { return "[redacted]" }
        if b.count > 256 { return String(decoding: b[0..<256], as: UTF8.self) + "..." }
        return s
    }

    /// JWT/JWS-shaped (base64url segments with dots and a long total), `eyJ` (base64 of
    /// `{"`) anywhere, or `Bearer`/`Basic` credentials.
    static func looksLikeCredential(_ b: [UInt8]) -> Bool {
        let text = String(decoding: b, as: UTF8.self)
        if text.contains("eyJ") { return true }
        let lower = text.lowercased()
        if lower.contains("bearer ") || lower.contains("basic ") { return true }
        // Long runs of base64/base64url characters (32+), e.g. opaque tokens and keys.
        var run = 0
        for c in b {
            let isB64 = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == 0x2D || c == 0x5F || c == 0x2B || c == 0x2F || c == 0x3D
            run = isB64 ? run + 1 : 0
            if run >= 40 { return true }
        }
        return false
    }

    /// RFC 3339 UTC with milliseconds.
    static func timestamp(_ t: Double) -> String {
        var secs = time_t(t.rounded(.down))
        let ms = Int((t - Double(secs)) * 1000)
        var tmv = tm()
        gmtime_r(&secs, &tmv)
        func pad(_ v: Int32, _ w: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
        return "\(pad(tmv.tm_year + 1900, 4))-\(pad(tmv.tm_mon + 1, 2))-\(pad(tmv.tm_mday, 2))T\(pad(tmv.tm_hour, 2)):\(pad(tmv.tm_min, 2)):\(pad(tmv.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
    }
}
