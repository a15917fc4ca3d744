import CUV
import Glibc
import StreamOtterCore

/// Limits and timers of the WebSocket server.
struct WebSocketSettings {
    var limits = WSLimits(maxFrameSize: 1 << 20, maxMessageSize: 1 << 20, requireMasked: true)
    var http = HTTPLimits()
    var handshakeTimeoutMs: UInt64 = 10_000
    var pingIntervalMs: UInt64 = 30_000
    var idleTimeoutMs: UInt64 = 60_000
    var closeTimeoutMs: UInt64 = 2_000
    var maxBufferedBytes = 16 << 20
    var subprotocols = ["streamotter.v1"]
    /// TLS (wss://) when set.
    var tls: TLSServerSettings?
    /// Browser origins allowed to open WebSockets: empty = same host only (the Origin's
    /// host must match the Host header), "*" = any. Requests without Origin (non-browser
    /// clients) are not affected.
    var allowedOrigins: [String] = []
    var maxConnections = 100_000
    var maxConnectionsPerAddress = 1_000
    /// Bytes all connections together may hold of messages not yet complete (partial
    /// frames and fragments); over it the connection that grew it is closed with 1013.
    var maxInboundBufferedBytes = 256 << 20
    /// Engines in this process sharing its file-descriptor limit (`serve --engines N`).
    var enginesInProcess = 1
    /// A connection whose credential expires gets an `error` frame `token_expiring` this
    /// long before (time to send `{"op":"auth"}`), and is closed with 4001 this long
    /// before the expiry itself, so nothing is delivered on an expired credential.
    var expiryWarningMs: Int64 = 30_000
    var expiryCloseLeadMs: Int64 = 1_000
}

/// Who a connection belongs to, as decided at the upgrade.
public struct Identity: Sendable {
    public var subject: String?
    public var roles: [String]
    /// Milliseconds since the epoch when the credential expires (nil: never).
    public var expiresAtMs: Int64?
    /// How it was established: "anonymous", "jwt", "introspection", "custom", "mtls".
    public var method: String
    public init(subject: String? = nil, roles: [String] = [], expiresAtMs: Int64? = nil, method: String = "anonymous") {
        self.subject = subject
        self.roles = roles
        self.expiresAtMs = expiresAtMs
        self.method = method
    }
}

/// The answer to an upgrade request.
enum UpgradeDecision {
    case allow(Identity)
    /// An HTTP status (401, 403, 429, 503...) and a reason; no upgrade happens.
    case deny(Int, String)
}

/// Result of queueing an outbound message.
enum SendStatus {
    case ok
    /// Queued, but the connection's outbound bytes exceed its bound.
    case overBound
    /// Not queued: the connection is closing or closed.
    case dropped
}

/// What the server hands up to the layer above (the gateway). Loop thread only.
protocol WebSocketServerDelegate: AnyObject {
    /// A plain HTTP request (not an upgrade): return status, content type and body.
    func httpResponse(for request: HTTPRequest) -> (Int, String, String)
    /// Decides a valid upgrade request (authentication); `done` runs once, possibly later.
    func authorizeUpgrade(_ c: WebSocketConnection, request: HTTPRequest, done: @escaping (UpgradeDecision) -> Void)
    func connectionOpened(_ c: WebSocketConnection, request: HTTPRequest)
    func connectionText(_ c: WebSocketConnection, _ message: [UInt8])
    func connectionBinary(_ c: WebSocketConnection, _ message: [UInt8])
    /// Called once for every opened connection, after which no other call names it.
    func connectionClosed(_ c: WebSocketConnection, code: UInt16, reason: String)
    func connectionDrained(_ c: WebSocketConnection)
    /// The connection's credential expires soon (warning time reached).
    func credentialExpiring(_ c: WebSocketConnection, expiresAtMs: Int64)
    func upgradeRefused(_ c: WebSocketConnection, status: Int, reason: String)
}

extension WebSocketServerDelegate {
    func credentialExpiring(_ c: WebSocketConnection, expiresAtMs: Int64) {}
    /// An upgrade (or request) refused before authentication: limits, origin, malformed.
    func upgradeRefused(_ c: WebSocketConnection, status: Int, reason: String) {}
}

