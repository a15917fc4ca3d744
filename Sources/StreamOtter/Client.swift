import CShim
import CUV
import Glibc
import StreamOtterCore

/// Settings of a `StreamClient`. The same keys work through `sot_conf_set`.
public struct ClientConfig {
    public var subprotocols = ["streamotter.v1"]
    public var headers: [(String, String)] = []
    public var reconnect = true
    public var initialDelayMs: UInt64 = 100
    public var maxDelayMs: UInt64 = 10_000
    public var circuitFailureThreshold = 5
    public var circuitCooldownMs: UInt64 = 30_000
    public var pingIntervalMs: UInt64 = 5_000
    public var connectTimeoutMs: UInt64 = 10_000
    public var maxMessageSize = 16 << 20
    /// wss://: CA file to trust (default: the system's trust store) and whether to verify
    /// the server's certificate and host name (on by default).
    public var tlsCAFile: String?
    public var tlsVerify = true

    public init() {}

    public static func isClientKey(_ key: String) -> Bool {
        key.hasPrefix("client.") || key.hasPrefix("reconnect.") || key.hasPrefix("circuit.")
    }

    /// Sets one key; throws ConfigError naming the key.
    public mutating func set(_ key: String, _ value: String) throws {
        func int(_ min: Int, _ max: Int = Int.max) throws -> Int {
            guard let v = Int(value.trimmingSpaces), v >= min, v <= max else {
                throw ConfigError("\(key): expected an integer in \(min)...\(max), got '\(value)'")
            }
            return v
        }
        if key.hasPrefix("client.header.") {
            let name = String(key.dropFirst(14))
            guard !name.isEmpty, !name.contains(":"), !value.contains("\r"), !value.contains("\n") else {
                throw ConfigError("\(key): invalid header")
            }
            headers.append((name, value))
            return
        }
        switch key {
        case "client.subprotocols":
            subprotocols = value.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
        case "client.ping_interval_ms": pingIntervalMs = UInt64(try int(0))
        case "client.connect_timeout_ms": connectTimeoutMs = UInt64(try int(1))
        case "client.max_message_size": maxMessageSize = try int(126, 1 << 30)
        case "client.tls.ca_file": tlsCAFile = value.isEmpty ? nil : value
        case "client.tls.verify": tlsVerify = !["0", "false", "no", "off"].contains(value.lowercased())
        case "reconnect.enabled": reconnect = ["1", "true", "yes", "on"].contains(value.lowercased())
        case "reconnect.initial_delay_ms": initialDelayMs = UInt64(try int(1))
        case "reconnect.max_delay_ms": maxDelayMs = UInt64(try int(1))
        case "circuit.failure_threshold": circuitFailureThreshold = try int(1)
        case "circuit.cooldown_ms": circuitCooldownMs = UInt64(try int(1))
        default: throw ConfigError("unknown client configuration key '\(key)'")
        }
    }
}

/// Connection state of a client.
public enum ClientState: Int32, Sendable {
    case connecting = 0
    case open = 1
    /// Waiting for the next attempt (jittered backoff).
    case waiting = 2
    /// Too many consecutive failures: no attempt until the cool-down ends (then one probe).
    case circuitOpen = 3
    case closed = 4
}

/// A snapshot of a client's health.
public struct ClientHealth: Sendable {
    public var state: ClientState = .connecting
    /// 0 (unusable) ... 100 (open, fast pongs, none missed).
    public var score: Int32 = 0
    public var rttMs: Double = 0
    public var missedPongs: Int32 = 0
    public var consecutiveFailures: Int32 = 0
    public var reconnects: Int32 = 0
}

/// A record delivered through a subscription.
public struct StreamMessage: Sendable {
    public var channel: String
    public var partition: Int32
    public var offset: Int64
    public var timestamp: Int64
    public var key: String?
    /// The JSON text of `data`, when the record's value is JSON.
    public var data: [UInt8]?
    /// The whole `message` frame as received.
    public var frame: [UInt8]
}

/// A publish acknowledged by Kafka.
public struct PublishAck: Sendable {
    public var channel: String
    public var partition: Int32
    public var offset: Int64
}

