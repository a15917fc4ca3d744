import Glibc
import StreamOtterCore
import StreamOtterSecurity

/// Security settings of the gateway, from the `auth.*`, `audit.*`, `encryption.*` and
/// `limits.*` configuration keys. Everything is off until configured, except the safe
/// defaults of the transport (origin check, connection limits, frame limits).
public struct SecuritySettings {
    /// "none", "jwt" or "introspection" (a custom callback is set through the API).
    public var mode = "none"
    /// Where the token may come from: "header" (Authorization: Bearer), "protocol"
    /// (a `bearer.<token>` entry in Sec-WebSocket-Protocol), "query" (off by default:
    /// URLs end up in logs).
    public var tokenSources: Set<String> = ["header", "protocol"]
    public var queryParameter = "access_token"
    public var jwksFile: String?
    public var pemFiles: [(path: String, kid: String?)] = []
    public var hmacSecretFile: String?
    public var hmacKid: String?
    public var algorithms: Set<JWTAlgorithm>?
    public var issuers: [String] = []
    public var audiences: [String] = []
    public var leewaySeconds: Double = 30
    public var keyReloadIntervalMs: UInt64 = 60_000
    public var permissionsFile: String?
    public var rolesClaim: String?
    public var introspectionURL: String?
    public var introspectionClientID: String?
    public var introspectionSecretFile: String?
    public var introspectionTimeoutMs = 5_000
    /// CA file for an https introspection endpoint (default: the system's trust store).
    public var introspectionCAFile: String?
    public var auditFile: String?
    public var encryptionKeyFile: String?
    /// Channel patterns whose values are encrypted: exact names, `prefix.*` or `*`.
    public var encryptedChannels: [String] = ["*"]
    public var encryptionReloadIntervalMs: UInt64 = 60_000
    public var messagesPerSecond: Double = 0
    public var bytesPerSecond: Double = 0

    public init() {}

    static func isSecurityKey(_ key: String) -> Bool {
        key.hasPrefix("auth.") || key.hasPrefix("audit.") || key.hasPrefix("encryption.")
            || key == "limits.messages_per_second" || key == "limits.bytes_per_second"
    }

    mutating func set(_ key: String, _ value: String) throws {
        func list() -> [String] { value.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty } }
        // Finite and at most 1e12 (`inf`, `1e30`: refused): every value converts to an
        // integer, and 1e12 ms is over 30 years.
        func number(_ min: Double) throws -> Double {
            guard let v = Double(value.trimmingSpaces), v.isFinite, v >= min, v <= 1e12 else {
                throw ConfigError("\(key): expected a number in \(min)...1e12, got '\(value)'")
            }
            return v
        }
        switch key {
        case "auth.mode":
            guard ["none", "jwt", "introspection"].contains(value) else {
                throw ConfigError("auth.mode: expected none, jwt or introspection, got '\(value)'")
            }
            mode = value
        case "auth.token_sources":
            let l = Set(list())
            guard !l.isEmpty, l.isSubset(of: ["header", "protocol", "query"]) else {
                throw ConfigError("auth.token_sources: a list of header, protocol, query")
            }
            tokenSources = l
        case "auth.query_parameter": queryParameter = value
        case "auth.jwt.jwks_file": jwksFile = value
        case "auth.jwt.pem_file":
            let parts = value.split(separator: "#", maxSplits: 1).map(String.init)
            pemFiles.append((parts[0], parts.count > 1 ? parts[1] : nil))
        case "auth.jwt.hmac_secret_file": hmacSecretFile = value
        case "auth.jwt.hmac_kid": hmacKid = value
        case "auth.jwt.algorithms":
            var set = Set<JWTAlgorithm>()
            for a in list() {
                guard let alg = JWTAlgorithm(rawValue: a) else { throw ConfigError("auth.jwt.algorithms: unknown algorithm '\(a)'") }
                set.insert(alg)
            }
            algorithms = set
        case "auth.jwt.issuer": issuers = list()
        case "auth.jwt.audience": audiences = list()
        case "auth.jwt.leeway_s": leewaySeconds = try number(0)
        case "auth.jwt.reload_interval_ms": keyReloadIntervalMs = UInt64(try number(0))
        case "auth.permissions_file": permissionsFile = value
        case "auth.roles_claim": rolesClaim = value
        case "auth.introspection.url": introspectionURL = value
        case "auth.introspection.client_id": introspectionClientID = value
        case "auth.introspection.client_secret_file": introspectionSecretFile = value
        case "auth.introspection.timeout_ms": introspectionTimeoutMs = Int(try number(1))
        case "auth.introspection.ca_file": introspectionCAFile = value
        case "audit.file": auditFile = value
        case "encryption.key_file": encryptionKeyFile = value
        case "encryption.channels": encryptedChannels = list()
        case "encryption.reload_interval_ms": encryptionReloadIntervalMs = UInt64(try number(0))
        case "limits.messages_per_second": messagesPerSecond = try number(0)
        case "limits.bytes_per_second": bytesPerSecond = try number(0)
        default:
            throw ConfigError("unknown configuration key '\(key)'")
        }
    }
}