/// One server-side WebSocket: HTTP upgrade, then RFC 6455 frames. Loop thread only.
final class WebSocketConnection: TCPStreamDelegate {
    enum State {
        case handshake
        /// A valid upgrade request waits for the authentication decision.
        case authorizing
        case open
        /// We sent a Close and wait for the peer's (or the deadline).
        case closing(deadline: UInt64)
        case closed
    }

    let id: UInt64
    let stream: TCPStream
    unowned let server: WebSocketServer
    private(set) var state: State = .handshake
    private var head: [UInt8] = []
    private var held: [UInt8] = []
    private var decoder: FrameDecoder
    private let acceptedAt: UInt64
    private var lastReceive: UInt64
    private var lastPing: UInt64
    private(set) var subprotocol: String?
    private var opened = false
    /// Counted against the connection limits (set by `admissionCheck`, until `remove`).
    var admitted = false
    private var closeCode: UInt16 = 1006
    private var closeReason = ""
    /// Gateway state for this connection.
    var session: AnyObject?
    /// Decided at the upgrade (replaced by a credential refresh).
    var identity = Identity() { didSet { expiryWarned = false } }
    private var expiryWarned = false
    /// True when the credential is expired or about to be (nothing may flow).
    var credentialExpired: Bool {
        guard let exp = identity.expiresAtMs else { return false }
        return server.wallNowMs >= exp - server.settings.expiryCloseLeadMs
    }
    /// The client certificate's subject (mTLS), once the TLS handshake is done.
    var tlsPeerSubject: String? { stream.tls?.peerSubject }
    /// The client's address without the port.
    var peerAddress: String { WebSocketConnection.address(ofPeer: stream.peer) }

    /// "host:port" or "[v6]:port" without the port.
    static func address(ofPeer p: String) -> String {
        if p.hasPrefix("["), let close = p.firstIndex(of: "]") { return String(p[p.index(after: p.startIndex)..<close]) }
        if let colon = p.lastIndex(of: ":") { return String(p[..<colon]) }
        return p
    }
    var peer: String { stream.peer }

    init(id: UInt64, stream: TCPStream, server: WebSocketServer) {
        self.id = id
        self.stream = stream
        self.server = server
        decoder = FrameDecoder(limits: server.settings.limits)
        outboundBound = server.settings.maxBufferedBytes
        metrics = server.metrics
        delegate = server.delegate
        uvLoop = server.loop.uv
        let now = loopNowMs(server.loop)
        acceptedAt = now
        lastReceive = now
        lastPing = now
        stream.delegate = self
        stream.startReading()
    }

    var isOpen: Bool { if case .open = state { return true } else { return false } }
    /// `ws.max_buffered_bytes`, copied: the send path must not load the unowned `server`
    /// (it has a side table, so every such load takes the runtime's slow path).
    private let outboundBound: Int
    /// Also copied, for the read path (see `outboundBound`). The delegate is held strongly:
    /// it outlives its connections anyway, and a strong reference costs no weak load per
    /// message.
    private let metrics: ServerMetrics
    private let delegate: WebSocketServerDelegate?
    private let uvLoop: UnsafeMutablePointer<uv_loop_t>
    var queuedBytes: Int { stream.queuedBytes }
    /// The kernel takes what is written: less than 64 KiB (and a quarter of
    /// `ws.max_buffered_bytes`) waits in the queue, so a record may be sent ahead of the
    /// next Kafka fetch (`gateway.deliver_on_ack`). A subscriber with more queued is
    /// catching up, and fetched batches serve it better.
    var keepsUp: Bool { stream.queuedBytes < min(64 * 1024, outboundBound / 4) }

    // MARK: sending

    /// Queues a text message (one frame). The bytes are copied.
    @discardableResult
    func sendText(_ payload: [UInt8]) -> SendStatus {
        payload.withUnsafeBytes { sendFrame(.text, $0) }
    }

    /// Queues one frame; the bytes are copied (small frames of one turn into one buffer).
    @discardableResult
    func sendFrame(_ opcode: WSOpcode, _ payload: UnsafeRawBufferPointer) -> SendStatus {
        guard isOpen else { return .dropped }
        let n = payload.count
        let hs = FrameEncoder.headerSize(payloadLength: n, masked: false)
        stream.writeCopy(count: hs + n) { p in
            _ = FrameEncoder.writeHeader(into: p, opcode: opcode, fin: true, payloadLength: n, maskKey: nil)
            if n > 0 { (p + hs).copyMemory(from: payload.baseAddress!, byteCount: n) }
        }
        return stream.queuedBytes > outboundBound ? .overBound : .ok
    }