/// An error answered by the gateway or met by the client.
public struct ClientError: Error, Sendable, CustomStringConvertible {
    /// A `streamotter.v1` error code (`forbidden`, `offset_out_of_range`, ...) or one of the
    /// client's own: `disconnected`, `closed`, `circuit_open`, `connect_failed`, `tls_failed`,
    /// `handshake_failed`, `protocol_error` (the server broke the WebSocket protocol or sent
    /// a `streamotter.v1` frame with a missing or out-of-range field; the connection was
    /// closed with 1002 (or 1007/1009) and the client reconnects).
    public var code: String
    public var message: String
    public var description: String { "\(code): \(message)" }
}

struct WSURL {
    var host: String
    var port: Int
    var path: String
    var secure: Bool

    init(_ s: String) throws {
        var rest: Substring
        if s.hasPrefix("ws://") { rest = s.dropFirst(5); secure = false }
        else if s.hasPrefix("wss://") { rest = s.dropFirst(6); secure = true }
        else { throw ConfigError("url: expected ws://host[:port]/path, got '\(s)'") }
        let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = rest[..<slash]
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        if path.hasPrefix("?") { path = "/" + path }
        var h = String(authority)
        var p = secure ? 443 : 80
        if let close = h.lastIndex(of: "]"), h.hasPrefix("[") {
            let after = h[h.index(after: close)...]
            if after.hasPrefix(":") {
                guard let n = Int(after.dropFirst()), n > 0, n < 65536 else { throw ConfigError("url: bad port in '\(s)'") }
                p = n
            }
            h = String(h[...close])
        } else if let colon = h.lastIndex(of: ":") {
            guard let n = Int(h[h.index(after: colon)...]), n > 0, n < 65536 else { throw ConfigError("url: bad port in '\(s)'") }
            p = n
            h = String(h[..<colon])
        }
        guard !h.isEmpty else { throw ConfigError("url: no host in '\(s)'") }
        host = h
        port = p
    }
}

/// A WebSocket client that speaks `streamotter.v1` and survives its server: reconnects
/// with exponential backoff and full jitter, opens a circuit after repeated failures,
/// measures health from ping round trips, resends unacknowledged publishes with their ids
/// and resubscribes from the last delivered positions.
///
/// Threading: public methods may be called from any thread; callbacks run on the engine's
/// loop thread and must not block.
public final class StreamClient: TCPStreamDelegate {
    public let url: String
    public let config: ClientConfig
    let engine: Engine
    private var loop: EventLoop { engine.loop }
    private let target: WSURL
    private var tlsContext: TLSContext?

    // Callbacks (loop thread).
    public var onOpen: ((String?) -> Void)?
    public var onMessage: ((Bool, [UInt8]) -> Void)?
    public var onClose: ((UInt16, String) -> Void)?
    public var onError: ((ClientError) -> Void)?

    // Loop-thread state.
    private var state: ClientState = .closed
    private var connector: TCPConnector?
    private var stream: TCPStream?
    private var handshakeKey = ""
    private var head: [UInt8] = []
    private var upgraded = false
    private var decoder: FrameDecoder
    private var timer: LoopTimer?
    private var pingTimer: LoopTimer?
    private var connectDeadline: LoopTimer?
    private var failures = 0
    /// This connection ended in a protocol violation by the server (see failConnection).
    private var violated = false
    /// Connections in a row that ended in a violation; the failure count starts from it
    /// when a connection opens, so that opening does not wipe the backoff out.
    private var violationStreak = 0
    private var reconnects = 0
    private var userClosed = false
    private var started = false
    private var halfOpen = false
    private var pingSentAt: UInt64 = 0
    private var pingOutstanding = false
    private var missedPongs = 0
    private var rttMs: Double = 0
    private var nextId: UInt64 = 1
    private var rng = SystemRandomNumberGenerator()
    private var closeCode: UInt16 = 1006
    private var closeReason = ""

    private struct Pending {
        var channel: String
        var frame: [UInt8]
        var completion: (Result<PublishAck, ClientError>) -> Void
    }
    /// Unacknowledged publishes by id, with their sequence number (resend order).
    private var pending: [String: (seq: UInt64, p: Pending)] = [:]
    /// Ids are unique per client instance, so the gateway's dedupe window recognises a
    /// resend after a reconnect and never mistakes another client's publish for one.
    private let idPrefix = "c" + String(UInt64.random(in: 1...UInt64.max), radix: 36) + "-"