/// Authentication of upgrades with JWTs (and token refresh). Verification is CPU only and
/// runs on the loop (tens of microseconds for RSA-2048).
final class JWTAuthenticator: UpgradeAuthenticator {
    let verifier: JWTVerifier
    let settings: SecuritySettings
    let permissions: ChannelPermissions?
    weak var audit: GatewayAudit?

    init(settings: SecuritySettings, permissions: ChannelPermissions?) throws {
        var sources: [KeySet.Source] = []
        if let f = settings.jwksFile { sources.append(.jwksFile(path: f, algorithms: settings.algorithms)) }
        for (path, kid) in settings.pemFiles { sources.append(.pemFile(path: path, id: kid, algorithms: settings.algorithms)) }
        if let f = settings.hmacSecretFile {
            let algs = settings.algorithms?.filter { $0.rawValue.hasPrefix("HS") } ?? [.hs256]
            guard !algs.isEmpty else { throw ConfigError("auth.jwt.hmac_secret_file: auth.jwt.algorithms allows no HS* algorithm") }
            sources.append(.hmacSecretFile(path: f, id: settings.hmacKid, algorithms: Set(algs)))
        }
        guard !sources.isEmpty else {
            throw ConfigError("auth.mode=jwt needs keys: auth.jwt.jwks_file, auth.jwt.pem_file or auth.jwt.hmac_secret_file")
        }
        let keys: KeySet
        do { keys = try KeySet(sources: sources) } catch { throw ConfigError("auth.jwt keys: \(error)") }
        verifier = JWTVerifier(keySet: keys, options: JWTVerifier.Options(issuers: settings.issuers, audiences: settings.audiences,
                                                                            leewaySeconds: settings.leewaySeconds))
        self.settings = settings
        self.permissions = permissions
    }

    /// The bearer token of a request from the configured sources, or nil.
    static func token(from request: HTTPRequest, settings: SecuritySettings) -> String? {
        if settings.tokenSources.contains("header"), let h = request.header("Authorization") {
            let parts = h.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { return String(parts[1]).trimmingSpaces }
        }
        if settings.tokenSources.contains("protocol") {
            for p in request.headerValues("Sec-WebSocket-Protocol") where p.hasPrefix("bearer.") {
                return String(p.dropFirst(7))
            }
        }
        if settings.tokenSources.contains("query"), let q = request.query {
            for pair in q.split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0] == settings.queryParameter { return percentDecode(String(kv[1])) }
            }
        }
        return nil
    }

    func identity(_ t: VerifiedToken) -> Identity {
        let roles = permissions?.roles(from: t.claims) ?? []
        return Identity(subject: t.subject, roles: roles, expiresAtMs: t.expiresAt.map { NumericDate.milliseconds($0) }, method: "jwt")
    }

    func authenticate(_ c: WebSocketConnection, _ request: HTTPRequest, _ done: @escaping (UpgradeDecision) -> Void) {
        guard let token = JWTAuthenticator.token(from: request, settings: settings) else {
            audit?.auth(c, ok: false, method: "jwt", reason: "missing_token", subject: nil)
            done(.deny(401, "a bearer token is required"))
            return
        }
        do {
            let t = try verifier.verify(token)
            let id = identity(t)
            audit?.auth(c, ok: true, method: "jwt", reason: "ok", subject: id.subject)
            done(.allow(id))
        } catch let e as JWTError {
            audit?.auth(c, ok: false, method: "jwt", reason: e.reason, subject: nil)
            done(.deny(401, "invalid token: \(e.reason)"))
        } catch {
            audit?.auth(c, ok: false, method: "jwt", reason: "error", subject: nil)
            done(.deny(401, "invalid token"))
        }
    }

    func verify(token: String, for c: WebSocketConnection, _ done: @escaping (Result<Identity, AuthFailure>) -> Void) {
        do {
            let id = identity(try verifier.verify(token))
            audit?.auth(c, ok: true, method: "jwt-refresh", reason: "ok", subject: id.subject)
            done(.success(id))
        } catch let e as JWTError {
            audit?.auth(c, ok: false, method: "jwt-refresh", reason: e.reason, subject: nil)
            done(.failure(AuthFailure(status: 401, message: "invalid token: \(e.reason)")))
        } catch {
            done(.failure(AuthFailure(status: 401, message: "invalid token")))
        }
    }

    /// Re-reads key files (JWKS/PEM rotation). Blocking file I/O: run on a worker.
    func reloadKeys() {
        do { try verifier.keySet.reload() } catch {
            Log.event("error", "jwt_keys_reload_failed", ["error": "\(error)"])
        }
    }
}