    /// Queues an already encoded frame shared with other connections.
    @discardableResult
    func sendShared(_ frame: OutBuffer) -> SendStatus {
        guard isOpen else { return .dropped }
        stream.write(frame)
        return stream.queuedBytes > outboundBound ? .overBound : .ok
    }

    /// Encodes one unmasked server frame into a buffer of its exact size.
    static func encodeFrame(_ opcode: WSOpcode, _ payload: UnsafeRawBufferPointer) -> OutBuffer {
        let hs = FrameEncoder.headerSize(payloadLength: payload.count, masked: false)
        let buf = OutBuffer(capacity: hs + payload.count)
        _ = FrameEncoder.writeHeader(into: buf.base, opcode: opcode, fin: true, payloadLength: payload.count, maskKey: nil)
        if let p = payload.baseAddress, payload.count > 0 {
            (buf.base + hs).copyMemory(from: p, byteCount: payload.count)
        }
        return buf
    }

    /// Starts the closing handshake: sends Close(code) and waits for the peer's Close.
    func close(code: UInt16, reason: String) {
        switch state {
        case .open:
            writeClose(code: code, reason: reason)
            recordClose(code, reason)
            state = .closing(deadline: loopNowMs(server.loop) + server.settings.closeTimeoutMs)
        case .handshake, .authorizing:
            state = .closed
            stream.close()
        case .closing, .closed:
            break
        }
    }

    /// Fails the connection (RFC 6455 7.1.7): Close(code), then TCP close after the write.
    func fail(code: UInt16, reason: String) {
        switch state {
        case .open:
            writeClose(code: code, reason: reason)
            recordClose(code, reason)
            state = .closing(deadline: loopNowMs(server.loop) + server.settings.closeTimeoutMs)
            stream.closeAfterWrites()
        case .closing:
            stream.closeAfterWrites()
        case .handshake, .authorizing:
            state = .closed
            stream.close()
        case .closed:
            break
        }
    }

    private func writeClose(code: UInt16, reason: String) {
        var body: [UInt8] = [UInt8(code >> 8), UInt8(code & 0xff)]
        body.append(contentsOf: Array(reason.utf8.prefix(123)))
        body.withUnsafeBytes { stream.write(WebSocketConnection.encodeFrame(.close, $0)) }
    }

    private func recordClose(_ code: UInt16, _ reason: String) {
        if closeCode == 1006 {
            closeCode = code
            closeReason = reason
        }
    }

    // MARK: inbound backpressure

    /// Why the layer above stopped reading from this connection (reading resumes when no
    /// reason is left).
    enum InboundHold: UInt8 {
        /// A publish waits for room in the producer queue.
        case producerQueueFull = 1
        /// The connection has `limits.max_publishes_in_flight` publishes unanswered.
        case publishesInFlight = 2
    }
    private var inboundHolds: UInt8 = 0
    /// True while the layer above has stopped reading from this connection.
    var inboundHeld: Bool { inboundHolds != 0 }
    /// Publishes of this connection handed to Kafka and not yet answered (the gateway's
    /// count, for `limits.max_publishes_in_flight`).
    var publishesInFlight = 0
    /// True while reading is stopped because our own answers to this peer (pongs, replies,
    /// messages) are past the outbound bound: a peer that sends without reading must not
    /// grow gateway memory. Reading resumes when the backlog halves.
    private(set) var repliesHeld = false

    /// Called after each read batch.
    private func checkReplyBacklog() {
        guard isOpen, !repliesHeld, stream.unsentBytes > server.settings.maxBufferedBytes else { return }
        repliesHeld = true
        server.metrics.readsPausedForBacklog += 1
        stream.stopReading()
    }

    /// Stops reading from the socket (TCP backpressure on the peer) until
    /// `releaseInbound` for every reason given. Requests already received are still
    /// delivered. The idle timeout does not run meanwhile.
    func holdInbound(_ reason: InboundHold) {
        guard isOpen, inboundHolds & reason.rawValue == 0 else { return }
        let was = inboundHolds
        inboundHolds |= reason.rawValue
        if was == 0 { stream.stopReading() }
    }