    private final class Subscription {
        let channel: String
        let from: StartPosition
        var positions: [Int32: Int64] = [:]
        let handler: (StreamMessage) -> Void
        var completion: ((Result<Void, ClientError>) -> Void)?
        var requestId = ""
        init(channel: String, from: StartPosition, handler: @escaping (StreamMessage) -> Void) {
            self.channel = channel
            self.from = from
            self.handler = handler
        }
    }
    private var subscriptions: [String: Subscription] = [:]
    private var unsubscribes: [String: (Result<Void, ClientError>) -> Void] = [:]

    // Health snapshot for other threads.
    private var healthLock = pthread_mutex_t()
    private var healthSnapshot = ClientHealth()

    public init(engine: Engine, url: String, config: ClientConfig = ClientConfig()) throws {
        self.engine = engine
        self.url = url
        self.config = config
        target = try WSURL(url)
        if target.secure {
            var err = [CChar](repeating: 0, count: 512)
            guard let ctx = cshim_tls_client_ctx(config.tlsCAFile, config.tlsVerify ? 1 : 0, 12, &err, err.count) else {
                throw ConfigError("client.tls: \(String(cString: err))")
            }
            tlsContext = TLSContext(ctx)
        }
        decoder = FrameDecoder(limits: WSLimits(maxFrameSize: config.maxMessageSize, maxMessageSize: config.maxMessageSize, requireMasked: false))
        pthread_mutex_init(&healthLock, nil)
    }

    deinit { pthread_mutex_destroy(&healthLock) }

    /// Starts connecting (any thread). Requires a running engine.
    public func start() {
        loop.post { [self] in
            guard !started, !userClosed else { return }
            started = true
            engine.register(self)
            connect()
        }
    }

    /// The current health (any thread).
    public var health: ClientHealth {
        pthread_mutex_lock(&healthLock)
        defer { pthread_mutex_unlock(&healthLock) }
        return healthSnapshot
    }

    private func updateHealth() {
        var h = ClientHealth()
        h.state = state
        h.rttMs = rttMs
        // Counters grow without bound over a long life (a server that keeps dropping the
        // connection): clamp rather than trap.
        h.missedPongs = Int32(clamping: missedPongs)
        h.consecutiveFailures = Int32(clamping: failures)
        h.reconnects = Int32(clamping: reconnects)
        if state == .open {
            let rttPenalty = min(50.0, rttMs / 10.0)
            h.score = Int32(max(0, min(100, 100 - Int(rttPenalty) - 25 * missedPongs)))
        }
        pthread_mutex_lock(&healthLock)
        healthSnapshot = h
        pthread_mutex_unlock(&healthLock)
    }

    // MARK: public operations (any thread)

    /// Sends a raw message (text or binary) on the current connection.
    public func send(_ bytes: [UInt8], text: Bool = true, _ completion: ((ClientError?) -> Void)? = nil) {
        loop.post { [self] in
            guard state == .open else {
                completion?(ClientError(code: "disconnected", message: "the client is not connected"))
                return
            }
            writeFrame(text ? .text : .binary, bytes)
            completion?(nil)
        }
    }

    /// Publishes `data` (JSON text) to `channel`; `completion` runs once with the ack or the
    /// error. Unacknowledged publishes are resent with the same id after a reconnect.
    public func publish(channel: String, key: String? = nil, headers: [(String, String)] = [], data: [UInt8],
                        _ completion: @escaping (Result<PublishAck, ClientError>) -> Void) {
        loop.post { [self] in
            guard !userClosed else {
                completion(.failure(ClientError(code: "closed", message: "the client was closed")))
                return
            }
            let seq = nextId
            let id = idPrefix + String(seq, radix: 36)
            nextId += 1
            var f = Array("{\"op\":\"publish\",\"id\":\"\(id)\",\"channel\":".utf8)
            JSON.appendString(channel, to: &f)
            if let key {
                f += Array(",\"key\":".utf8)
                JSON.appendString(key, to: &f)
            }
            if !headers.isEmpty {
                f += Array(",\"headers\":{".utf8)
                for (i, (k, v)) in headers.enumerated() {
                    if i > 0 { f.append(UInt8(ascii: ",")) }
                    JSON.appendString(k, to: &f)
                    f.append(UInt8(ascii: ":"))
                    JSON.appendString(v, to: &f)
                }
                f.append(UInt8(ascii: "}"))
            }
            f += Array(",\"data\":".utf8)
            f += data
            f.append(UInt8(ascii: "}"))
            pending[id] = (seq, Pending(channel: channel, frame: f, completion: completion))
            if state == .open { writeFrame(.text, f) }
        }
    }

