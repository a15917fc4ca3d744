import COpenSSL
import StreamOtterCore

/// Why introspection failed (the token's validity is then unknown: refuse the request,
/// typically with 503 or 401). `reason` is a short stable code.
public enum IntrospectionError: Error, Equatable, Sendable, CustomStringConvertible {
    case connectFailed
    case timeout
    /// TLS handshake or certificate/host name verification failed.
    case tlsFailure
    /// The endpoint answered with a non-200 status.
    case httpStatus(Int)
    /// Not HTTP, not JSON, no boolean `active`, a member name twice in one object, or an
    /// active answer whose `exp` is not a number from 0 to `NumericDate.latest`.
    case badResponse

    public var reason: String {
        switch self {
        case .connectFailed: return "introspection_unreachable"
        case .timeout: return "introspection_timeout"
        case .tlsFailure: return "introspection_tls"
        case .httpStatus: return "introspection_status"
        case .badResponse: return "introspection_bad_response"
        }
    }

    public var description: String {
        if case .httpStatus(let s) = self { return "token introspection: HTTP \(s)" }
        return "token introspection: \(reason)"
    }
}

/// An introspection answer (RFC 7662 section 2.2).
public struct IntrospectionResult: Sendable, Equatable {
    /// True only when the server said `"active":true` and `exp` (if any) is in the future.
    public let active: Bool
    /// The whole response object (claims such as `sub`, `scope`, `exp`, `roles`...).
    public let claims: JSONValue
    /// `exp`, seconds since the epoch, when present (0...`NumericDate.latest`).
    public let expiresAt: Double?
    /// True when served from the cache.
    public let cached: Bool

    public var subject: String? { claims["sub"]?.stringValue }
    public var scope: String? { claims["scope"]?.stringValue }
}