    func releaseInbound(_ reason: InboundHold) {
        guard inboundHolds & reason.rawValue != 0 else { return }
        inboundHolds &= ~reason.rawValue
        guard inboundHolds == 0 else { return }
        lastReceive = loopNowMs(server.loop)
        if isOpen && !repliesHeld { stream.startReading() }
    }

    func isHeld(_ reason: InboundHold) -> Bool { inboundHolds & reason.rawValue != 0 }

    // MARK: timers (called by the server's sweep)

    func sweep(now: UInt64) {
        let s = server.settings
        switch state {
        case .handshake, .authorizing:
            if now &- acceptedAt >= s.handshakeTimeoutMs {
                server.metrics.handshakeTimeouts += 1
                server.delegate?.upgradeRefused(self, status: 408, reason: "handshake timeout")
                state = .closed
                stream.write(WebSocketHandshake.simpleResponse(status: 408, reason: "Request Timeout", body: "handshake timeout\n"))
                stream.closeAfterWrites()
                // Leave the stream a moment to write, then the closing deadline applies.
                server.lingering(stream, deadline: now + s.closeTimeoutMs)
            }
        case .open:
            if let exp = identity.expiresAtMs {
                let wall = server.wallNowMs
                if wall >= exp - s.expiryCloseLeadMs {
                    server.metrics.expiredCloses += 1
                    close(code: 4001, reason: "credential expired")
                    return
                }
                if !expiryWarned && wall >= exp - s.expiryWarningMs {
                    expiryWarned = true
                    server.delegate?.credentialExpiring(self, expiresAtMs: exp)
                }
            }
            if repliesHeld {
                if stream.unsentBytes <= s.maxBufferedBytes / 2 {
                    repliesHeld = false
                    lastReceive = now
                    if !inboundHeld { stream.startReading() }
                }
                break
            }
            if inboundHeld {
                // We stopped reading on purpose (inbound backpressure): the peer's silence
                // is ours, not a sign of death. The clock restarts when reading resumes.
                break
            }
            if s.idleTimeoutMs > 0 && now &- lastReceive >= s.idleTimeoutMs {
                fail(code: 1001, reason: "idle timeout")
            } else if s.pingIntervalMs > 0 && now &- lastPing >= s.pingIntervalMs && now &- lastReceive >= s.pingIntervalMs {
                lastPing = now
                stream.write(WebSocketConnection.encodeFrame(.ping, UnsafeRawBufferPointer(start: nil, count: 0)))
            }
        case .closing(let deadline):
            if now >= deadline { stream.close() }
        case .closed:
            break
        }
    }

    var needsSweep: Bool {
        switch state {
        case .handshake, .authorizing, .closing: return true
        case .open:
            return server.settings.pingIntervalMs > 0 || server.settings.idleTimeoutMs > 0 || identity.expiresAtMs != nil
        case .closed: return false
        }
    }

    // MARK: TCPStreamDelegate

    func streamDidRead(_ stream: TCPStream, _ bytes: UnsafeRawBufferPointer) {
        lastReceive = uv_now(uvLoop)
        metrics.bytesIn += UInt64(bytes.count)
        switch state {
        case .handshake:
            readHandshake(bytes)
        case .authorizing:
            // Frames sent before the 101 (allowed by clients that pipeline): hold them.
            if head.count + bytes.count > 65536 { fail(code: 1009, reason: "too much data before the upgrade"); return }
            held.append(contentsOf: bytes)
        case .open, .closing:
            readFrames(bytes)
            checkReplyBacklog()
        case .closed:
            break
        }
    }

    func streamDidEnd(_ stream: TCPStream, error: Int32) {
        if case .open = state { recordClose(1006, "connection lost") }
    }

    func streamDidClose(_ stream: TCPStream) {
        state = .closed
        metrics.inboundBufferedBytes -= inboundCounted
        inboundCounted = 0
        if opened {
            opened = false
            server.metrics.openWebSockets -= 1
            server.delegate?.connectionClosed(self, code: closeCode, reason: closeReason)
        }
        server.remove(self)
    }

    func streamDidDrain(_ stream: TCPStream) {
        if isOpen { server.delegate?.connectionDrained(self) }
    }

    // MARK: reading