    /// Subscribes to `channel`; `handler` runs for every message, `completion` once when
    /// the gateway answered. After a reconnect the client resubscribes from the next offset
    /// of every partition, and drops anything it has already delivered.
    public func subscribe(channel: String, from: StartPosition = .latest,
                          handler: @escaping (StreamMessage) -> Void,
                          _ completion: ((Result<Void, ClientError>) -> Void)? = nil) {
        loop.post { [self] in
            guard !userClosed else {
                completion?(.failure(ClientError(code: "closed", message: "the client was closed")))
                return
            }
            guard subscriptions[channel] == nil else {
                completion?(.failure(ClientError(code: "already_subscribed", message: "already subscribed to '\(channel)'")))
                return
            }
            let sub = Subscription(channel: channel, from: from, handler: handler)
            sub.completion = completion
            subscriptions[channel] = sub
            if state == .open { sendSubscribe(sub) }
        }
    }

    public func unsubscribe(channel: String, _ completion: ((Result<Void, ClientError>) -> Void)? = nil) {
        loop.post { [self] in
            guard subscriptions.removeValue(forKey: channel) != nil else {
                completion?(.failure(ClientError(code: "not_subscribed", message: "not subscribed to '\(channel)'")))
                return
            }
            if state == .open {
                let id = "u\(nextId)"
                nextId += 1
                if let completion { unsubscribes[id] = completion }
                var f = Array("{\"op\":\"unsubscribe\",\"id\":\"\(id)\",\"channel\":".utf8)
                JSON.appendString(channel, to: &f)
                f.append(UInt8(ascii: "}"))
                writeFrame(.text, f)
            } else {
                completion?(.success(()))
            }
        }
    }

    /// Closes for good (no reconnect). Pending publishes fail with `closed`.
    public func close(code: UInt16 = 1000, reason: String = "") {
        loop.post { [self] in shutdown(code: code, reason: reason) }
    }

    /// Loop thread: close and release every resource; no callback runs afterwards except
    /// the completions of pending operations (with `closed`) and a final onClose.
    func shutdown(code: UInt16, reason: String) {
        guard !userClosed else { return }
        userClosed = true
        timer?.close(); timer = nil
        connectDeadline?.close(); connectDeadline = nil
        connector?.cancel(); connector = nil
        if let s = stream, upgraded {
            // We close: our code is the one reported (the server echoes it).
            closeCode = code
            closeReason = reason
            var body: [UInt8] = [UInt8(code >> 8), UInt8(code & 0xff)]
            body += Array(reason.utf8.prefix(123))
            writeFrame(.close, body)
            s.closeAfterWrites()
            engine.closingClients[ObjectIdentifier(self)] = self
            // The stream's close callback reports onClose; force it after a grace period.
            let t = LoopTimer(loop: loop)
            t.start(afterMs: 1000) { [weak s] in s?.close(); t.close() }
        } else {
            stream?.close()
        }
        failAll(ClientError(code: "closed", message: "the client was closed"))
        setState(.closed)
        engine.unregister(self)
    }

    private func failAll(_ e: ClientError) {
        let p = pending.values.sorted { $0.seq < $1.seq }
        pending.removeAll()
        for x in p { x.p.completion(.failure(e)) }
        for sub in subscriptions.values {
            sub.completion?(.failure(e))
            sub.completion = nil
        }
        for (_, u) in unsubscribes { u(.failure(e)) }
        unsubscribes.removeAll()
    }

    // MARK: connection lifecycle (loop thread)

    private func setState(_ s: ClientState) {
        state = s
        updateHealth()
    }