/// An OAuth2 token introspection client (RFC 7662) with a bounded cache.
///
/// `introspect` POSTs `token=...&token_type_hint=access_token` as
/// `application/x-www-form-urlencoded` to the endpoint, authenticating with HTTP Basic
/// (client id and secret form-urlencoded first, RFC 6749 section 2.3.1), over http or
/// https (certificate and host name verified against `caFile` or the system store, TLS 1.2
/// minimum). It BLOCKS for up to `timeoutSeconds`: call it on a worker thread, never on
/// the loop thread.
///
/// Cache: keyed by SHA-256 of the token (the token itself is not kept). An active answer is
/// kept until `min(exp, now + maxCacheSeconds)` and never served at or after `exp`; an
/// active answer without `exp` is kept `maxCacheSeconds`; an inactive answer is kept
/// `inactiveCacheSeconds`. At most `cacheCapacity` entries: when full, expired entries are
/// dropped, then the entries closest to expiry. Errors are not cached. Thread-safe.
public final class TokenIntrospector: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// `http://` or `https://` URL of the introspection endpoint.
        public var endpoint: String
        public var clientID: String
        public var clientSecret: String
        /// Whole-request deadline (connect, TLS, send, receive). DNS may add to it.
        public var timeoutSeconds: Double = 5
        /// PEM CA bundle for https; nil: the system store.
        public var caFile: String? = nil
        public var cacheCapacity: Int = 10_000
        public var maxCacheSeconds: Double = 300
        public var inactiveCacheSeconds: Double = 10
        /// Sent as `token_type_hint`; nil: not sent.
        public var tokenTypeHint: String? = "access_token"
        public var maxResponseBytes: Int = 1 << 20

        public init(endpoint: String, clientID: String, clientSecret: String) {
            self.endpoint = endpoint
            self.clientID = clientID
            self.clientSecret = clientSecret
        }
    }

    public let configuration: Configuration
    private let client: HTTPPostClient
    private let clock: @Sendable () -> Double
    private let lock = Lock()
    private var cache: [[UInt8]: (result: IntrospectionResult, until: Double)] = [:]
    private var requestCount: Int = 0

    /// Throws `SecurityConfigError` for a bad URL or CA file.
    public init(configuration: Configuration, clock: @escaping @Sendable () -> Double = SecurityClock.wallSeconds) throws {
        self.configuration = configuration
        self.clock = clock
        self.client = try HTTPPostClient(url: configuration.endpoint, caFile: configuration.caFile,
                                         maxResponseBytes: configuration.maxResponseBytes)
    }

    /// Requests sent to the endpoint so far (cache misses).
    public var requestsSent: Int { lock.withLock { requestCount } }
    /// Entries in the cache.
    public var cacheCount: Int { lock.withLock { cache.count } }

    /// Drops every cached answer.
    public func clearCache() { lock.withLock { cache.removeAll() } }

    /// Introspects `token`, from the cache when possible. Blocking (see the type).
    public func introspect(_ token: String) throws -> IntrospectionResult {
        let key = TokenIntrospector.sha256(Array(token.utf8))
        let now = clock()
        if let hit: IntrospectionResult = lock.withLock({
            guard let e = cache[key] else { return nil }
            if now >= e.until || (e.result.expiresAt.map { now >= $0 } ?? false) { cache[key] = nil; return nil }
            return e.result
        }) {
            return IntrospectionResult(active: hit.active, claims: hit.claims, expiresAt: hit.expiresAt, cached: true)
        }
        let result = try fetch(token)
        store(key, result, now: clock())
        return result
    }

    private func fetch(_ token: String) throws -> IntrospectionResult {
        var body = "token=" + TokenIntrospector.formEncode(token)
        if let hint = configuration.tokenTypeHint { body += "&token_type_hint=" + TokenIntrospector.formEncode(hint) }
        let credentials = TokenIntrospector.formEncode(configuration.clientID) + ":" + TokenIntrospector.formEncode(configuration.clientSecret)
        let headers = [("Authorization", "Basic " + Base64.encode(Array(credentials.utf8))),
                       ("Content-Type", "application/x-www-form-urlencoded"),
                       ("Accept", "application/json"),
                       ("User-Agent", "streamotter")]
        lock.withLock { requestCount += 1 }
        let response: HTTPPostClient.Response
        do {
            response = try client.post(headers: headers, body: Array(body.utf8), timeout: configuration.timeoutSeconds)
        } catch let f as HTTPPostClient.Failure {
            switch f {
            case .connect: throw IntrospectionError.connectFailed
            case .timeout: throw IntrospectionError.timeout
            case .tls: throw IntrospectionError.tlsFailure
            case .badResponse: throw IntrospectionError.badResponse
            }
        }
        guard response.status == 200 else { throw IntrospectionError.httpStatus(response.status) }
        // A repeated name (two `active`, two `sub`) would be read differently by other
        // parsers (they take the last): the answer is refused like any other bad answer.
        guard let json = try? JSON.parse(response.body), case .object = json, json.duplicateMemberName == nil,
              case .bool(let active)? = json["active"] else {
            throw IntrospectionError.badResponse
        }
        var exp: Double? = nil
        if let v = json["exp"] {
            // An active answer's `exp` bounds the connection, so it must be a NumericDate the
            // gateway can use; an inactive answer is a refusal whatever its `exp` says.
            exp = NumericDate.seconds(v)
            if exp == nil && active { throw IntrospectionError.badResponse }
        }
        let stillValid = exp.map { clock() < $0 } ?? true
        return IntrospectionResult(active: active && stillValid, claims: json, expiresAt: exp, cached: false)
    }

    private func store(_ key: [UInt8], _ result: IntrospectionResult, now: Double) {
        var until: Double
        if result.active {
            until = now + configuration.maxCacheSeconds
            if let exp = result.expiresAt { until = min(until, exp) }
        } else {
            until = now + configuration.inactiveCacheSeconds
        }
        guard until > now, configuration.cacheCapacity > 0 else { return }
        lock.withLock {
            if cache[key] == nil && cache.count >= configuration.cacheCapacity {
                cache = cache.filter { $0.value.until > now }
                if cache.count >= configuration.cacheCapacity {
                    let drop = max(1, configuration.cacheCapacity / 10)
                    for (k, _) in cache.sorted(by: { $0.value.until < $1.value.until }).prefix(drop) { cache[k] = nil }
                }
            }
            cache[key] = (result, until)
        }
    }

    static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        bytes.withUnsafeBufferPointer { b in _ = SHA256(b.baseAddress, b.count, &out) }
        return out
    }

    /// application/x-www-form-urlencoded encoding of one value (space as `+`).
    static func formEncode(_ s: String) -> String {
        var out: [UInt8] = []
        let hex = Array("0123456789ABCDEF".utf8)
        for b in s.utf8 {
            switch b {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D, 0x2E, 0x5F, 0x2A: out.append(b)
            case 0x20: out.append(0x2B)
            default: out += [0x25, hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