    private func readHandshake(_ bytes: UnsafeRawBufferPointer) {
        head.append(contentsOf: bytes)
        let parsed: (HTTPRequest, Int)?
        do {
            parsed = try head.withUnsafeBytes { try HTTPRequestParser.parse($0, limits: server.settings.http) }
        } catch let e as HTTPError {
            server.metrics.httpErrors += 1
            respondAndClose(status: e.status, reason: HTTPStatus.reasonPhrase(e.status), body: e.reason + "\n")
            return
        } catch {
            respondAndClose(status: 400, reason: "Bad Request", body: "bad request\n")
            return
        }
        guard let (req, consumed) = parsed else { return }
        if !WebSocketHandshake.isUpgradeRequest(req) {
            let (status, ctype, body) = server.delegate?.httpResponse(for: req) ?? (404, "text/plain", "not found\n")
            state = .closed
            var response = WebSocketHandshake.simpleResponse(status: status, reason: HTTPStatus.reasonPhrase(status), body: body, contentType: ctype)
            if req.method == "HEAD" {
                // The same headers (Content-Length included), no body (RFC 9110 9.3.2).
                response.removeLast(body.utf8.count)
            }
            stream.write(response)
            stream.closeAfterWrites()
            server.lingering(stream, deadline: loopNowMs(server.loop) + server.settings.closeTimeoutMs)
            return
        }
        switch WebSocketHandshake.evaluate(req, supported: server.settings.subprotocols) {
        case .reject(let status, let reason, let headers):
            server.metrics.httpErrors += 1
            state = .closed
            stream.write(WebSocketHandshake.simpleResponse(status: status, reason: HTTPStatus.reasonPhrase(status), body: reason + "\n", headers: headers))
            stream.closeAfterWrites()
            server.lingering(stream, deadline: loopNowMs(server.loop) + server.settings.closeTimeoutMs)
        case .accept(let key, let proto):
            if let (status, reason) = server.admissionCheck(self, req) {
                server.metrics.httpErrors += 1
                respondAndClose(status: status, reason: HTTPStatus.reasonPhrase(status), body: reason + "\n")
                return
            }
            let rest = Array(head[consumed...])
            head = []
            state = .authorizing
            guard let delegate = server.delegate else {
                upgrade(req, key: key, proto: proto, rest: rest, identity: Identity())
                return
            }
            // Found again by id rather than held weakly (see TCPStream.delegate).
            let id = self.id
            delegate.authorizeUpgrade(self, request: req) { [weak server] decision in
                guard let self = server?.connections[id], case .authorizing = self.state, !self.stream.isClosing else { return }
                switch decision {
                case .allow(let identity):
                    self.upgrade(req, key: key, proto: proto, rest: rest, identity: identity)
                case .deny(let status, let reason):
                    self.server.metrics.authFailures += 1
                    var headers: [(String, String)] = []
                    if status == 401 { headers.append(("WWW-Authenticate", "Bearer")) }
                    self.state = .closed
                    self.stream.write(WebSocketHandshake.simpleResponse(status: status, reason: HTTPStatus.reasonPhrase(status),
                                                                       body: reason + "\n", headers: headers))
                    self.stream.closeAfterWrites()
                    self.server.lingering(self.stream, deadline: loopNowMs(self.server.loop) + self.server.settings.closeTimeoutMs)
                }
            }
        }
    }

    private func upgrade(_ req: HTTPRequest, key: String, proto: String?, rest: [UInt8], identity: Identity) {
        self.identity = identity
        subprotocol = proto
        stream.write(WebSocketHandshake.acceptResponse(acceptKey: key, subprotocol: proto))
        state = .open
        opened = true
        server.metrics.connectionsOpened += 1
        server.metrics.openWebSockets += 1
        server.delegate?.connectionOpened(self, request: req)
        let early = rest + held
        held = []
        if !early.isEmpty { early.withUnsafeBytes { readFrames($0) } }
    }

    private func respondAndClose(status: Int, reason: String, body: String) {
        server.delegate?.upgradeRefused(self, status: status, reason: body.trimmingSpaces.withoutTrailingNewline)
        state = .closed
        head = []
        stream.write(WebSocketHandshake.simpleResponse(status: status, reason: reason, body: body))
        stream.closeAfterWrites()
        server.lingering(stream, deadline: loopNowMs(server.loop) + server.settings.closeTimeoutMs)
    }

    /// This connection's part of `ServerMetrics.inboundBufferedBytes`.
    private var inboundCounted = 0