    private func connect() {
        guard !userClosed else { return }
        setState(.connecting)
        upgraded = false
        head = []
        decoder = FrameDecoder(limits: WSLimits(maxFrameSize: config.maxMessageSize, maxMessageSize: config.maxMessageSize, requireMasked: false))
        closeCode = 1006
        closeReason = ""
        let c = TCPConnector(loop: loop)
        connector = c
        let deadline = LoopTimer(loop: loop)
        deadline.start(afterMs: config.connectTimeoutMs) { [weak self] in
            guard let self, self.state == .connecting else { return }
            self.connectFailed(ClientError(code: "connect_failed", message: "no connection within \(self.config.connectTimeoutMs) ms"))
        }
        connectDeadline = deadline
        c.connect(host: target.host, port: target.port) { [weak self] result in
            guard let self else { return }
            self.connector = nil
            switch result {
            case .failure(let e):
                self.connectFailed(ClientError(code: "connect_failed", message: "\(self.target.host):\(self.target.port): \(e)"))
            case .success(let s):
                self.stream = s
                s.delegate = self
                if let ctx = self.tlsContext {
                    let host = self.target.host.hasPrefix("[") ? "" : self.target.host
                    guard let ch = TLSChannel(context: ctx.ctx, server: false, hostname: host) else {
                        self.connectFailed(ClientError(code: "connect_failed", message: "TLS session could not be created"))
                        return
                    }
                    s.startClientTLS(ch)
                }
                s.startReading()
                self.sendHandshake()   // waits for the TLS handshake when there is one
            }
        }
    }

    private func sendHandshake() {
        var key = [UInt8](repeating: 0, count: 16)
        for i in 0..<16 { key[i] = UInt8.random(in: 0...255, using: &rng) }
        handshakeKey = Base64.encode(key)
        var req = "GET \(target.path) HTTP/1.1\r\nHost: \(target.host):\(target.port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(handshakeKey)\r\nSec-WebSocket-Version: 13\r\n"
        if !config.subprotocols.isEmpty { req += "Sec-WebSocket-Protocol: \(config.subprotocols.joined(separator: ", "))\r\n" }
        for (k, v) in config.headers { req += "\(k): \(v)\r\n" }
        req += "\r\n"
        stream?.write(Array(req.utf8))
    }

    /// A connection attempt failed before the WebSocket opened.
    private func connectFailed(_ e: ClientError) {
        connectDeadline?.close(); connectDeadline = nil
        connector?.cancel(); connector = nil
        if let s = stream {
            stream = nil
            s.delegate = nil
            s.close()
        }
        failures += 1
        onError?(e)
        scheduleReconnect()
    }

    private func scheduleReconnect() {
        guard !userClosed else { return }
        guard config.reconnect else {
            failAll(ClientError(code: "disconnected", message: "connection lost and reconnect is disabled"))
            setState(.closed)
            return
        }
        let delay: UInt64
        if failures >= config.circuitFailureThreshold {
            if state != .circuitOpen {
                setState(.circuitOpen)
                onError?(ClientError(code: "circuit_open", message: "\(failures) consecutive connection failures; next probe in \(config.circuitCooldownMs) ms"))
            }
            setState(.circuitOpen)
            halfOpen = true
            delay = config.circuitCooldownMs
        } else {
            // Exponential backoff with full jitter (the doubling saturates at the maximum:
            // a large initial delay shifted left must not wrap around to a small one).
            let shift = UInt64(min(failures, 30))
            let exp = config.initialDelayMs > (config.maxDelayMs >> shift) ? config.maxDelayMs : config.initialDelayMs << shift
            delay = UInt64.random(in: 0...max(1, exp), using: &rng)
            setState(.waiting)
        }
        timer?.close()
        let t = LoopTimer(loop: loop)
        t.start(afterMs: delay) { [weak self] in
            guard let self else { return }
            self.timer?.close()
            self.timer = nil
            self.reconnects += 1
            self.connect()
        }
        timer = t
    }

    private func opened(subprotocol: String?) {
        connectDeadline?.close(); connectDeadline = nil
        upgraded = true
        failures = violationStreak
        halfOpen = false
        missedPongs = 0
        pingOutstanding = false
        setState(.open)
        onOpen?(subprotocol)
        // Resubscribe from the last positions, then resend unacknowledged publishes.
        for sub in subscriptions.values.sorted(by: { $0.channel < $1.channel }) { sendSubscribe(sub) }
        for x in pending.values.sorted(by: { $0.seq < $1.seq }) { writeFrame(.text, x.p.frame) }
        if config.pingIntervalMs > 0 {
            let t = LoopTimer(loop: loop)
            t.start(afterMs: config.pingIntervalMs, repeatMs: config.pingIntervalMs) { [weak self] in self?.pingTick() }
            pingTimer = t
        }
    }