func percentDecode(_ s: String) -> String {
    var out: [UInt8] = []
    var bytes = Array(s.utf8)[...]
    while let b = bytes.first {
        bytes = bytes.dropFirst()
        if b == UInt8(ascii: "%"), bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
            out.append(v)
            bytes = bytes.dropFirst(2)
        } else if b == UInt8(ascii: "+") {
            out.append(UInt8(ascii: " "))
        } else {
            out.append(b)
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// Audit events of the gateway, written by `AuditLog` (StreamOtterSecurity) as JSON lines
/// to a file (mode 0600, append) and/or the host's callback. Only structured fields are
/// written, and anything token- or secret-shaped is redacted. Loop thread.
final class GatewayAudit {
    private var fileLog: AuditLog?
    private var callbackLog: AuditLog?

    init(path: String?) throws {
        if let path {
            do { fileLog = try AuditLog(sink: .file(path: path, fsync: false)) } catch {
                throw ConfigError("audit.file: \(error)")
            }
        }
    }

    /// The host's audit callback (loop thread).
    var sink: ((String) -> Void)? {
        didSet {
            guard let f = sink else { callbackLog = nil; return }
            let box = UncheckedSendable(f)
            callbackLog = try? AuditLog(sink: .callback({ line in box.value(line) }))
        }
    }

    var enabled: Bool { fileLog != nil || callbackLog != nil }

    private func record(_ e: AuditEvent) {
        fileLog?.record(e)
        callbackLog?.record(e)
    }

    func auth(_ c: WebSocketConnection, ok: Bool, method: String, reason: String, subject: String?, status: Int? = nil) {
        guard enabled else { return }
        record(AuditEvent(kind: ok ? .authSuccess : .authFailure, connectionID: c.id, subject: subject, peer: c.peer,
                          method: method, reason: reason, status: ok ? 101 : (status ?? 401)))
    }

    /// A request refused before authentication (origin, limits, malformed, too slow).
    func refused(_ c: WebSocketConnection, status: Int, reason: String) {
        guard enabled else { return }
        record(AuditEvent(kind: status == 403 ? .denied : .limitExceeded, connectionID: c.id, peer: c.peer,
                          reason: reason, status: status))
    }

    func denied(_ c: WebSocketConnection, op: String, channel: String, permission: String) {
        guard enabled else { return }
        record(AuditEvent(kind: .denied, connectionID: c.id, subject: c.identity.subject, roles: c.identity.roles,
                          peer: c.peer, method: c.identity.method, reason: "\(op) needs \(permission)", channel: channel,
                          operation: ChannelPermission(rawValue: permission)))
    }

    func limit(_ c: WebSocketConnection, reason: String) {
        guard enabled else { return }
        // One line per connection per 10 s at most: a flooding client must not flood the log.
        let now = wallClockMs()
        if let last = lastLimitLine[c.id], now - last < 10_000 { return }
        lastLimitLine[c.id] = now
        record(AuditEvent(kind: .limitExceeded, connectionID: c.id, subject: c.identity.subject, peer: c.peer, reason: reason))
    }

    func refreshed(_ c: WebSocketConnection, ok: Bool, reason: String) {
        guard enabled else { return }
        record(AuditEvent(kind: ok ? .tokenRefreshed : .authFailure, connectionID: c.id, subject: c.identity.subject,
                          peer: c.peer, method: c.identity.method, reason: reason))
    }

    func opened(_ c: WebSocketConnection) {
        guard enabled else { return }
        record(AuditEvent(kind: .connectionOpen, connectionID: c.id, subject: c.identity.subject, roles: c.identity.roles,
                          peer: c.peer, method: c.identity.method))
    }

    private var lastLimitLine: [UInt64: Int64] = [:]

    func closed(_ c: WebSocketConnection, code: UInt16, reason: String) {
        lastLimitLine.removeValue(forKey: c.id)
        guard enabled else { return }
        record(AuditEvent(kind: code == 4001 ? .tokenExpired : .connectionClose, connectionID: c.id, subject: c.identity.subject,
                          peer: c.peer, method: c.identity.method, reason: reason.isEmpty ? closeCodeName(code) : reason, closeCode: Int(code)))
    }
}

/// Carries a value whose thread safety the code vouches for (a closure only called on the
/// loop thread, a host pointer the host promises is thread-safe) into @Sendable closures.
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    public init(_ v: T) { value = v }
}

/// Authentication of upgrades by OAuth2 token introspection (RFC 7662). The HTTP call is
/// blocking, so it runs on the loop's worker pool; answers are cached by the introspector
/// (never past the token's expiry).
final class IntrospectionAuthenticator: UpgradeAuthenticator {
    let loop: EventLoop
    let introspector: TokenIntrospector
    /// Introspection calls wait on another server: they get threads of their own.
    let executor = BlockingExecutor(threads: 4, capacity: 256)
    let settings: SecuritySettings
    let permissions: ChannelPermissions
    weak var audit: GatewayAudit?

    init(loop: EventLoop, settings: SecuritySettings, permissions: ChannelPermissions) throws {
        guard let url = settings.introspectionURL else { throw ConfigError("auth.mode=introspection needs auth.introspection.url") }
        var secret = ""
        if let f = settings.introspectionSecretFile {
            guard let fp = fopen(f, "r") else { throw ConfigError("auth.introspection.client_secret_file: cannot open '\(f)'") }
            var buf = [CChar](repeating: 0, count: 4096)
            if fgets(&buf, Int32(buf.count), fp) != nil { secret = String(cString: buf).trimmingSpaces.withoutLineBreaks() }
            fclose(fp)
        }
        var conf = TokenIntrospector.Configuration(endpoint: url, clientID: settings.introspectionClientID ?? "", clientSecret: secret)
        conf.timeoutSeconds = Double(settings.introspectionTimeoutMs) / 1000
        conf.caFile = settings.introspectionCAFile
        do { introspector = try TokenIntrospector(configuration: conf) } catch { throw ConfigError("auth.introspection: \(error)") }
        self.loop = loop
        self.settings = settings
        self.permissions = permissions
    }

    private func check(_ token: String, _ done: @escaping (Result<Identity, AuthFailure>) -> Void) {
        let introspector = self.introspector
        let permissions = self.permissions
        let submitted = executor.submit(on: loop, { () -> Result<Identity, AuthFailure> in
            do {
                let r = try introspector.introspect(token)
                guard r.active else { return .failure(AuthFailure(status: 401, message: "token is not active")) }
                return .success(Identity(subject: r.subject, roles: permissions.roles(from: r.claims),
                                         expiresAtMs: r.expiresAt.map { NumericDate.milliseconds($0) }, method: "introspection"))
            } catch let e as IntrospectionError {
                return .failure(AuthFailure(status: 503, message: "introspection failed: \(e.reason)"))
            } catch {
                return .failure(AuthFailure(status: 503, message: "introspection failed"))
            }
        }, then: done)
        if !submitted {
            done(.failure(AuthFailure(status: 503, message: "too many token checks in progress; retry later")))
        }
    }

    deinit { executor.stop() }

    func authenticate(_ c: WebSocketConnection, _ request: HTTPRequest, _ done: @escaping (UpgradeDecision) -> Void) {
        guard let token = JWTAuthenticator.token(from: request, settings: settings) else {
            audit?.auth(c, ok: false, method: "introspection", reason: "missing_token", subject: nil)
            done(.deny(401, "a bearer token is required"))
            return
        }
        check(token) { [weak self, weak server = c.server, cid = c.id] r in
            guard let c = server?.connections[cid] else { return }
            switch r {
            case .success(let id):
                self?.audit?.auth(c, ok: true, method: "introspection", reason: "ok", subject: id.subject)
                done(.allow(id))
            case .failure(let f):
                self?.audit?.auth(c, ok: false, method: "introspection", reason: f.message, subject: nil, status: f.status)
                done(.deny(f.status, f.message))
            }
        }
    }

    func verify(token: String, for c: WebSocketConnection, _ done: @escaping (Result<Identity, AuthFailure>) -> Void) {
        check(token, done)
    }
}

extension String {
    func withoutLineBreaks() -> String { String(self.filter { $0 != "\n" && $0 != "\r" }) }
}

/// Which channels are encrypted, and with what.
struct ChannelEncryption {
    let cipher: MessageCipher
    /// The key file's ring (nil with a key provider).
    let keyRing: MessageKeyRing?
    let patterns: [String]
    func applies(to channel: String) -> Bool {
        patterns.contains { ChannelPermissions.matches(pattern: $0, channel: channel, subject: "") }
    }
}

/// A short name for a close code, for audit lines when the peer gave no reason.
func closeCodeName(_ code: UInt16) -> String {
    switch code {
    case 1000: return "normal closure"
    case 1001: return "going away"
    case 1002: return "protocol error"
    case 1005: return "closed without a code"
    case 1006: return "connection lost"
    case 1007: return "invalid payload data"
    case 1008: return "policy violation"
    case 1009: return "message too big"
    case 1011: return "internal error"
    case 1013: return "try again later"
    case 4001: return "credential expired"
    default: return "code \(code)"
    }
}