    /// Updates the server-wide count of bytes held for incomplete messages; a connection
    /// that takes it over `ws.max_inbound_buffered_bytes` is closed (1013, try again
    /// later): per-connection limits alone let many connections that each stop just
    /// short of a complete 1 MiB message hold a GiB between them.
    private func accountInbound() {
        // Only open connections count: a closing one is gone within ws.close_timeout_ms,
        // and is not closed again for what it still sends.
        var now = 0
        if case .open = state { now = decoder.bufferedBytes }
        if now == inboundCounted { return }
        metrics.inboundBufferedBytes += now - inboundCounted
        inboundCounted = now
        if now > 0 && metrics.inboundBufferedBytes > server.settings.maxInboundBufferedBytes {
            metrics.inboundOverflows += 1
            fail(code: 1013, reason: "server busy: too many incomplete messages, try again later")
            metrics.inboundBufferedBytes -= inboundCounted
            inboundCounted = 0
        }
    }

    private func readFrames(_ bytes: UnsafeRawBufferPointer) {
        decoder.append(bytes)
        defer { accountInbound() }
        while true {
            let event: WSEvent?
            do {
                event = try decoder.next()
            } catch let e as WSProtocolError {
                server.metrics.protocolErrors += 1
                fail(code: e.closeCode, reason: e.reason)
                return
            } catch {
                fail(code: 1011, reason: "internal error")
                return
            }
            guard let event else { return }
            switch event {
            case .text(let msg):
                metrics.messagesIn += 1
                if isOpen { delegate?.connectionText(self, msg) }
            case .binary(let msg):
                metrics.messagesIn += 1
                if isOpen { delegate?.connectionBinary(self, msg) }
            case .ping(let payload):
                if isOpen { payload.withUnsafeBytes { stream.write(WebSocketConnection.encodeFrame(.pong, $0)) } }
            case .pong:
                break
            case .close(let code, let reason):
                if case .open = state {
                    // Echo the peer's code (an empty Close is answered with an empty Close).
                    if let code {
                        writeClose(code: code, reason: "")
                    } else {
                        stream.write(WebSocketConnection.encodeFrame(.close, UnsafeRawBufferPointer(start: nil, count: 0)))
                    }
                    recordClose(code ?? 1005, String(decoding: reason, as: UTF8.self))
                    state = .closing(deadline: loopNowMs(server.loop) + server.settings.closeTimeoutMs)
                        }
                stream.closeAfterWrites()
                return
            }
        }
    }
}

/// Counters read by /metrics. Loop thread only.
final class ServerMetrics {
    var connectionsOpened: UInt64 = 0
    var openWebSockets = 0
    var connectionsClosed: UInt64 = 0
    var messagesIn: UInt64 = 0
    var messagesOut: UInt64 = 0
    var bytesIn: UInt64 = 0
    var protocolErrors: UInt64 = 0
    var httpErrors: UInt64 = 0
    var handshakeTimeouts: UInt64 = 0
    var publishes: UInt64 = 0
    var acks: UInt64 = 0
    var publishFailures: UInt64 = 0
    var deliveries: UInt64 = 0
    /// Of `deliveries`, those sent on the producer's acknowledgement (`gateway.deliver_on_ack`).
    var deliveriesOnAck: UInt64 = 0
    var slowConsumerCloses: UInt64 = 0
    var authFailures: UInt64 = 0
    var expiredCloses: UInt64 = 0
    var rateLimited: UInt64 = 0
    var decryptFailures: UInt64 = 0
    var readsPausedForBacklog: UInt64 = 0
    var admissionRefusals: UInt64 = 0
    /// Bytes held for incomplete inbound messages, all connections together.
    var inboundBufferedBytes = 0
    /// Connections closed for taking that over `ws.max_inbound_buffered_bytes`.
    var inboundOverflows: UInt64 = 0
}