    private func pingTick() {
        guard state == .open else { return }
        if pingOutstanding {
            missedPongs += 1
            updateHealth()
            if missedPongs >= 2 {
                onError?(ClientError(code: "disconnected", message: "\(missedPongs) pongs missed; reconnecting"))
                stream?.close()
                return
            }
        }
        pingOutstanding = true
        pingSentAt = uv_hrtime()
        writeFrame(.ping, [])
    }

    private func sendSubscribe(_ sub: Subscription) {
        let id = "s\(nextId)"
        nextId += 1
        sub.requestId = id
        var f = Array("{\"op\":\"subscribe\",\"id\":\"\(id)\",\"channel\":".utf8)
        JSON.appendString(sub.channel, to: &f)
        f += Array(",\"from\":".utf8)
        if !sub.positions.isEmpty {
            f += Array("{\"offsets\":{".utf8)
            for (i, (p, o)) in sub.positions.sorted(by: { $0.key < $1.key }).enumerated() {
                if i > 0 { f.append(UInt8(ascii: ",")) }
                f += Array("\"\(p)\":\(o)".utf8)
            }
            f += Array("}}".utf8)
        } else {
            switch sub.from {
            case .latest: f += Array("\"latest\"".utf8)
            case .earliest: f += Array("\"earliest\"".utf8)
            case .timestamp(let t): f += Array("{\"timestamp\":\(t)}".utf8)
            case .offsets(let o):
                f += Array("{\"offsets\":{".utf8)
                for (i, (p, off)) in o.sorted(by: { $0.key < $1.key }).enumerated() {
                    if i > 0 { f.append(UInt8(ascii: ",")) }
                    f += Array("\"\(p)\":\(off)".utf8)
                }
                f += Array("}}".utf8)
            }
        }
        f.append(UInt8(ascii: "}"))
        writeFrame(.text, f)
    }

    private func writeFrame(_ op: WSOpcode, _ payload: [UInt8]) {
        guard let s = stream else { return }
        let mask = UInt32.random(in: 0...UInt32.max, using: &rng)
        let hs = FrameEncoder.headerSize(payloadLength: payload.count, masked: true)
        let buf = OutBuffer(capacity: hs + payload.count)
        _ = FrameEncoder.writeHeader(into: buf.base, opcode: op, fin: true, payloadLength: payload.count, maskKey: mask)
        if !payload.isEmpty {
            payload.withUnsafeBytes { (buf.base + hs).copyMemory(from: $0.baseAddress!, byteCount: payload.count) }
            FrameEncoder.applyMask(UnsafeMutableRawBufferPointer(start: buf.base + hs, count: payload.count), key: mask)
        }
        s.write(buf)
    }

    // MARK: TCPStreamDelegate

    func streamDidRead(_ stream: TCPStream, _ bytes: UnsafeRawBufferPointer) {
        guard stream === self.stream else { return }
        if !upgraded {
            head.append(contentsOf: bytes)
            guard let end = findHeadEnd(head) else {
                if head.count > 16384 { connectFailed(ClientError(code: "handshake_failed", message: "response head too large")) }
                return
            }
            let text = String(decoding: head[..<end], as: UTF8.self)
            let rest = Array(head[(end + 4)...])
            head = []
            switch checkResponse(text) {
            case .failure(let e):
                connectFailed(e)
                return
            case .success(let proto):
                opened(subprotocol: proto)
            }
            if !rest.isEmpty { rest.withUnsafeBytes { readFrames($0) } }
            return
        }
        readFrames(bytes)
    }