/// Accepts TCP connections and runs WebSocket connections on them. Loop thread only.
final class WebSocketServer {
    let loop: EventLoop
    let settings: WebSocketSettings
    /// Held strongly: a weak reference would give the delegate (the gateway) a side table,
    /// and every retain, release and `unowned` load of it would take the runtime's slow
    /// path (3% of the loop thread in ingest). The engine breaks the cycle
    /// (gateway -> server -> gateway) when it tears down.
    var delegate: WebSocketServerDelegate?
    let metrics = ServerMetrics()
    private var listener: TCPListener?
    private(set) var connections: [UInt64: WebSocketConnection] = [:]
    private var streams: [ObjectIdentifier: (TCPStream, UInt64)] = [:]   // lingering non-WS streams
    private var nextID: UInt64 = 1
    private var sweepTimer: LoopTimer?
    private var tlsContext: TLSContext?
    private var tlsStamp: [Int] = []
    private var reloadTimer: LoopTimer?

    init(loop: EventLoop, settings: WebSocketSettings) {
        self.loop = loop
        self.settings = settings
    }

    var port: Int { listener?.port ?? 0 }
    var boundAddress: String { listener?.boundAddress ?? "" }

    /// Sockets this server may hold (WebSockets, handshakes, HTTP requests): its share of
    /// the process's file-descriptor limit, less a reserve for Kafka's sockets and pipes,
    /// log and audit files. Past it an upgrade gets 503 and a new connection a 503 at once,
    /// so that Kafka keeps the descriptors it needs (a full table once stalled every
    /// publish and /healthz).
    private(set) var socketBudget = Int.max
    static let descriptorReserve = 256