    private func findHeadEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
        return nil
    }

    private func checkResponse(_ text: String) -> Result<String?, ClientError> {
        let lines = text.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let status = lines.first ?? ""
        let parts = status.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1] == "101" else {
            return .failure(ClientError(code: "handshake_failed", message: "server answered '\(status)'"))
        }
        var headers: [String: String] = [:]
        for l in lines.dropFirst() {
            guard let c = l.firstIndex(of: ":") else { continue }
            headers[l[..<c].lowercased()] = String(l[l.index(after: c)...]).trimmingSpaces
        }
        guard headers["sec-websocket-accept"] == WebSocketHandshake.acceptKey(for: handshakeKey) else {
            return .failure(ClientError(code: "handshake_failed", message: "wrong Sec-WebSocket-Accept"))
        }
        let proto = headers["sec-websocket-protocol"]
        if let proto, !config.subprotocols.contains(proto) {
            return .failure(ClientError(code: "handshake_failed", message: "server chose subprotocol '\(proto)' that was not offered"))
        }
        return .success(proto)
    }

    private func readFrames(_ bytes: UnsafeRawBufferPointer) {
        decoder.append(bytes)
        while true {
            let ev: WSEvent?
            do {
                ev = try decoder.next()
            } catch let e as WSProtocolError {
                failConnection(code: e.closeCode, reason: e.reason)
                return
            } catch { return }
            guard let ev else { return }
            switch ev {
            case .text(let m):
                onMessage?(true, m)
                do {
                    try handleProtocol(m)
                } catch {
                    failConnection(code: 1002, reason: "protocol violation: \(error.reason)")
                    return
                }
            case .binary(let m):
                onMessage?(false, m)
            case .ping(let p):
                writeFrame(.pong, p)
            case .pong:
                if pingOutstanding {
                    pingOutstanding = false
                    missedPongs = 0
                    rttMs = Double(uv_hrtime() - pingSentAt) / 1_000_000
                    updateHealth()
                }
            case .close(let code, let reason):
                closeCode = code ?? 1005
                closeReason = String(decoding: reason, as: UTF8.self)
                if let code { writeFrame(.close, [UInt8(code >> 8), UInt8(code & 0xff)]) } else { writeFrame(.close, []) }
                stream?.closeAfterWrites()
                return
            }
        }
    }

    /// Acts on a `streamotter.v1` frame from the server. Text that is not a JSON object, an
    /// unknown `op`, a `message` for a channel without a subscription and an `ack`/`ok` for
    /// an id the client did not send are left to the host's onMessage. A frame the client
    /// acts on is validated first (ServerFrameReader: partitions 0...2^31-1, record offsets
    /// 0...2^63-2, ...); a violation throws before any state changes or callback runs, and
    /// the caller closes the connection with 1002 (see failConnection).
    private func handleProtocol(_ m: [UInt8]) throws(ServerFrameViolation) {
        guard let f = ServerFrameReader(m) else { return }
        switch f.op {
        case "message":
            guard let channel = f.string("channel"), let sub = subscriptions[channel] else { return }
            let part = try f.partition()
            let off = try f.recordOffset()
            let timestamp = try f.timestamp()
            if let next = sub.positions[part], off < next { return }   // already delivered before a reconnect
            sub.positions[part] = off + 1   // cannot overflow: off < Int64.max
            var data: [UInt8]?
            if let d = f.value("data") {
                var out: [UInt8] = []
                d.append(to: &out)
                data = out
            }
            sub.handler(StreamMessage(channel: channel, partition: part, offset: off, timestamp: timestamp,
                                      key: f.string("key"), data: data, frame: m))
        case "ack":
            guard let id = f.string("id"), let p = pending[id]?.p else { return }
            let ack = PublishAck(channel: f.string("channel") ?? p.channel, partition: try f.partition(), offset: try f.ackOffset())
            pending.removeValue(forKey: id)
            p.completion(.success(ack))
        case "ok":
            guard let id = f.string("id") else { return }
            if let u = unsubscribes.removeValue(forKey: id) { u(.success(())); return }
            guard let sub = subscriptions.values.first(where: { $0.requestId == id }) else { return }
            for (p, o) in try f.startOffsets() ?? [] where sub.positions[p] == nil { sub.positions[p] = o }
            sub.completion?(.success(()))
            sub.completion = nil
        case "error":
            // No numbers are taken from an error frame; code and message fall back to
            // defaults when they are not strings.
            let e = ClientError(code: f.string("code") ?? "error", message: f.string("message") ?? "")
            if let id = f.string("id") {
                if let p = pending.removeValue(forKey: id)?.p {
                    p.completion(.failure(e))
                    return
                }
                if let u = unsubscribes.removeValue(forKey: id) { u(.failure(e)); return }
                if let sub = subscriptions.values.first(where: { $0.requestId == id }) {
                    subscriptions.removeValue(forKey: sub.channel)
                    if let c = sub.completion { c(.failure(e)) } else { onError?(e) }
                    return
                }
            }
            onError?(e)
        default:
            break
        }
    }

    /// The server broke the protocol (a WebSocket protocol error, or a `streamotter.v1`
    /// frame the client cannot act on): sends Close `code` (1002 for a bad frame), stops
    /// reading this connection, and reports `protocol_error` to onError. The connection's
    /// onClose then reports `code` and `reason`, and the client reconnects as after any
    /// lost connection (resubscribing from its positions, resending unacknowledged
    /// publishes: nothing from the bad frame was applied).
    private func failConnection(code: UInt16, reason: String) {
        closeCode = code
        closeReason = reason
        violated = true
        var body: [UInt8] = [UInt8(code >> 8), UInt8(code & 0xff)]
        // At most 123 bytes of reason in a Close frame; cut on a character boundary.
        for ch in reason.unicodeScalars {
            let bytes = Array(String(ch).utf8)
            if body.count + bytes.count > 125 { break }
            body += bytes
        }
        writeFrame(.close, body)
        stream?.closeAfterWrites()   // reads from now on are discarded
        onError?(ClientError(code: "protocol_error", message: reason))
    }

    func streamDidEnd(_ stream: TCPStream, error: Int32) {}

    func streamDidClose(_ s: TCPStream) {
        engine.closingClients.removeValue(forKey: ObjectIdentifier(self))
        guard s === stream else { return }
        stream = nil
        pingTimer?.close(); pingTimer = nil
        if upgraded {
            upgraded = false
            onClose?(closeCode, closeReason)
            if userClosed { return }
            // An open connection that was lost: reconnect (not counted as a failure), unless
            // the server broke the protocol: that counts, so a server that does it on every
            // connection meets the backoff and the circuit breaker instead of a reconnect
            // every few milliseconds (opening had reset the count).
            if violated {
                violated = false
                violationStreak += 1
                failures = violationStreak
            } else {
                violationStreak = 0
            }
            scheduleReconnect()
        } else if !userClosed, state == .connecting {
            connectFailed(ClientError(code: s.failure != nil ? "tls_failed" : "connect_failed",
                                      message: s.failure ?? "connection closed during the handshake"))
        }
    }

    func streamDidDrain(_ stream: TCPStream) {}
}

extension StartPosition {
    /// Parses the JSON text of a `from` value ("latest", "earliest", {"offsets":..}, {"timestamp":..}).
    public static func parse(json: String) throws -> StartPosition {
        let frame = "{\"op\":\"subscribe\",\"channel\":\"x\",\"from\":\(json)}"
        let req = try Array(frame.utf8).withUnsafeBytes { try ProtocolParser.parse($0) }
        guard case .subscribe(_, _, let from) = req else { throw ConfigError("from: invalid") }
        return from
    }
}

// MARK: Swift concurrency

extension StreamClient {
    /// Publishes and waits for Kafka's acknowledgement.
    public func publish(channel: String, key: String? = nil, headers: [(String, String)] = [], json: String) async throws -> PublishAck {
        try await withCheckedThrowingContinuation { cont in
            publish(channel: channel, key: key, headers: headers, data: Array(json.utf8)) { cont.resume(with: $0) }
        }
    }

    /// Subscribes and returns the messages as an async sequence. The subscription is
    /// confirmed before the first element; it ends when the consumer stops iterating
    /// (unsubscribing) or the client is closed.
    public func messages(channel: String, from: StartPosition = .latest, bufferLimit: Int = 100_000) async throws -> AsyncThrowingStream<StreamMessage, Error> {
        let (stream, continuation) = AsyncThrowingStream<StreamMessage, Error>.makeStream(bufferingPolicy: .bufferingOldest(bufferLimit))
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, Error>) in
            subscribe(channel: channel, from: from, handler: { m in continuation.yield(m) }) { r in
                switch r {
                case .success: cont.resume()
                case .failure(let e):
                    continuation.finish(throwing: e)
                    cont.resume(throwing: e)
                }
            }
        }
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(channel: channel) }
        return stream
    }
}