    private func computeSocketBudget() {
        var rl = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl) == 0, rl.rlim_cur != rlim_t.max else { return }
        let soft = rl.rlim_cur > rlim_t(Int32.max) ? Int(Int32.max) : Int(rl.rlim_cur)
        let n = max(1, settings.enginesInProcess)
        socketBudget = max(16, (soft - WebSocketServer.descriptorReserve * n) / n)
    }

    func listen(host: String, port: Int, reusePort: Bool = false) throws {
        computeSocketBudget()
        if let t = settings.tls {
            tlsContext = TLSContext(try t.makeContext())
            tlsStamp = t.fileStamp()
            if t.reloadIntervalMs > 0 {
                let rt = LoopTimer(loop: loop)
                rt.start(afterMs: t.reloadIntervalMs, repeatMs: t.reloadIntervalMs, unref: true) { [unowned self] in self.reloadTLSIfChanged() }
                reloadTimer = rt
            }
        }
        listener = try TCPListener(loop: loop, host: host, port: port, reusePort: reusePort) { [unowned self] l in
            self.accept(l)
        }
        let tick = max(10, min(250, settings.handshakeTimeoutMs / 4, settings.closeTimeoutMs / 4))
        let t = LoopTimer(loop: loop)
        t.start(afterMs: tick, repeatMs: tick, unref: true) { [unowned self] in self.sweep() }
        sweepTimer = t
    }

    /// Certificate reload without a restart: a renewed certificate or key file is loaded
    /// for new connections; a broken one is logged and the current one kept.
    func reloadTLSIfChanged() {
        guard let t = settings.tls, let ctx = tlsContext else { return }
        let stamp = t.fileStamp()
        guard stamp != tlsStamp else { return }
        do {
            ctx.replace(try t.makeContext())
            tlsStamp = stamp
            Log.event("info", "tls_reloaded", ["cert_file": t.certFile])
        } catch {
            tlsStamp = stamp
            Log.event("error", "tls_reload_failed", ["error": "\(error)"])
        }
    }

    private func accept(_ l: TCPListener) {
        guard let s = try? TCPStream(loop: loop, accepting: l.handle) else { return }
        if let ctx = tlsContext {
            guard let ch = TLSChannel(context: ctx.ctx, server: true) else {
                s.close()
                return
            }
            s.tls = ch
        }
        // TCP connections from one address that are not (yet) admitted WebSockets
        // (handshakes, HTTP requests): at most twice the per-address limit besides the
        // admitted ones, so that silent connections cannot take the process's file
        // descriptors, while a burst of upgrades over the limit still gets its 429s;
        // more are closed at once.
        let addr = WebSocketConnection.address(ofPeer: s.peer)
        let counts = perAddress[addr] ?? AddressCount()
        if counts.tcp - counts.admitted >= 2 * settings.maxConnectionsPerAddress {
            metrics.admissionRefusals += 1
            s.close()
            return
        }
        if connections.count + streams.count >= socketBudget {
            metrics.admissionRefusals += 1
            if s.tls == nil {
                s.write(WebSocketHandshake.simpleResponse(status: 503, reason: HTTPStatus.reasonPhrase(503),
                                                          body: "the gateway is at its connection limit\n"))
                s.flushTurn()
            }
            s.close()
            return
        }
        let id = nextID
        nextID += 1
        let c = WebSocketConnection(id: id, stream: s, server: self)
        connections[id] = c
        perAddress[addr, default: AddressCount()].tcp += 1
    }

    /// Keeps a stream that is no longer a WebSocket until it closes or its deadline passes.
    func lingering(_ s: TCPStream, deadline: UInt64) {
        streams[ObjectIdentifier(s)] = (s, deadline)
    }

    /// Per client address: TCP connections held, and how many of them are admitted
    /// WebSockets (open, or authorizing after the admission check).
    private struct AddressCount {
        var tcp = 0
        var admitted = 0
    }
    private var perAddress: [String: AddressCount] = [:]
    /// WebSockets admitted (open or authorizing), for `limits.max_connections`.
    private var admittedTotal = 0

    /// Origin allow-list and connection limits, checked before authentication. Returns
    /// (status, reason) to refuse the upgrade.
    func admissionCheck(_ c: WebSocketConnection, _ req: HTTPRequest) -> (Int, String)? {
        if let origin = req.header("Origin"), !originAllowed(origin, host: req.header("Host")) {
            metrics.admissionRefusals += 1
            return (403, "origin '\(origin)' is not allowed")
        }
        // Counted when admitted, not when open: a burst of upgrades (some still
        // authorizing) admits exactly up to the limit and refuses only the excess.
        if admittedTotal >= min(settings.maxConnections, socketBudget) {
            metrics.admissionRefusals += 1
            return (503, "the gateway is at its connection limit")
        }
        let addr = c.peerAddress
        if (perAddress[addr]?.admitted ?? 0) >= settings.maxConnectionsPerAddress {
            metrics.admissionRefusals += 1
            return (429, "too many connections from this address")
        }
        c.admitted = true
        admittedTotal += 1
        perAddress[addr, default: AddressCount()].admitted += 1
        return nil
    }

    func originAllowed(_ origin: String, host: String?) -> Bool {
        if settings.allowedOrigins.contains("*") { return true }
        if settings.allowedOrigins.contains(where: { $0.lowercased() == origin.lowercased() }) { return true }
        guard settings.allowedOrigins.isEmpty, let host else { return false }
        // Same host: the Origin's authority equals the Host header.
        let parts = origin.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count >= 2, parts[0].hasSuffix(":") else { return false }
        return parts[1].lowercased() == host.lowercased()
    }

    func remove(_ c: WebSocketConnection) {
        guard connections.removeValue(forKey: c.id) != nil else {
            streams.removeValue(forKey: ObjectIdentifier(c.stream))
            return
        }
        metrics.connectionsClosed += 1
        let addr = c.peerAddress
        if var n = perAddress[addr] {
            n.tcp -= 1
            if c.admitted {
                n.admitted -= 1
                admittedTotal -= 1
                c.admitted = false
            }
            perAddress[addr] = n.tcp > 0 ? n : nil
        }
        streams.removeValue(forKey: ObjectIdentifier(c.stream))
    }

    /// Wall clock (ms since the epoch) as of the last sweep tick.
    private(set) var wallNowMs: Int64 = wallClockMs()

    private func sweep() {
        let now = loopNowMs(loop)
        wallNowMs = wallClockMs()
        for c in connections.values where c.needsSweep { c.sweep(now: now) }
        for (k, (s, deadline)) in streams where now >= deadline {
            streams.removeValue(forKey: k)
            s.close()
        }
    }

    /// Stops accepting new connections.
    func stopListening() {
        listener?.close()
        listener = nil
    }

    /// Closes every open connection with `code`.
    func closeAll(code: UInt16, reason: String) {
        for c in Array(connections.values) { c.close(code: code, reason: reason) }
    }

    /// Stops timers; connections must be closed already.
    func shutdown() {
        stopListening()
        for c in Array(connections.values) { c.stream.close() }
        for (s, _) in streams.values { s.close() }
        sweepTimer?.close()
        sweepTimer = nil
        reloadTimer?.close()
        reloadTimer = nil
    }
}

extension String {
    var withoutTrailingNewline: String {
        var s = Substring(self)
        while let l = s.last, l == "\n" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
