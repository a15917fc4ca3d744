import CRdKafka
import Glibc
import StreamOtterCore
import StreamOtterSecurity

/// A topic-partition key.
struct TopicPartition: Hashable {
    let topic: String
    let partition: Int32
}

/// One channel subscribed by one connection: the next offset it needs per partition.
final class ChannelSubscription {
    let channel: String
    unowned let connection: WebSocketConnection
    /// Next offset to deliver, per partition.
    var next = PartitionPositions()
    var feeds: [PartitionFeed] = []
    /// Replay feeds of the partitions on which it is behind the live feed.
    var replays: [ReplayFeed] = []
    init(channel: String, connection: WebSocketConnection) {
        self.channel = channel
        self.connection = connection
    }
}

/// Offsets by partition number. Partitions are small dense numbers and fan-out reads and
/// writes one entry per delivery, so the first four live inline (no pointer to chase per
/// subscriber) and the rest in an array indexed by partition.
struct PartitionPositions {
    private static let none = Int64.min
    private var first: (Int64, Int64, Int64, Int64) = (none, none, none, none)
    private var rest: [Int64] = []

    subscript(partition: Int32) -> Int64? {
        get {
            let p = Int(partition)
            let v: Int64
            if p >= 0 && p < 4 {
                v = withUnsafeBytes(of: first) { $0.load(fromByteOffset: p * 8, as: Int64.self) }
            } else if p >= 4 && p - 4 < rest.count {
                v = rest[p - 4]
            } else {
                return nil
            }
            return v == PartitionPositions.none ? nil : v
        }
        set {
            let p = Int(partition)
            let v = newValue ?? PartitionPositions.none
            if p >= 0 && p < 4 {
                withUnsafeMutableBytes(of: &first) { $0.storeBytes(of: v, toByteOffset: p * 8, as: Int64.self) }
                return
            }
            guard p >= 4 else { return }
            if p - 4 >= rest.count {
                guard newValue != nil else { return }
                rest.append(contentsOf: repeatElement(PartitionPositions.none, count: p - 4 + 1 - rest.count))
            }
            rest[p - 4] = v
        }
    }

    /// (partition, offset) in partition order.
    var sorted: [(Int32, Int64)] {
        (0..<Int32(4 + rest.count)).compactMap { p in self[p].map { (p, $0) } }
    }
}

/// Gateway state of one connection.
final class Session {
    /// Messages and bytes per second from this client (nil: unlimited).
    var rate: RateLimiter?
    var subscriptions: [String: ChannelSubscription] = [:]
    /// Channels with a subscribe being resolved (metadata, offsets) on a worker thread.
    var pending: Set<String> = []
    var closed = false
    /// Over its outbound bound with `ws.slow_consumer=pause`: off every feed until drained.
    var paused = false
    /// Replayed partitions waiting for the socket to drain (GatewayFlow.swift).
    var parked: [(ChannelSubscription, Int32)] = []
}

/// One consumption of a topic-partition, shared by every subscriber on the engine.
///
/// `position` is the next offset the fetcher delivers. A subscriber that needs history
/// from before `position` reads it from the replay lane (ReplayLane.swift) and joins this
/// feed once caught up, so live subscribers are never held back by a replay; every
/// subscriber skips offsets below its own next offset, so nobody sees a duplicate or a
/// gap at the seam.
final class PartitionFeed {
    let tp: TopicPartition
    var subscribers: [ChannelSubscription] = []
    var position: Int64 = 0
    var assigned = false
    init(_ tp: TopicPartition) { self.tp = tp }
}

/// Decides upgrades (JWT, introspection, custom callback). Loop thread.
protocol UpgradeAuthenticator: AnyObject {
    func authenticate(_ c: WebSocketConnection, _ request: HTTPRequest, _ done: @escaping (UpgradeDecision) -> Void)
    /// Verifies a refreshed token for an open connection (`{"op":"auth"}`).
    func verify(token: String, for c: WebSocketConnection, _ done: @escaping (Result<Identity, AuthFailure>) -> Void)
}

struct AuthFailure: Error {
    let status: Int
    let message: String
}

extension UpgradeAuthenticator {
    func verify(token: String, for c: WebSocketConnection, _ done: @escaping (Result<Identity, AuthFailure>) -> Void) {
        done(.failure(AuthFailure(status: 400, message: "token refresh is not supported by this authentication method")))
    }
}

/// What the gateway tells the embedding host about connections. Loop thread.
protocol GatewayHooks: AnyObject {
    func connectionOpened(_ id: UInt64, path: String, headers: [(String, String)])
    func connectionMessage(_ id: UInt64, text: Bool, _ bytes: [UInt8])
    func connectionClosed(_ id: UInt64, code: UInt16, reason: String)
}

/// The `streamotter.v1` protocol over WebSocket connections, bridged to Kafka.
/// Loop thread only.
final class Gateway: WebSocketServerDelegate {
    let loop: EventLoop
    let server: WebSocketServer
    let producer: KafkaProducer
    let consumer: KafkaFanoutConsumer
    let config: EngineConfig
    /// `limits.max_publishes_in_flight`.
    var maxPublishesInFlight: Int { config.maxPublishesInFlight }
    var feeds: [TopicPartition: PartitionFeed] = [:]
    private var metricsGroup: MetricsGroup?
    private var metricsTimer: LoopTimer?
    /// `gateway.deliver_on_ack`, and the producer waits for all in-sync replicas.
    let deliverOnAck: Bool
    /// Partition counts by topic with the loop time they were looked up.
    private var partitionCounts: [String: (count: Int32, at: UInt64)] = [:]
    var pendingPublishes = TokenTable<PendingPublish>()
    var nextToken: UInt64 = 1
    /// Dedupe window, held publishes, replay lane (GatewayFlow.swift).
    let flow: FlowState
    private var scratch: [UInt8] = []
    private var ackScratch: [UInt8] = []
    var shuttingDown = false
    /// The embedding host's view of connections (the engine).
    weak var hooks: GatewayHooks?
    /// Authentication at the upgrade; nil = anonymous (with the mTLS subject if any).
    var authenticator: UpgradeAuthenticator?
    /// Channel permissions by role; nil = everything allowed.
    var permissions: ChannelPermissions?
    var audit = try! GatewayAudit(path: nil)
    /// Per-channel encryption of record values (nil: off).
    var encryption: ChannelEncryption?
    private var keyReloadTimer: LoopTimer?
    private var encryptionReloadTimer: LoopTimer?

    /// Sets up authentication, permissions and audit from the configuration.
    func configureSecurity(customAuth: UpgradeAuthenticator?,
                           keyProvider: (@Sendable (String?, String?) -> (String, [UInt8])?)? = nil) throws {
        let sec = config.security
        audit = try GatewayAudit(path: sec.auditFile)
        if let keyProvider {
            let cipher = MessageCipher(activeKey: { channel in keyProvider(nil, channel) },
                                       key: { id in keyProvider(id, nil).map { $0.1 } })
            encryption = ChannelEncryption(cipher: cipher, keyRing: nil, patterns: sec.encryptedChannels)
        } else if let f = sec.encryptionKeyFile {
            do {
                let ring = try MessageKeyRing(contentsOfFile: f)
                encryption = ChannelEncryption(cipher: MessageCipher(keyRing: ring), keyRing: ring, patterns: sec.encryptedChannels)
            } catch { throw ConfigError("encryption.key_file: \(error)") }
            if sec.encryptionReloadIntervalMs > 0 {
                let t = LoopTimer(loop: loop)
                t.start(afterMs: sec.encryptionReloadIntervalMs, repeatMs: sec.encryptionReloadIntervalMs, unref: true) { [weak self] in
                    guard let self, let ring = self.encryption?.keyRing else { return }
                    self.loop.runBlocking({ () -> String? in
                        do { try ring.reload(); return nil } catch { return "\(error)" }
                    }, then: { err in if let err { Log.event("error", "encryption_keys_reload_failed", ["error": err]) } })
                }
                encryptionReloadTimer = t
            }
        }
        if let f = sec.permissionsFile {
            do {
                var p = try ChannelPermissions(contentsOfFile: f)
                if let claim = sec.rolesClaim { p.claimPath = claim.split(separator: ".").map(String.init) }
                permissions = p
            } catch { throw ConfigError("auth.permissions_file: \(error)") }
        }
        if let customAuth {
            (customAuth as? CustomAuthenticator)?.audit = audit
            authenticator = customAuth
        } else if sec.mode == "jwt" {
            let a = try JWTAuthenticator(settings: sec, permissions: permissions ?? ChannelPermissions(claimPath: sec.rolesClaim ?? "roles"))
            a.audit = audit
            authenticator = a
            if sec.keyReloadIntervalMs > 0 {
                let t = LoopTimer(loop: loop)
                t.start(afterMs: sec.keyReloadIntervalMs, repeatMs: sec.keyReloadIntervalMs, unref: true) { [weak self, weak a] in
                    guard let self, let a else { return }
                    self.loop.runBlocking({ a.reloadKeys() }, then: { _ in })
                }
                keyReloadTimer = t
            }
        } else if sec.mode == "introspection" {
            let a = try IntrospectionAuthenticator(loop: loop, settings: sec,
                                                   permissions: permissions ?? ChannelPermissions(claimPath: sec.rolesClaim ?? "roles"))
            a.audit = audit
            authenticator = a
        }
    }

    /// True when the connection's identity may do `perm` on `channel` (always without
    /// configured permissions). A denial is audited.
    private func permitted(_ c: WebSocketConnection, _ perm: ChannelPermission, _ channel: String, op: String) -> Bool {
        guard let permissions else { return true }
        let who = SecurityIdentity(subject: c.identity.subject ?? "", roles: c.identity.roles)
        if permissions.allows(perm, channel: channel, identity: who) { return true }
        audit.denied(c, op: op, channel: channel, permission: perm.rawValue)
        return false
    }
    var kafkaDescription = ""
    let startedAt = wallClockMs()

    struct PendingPublish {
        /// Held until the delivery report, so the ack needs no lookup; a connection that
        /// closed meanwhile is skipped.
        let connection: WebSocketConnection
        let id: String?
        let channel: String
        /// The dedupe entry, for publishes that carry an id.
        let key: PublishKey?
        /// The record's CreateTime (ms since the epoch), set by the gateway.
        let created: Int64
    }

    init(loop: EventLoop, server: WebSocketServer, producer: KafkaProducer, consumer: KafkaFanoutConsumer, config: EngineConfig) {
        self.loop = loop
        self.server = server
        self.producer = producer
        self.consumer = consumer
        self.config = config
        flow = FlowState(config: config)
        scratch.reserveCapacity(4096)
        deliverOnAck = config.deliverOnAck && producer.acksAll
        producer.onDelivery = { [unowned self] token, m in
            let err = m.pointee.err
            let created = self.delivered(token: token, err: err, partition: m.pointee.partition, offset: m.pointee.offset)
            if err == RD_KAFKA_RESP_ERR_NO_ERROR && self.deliverOnAck, let created { self.deliverAcknowledged(m, created: created) }
        }
        producer.onError = { err, fatal in
            Log.event(fatal ? "error" : "warn", "kafka_producer_error", ["error": err.description, "fatal": fatal ? "true" : "false"])
        }
        consumer.onMessage = { [unowned self] m in self.consumed(m) }
        producer.afterEvents = { [unowned self] in self.retryHeld() }
    }

    var inFlightPublishes: Int { pendingPublishes.count + hostPublishes.count }

    // MARK: HTTP

    func httpResponse(for request: HTTPRequest) -> (Int, String, String) {
        guard request.method == "GET" || request.method == "HEAD" else {
            return (405, "text/plain; charset=utf-8", "method not allowed\n")
        }
        switch request.path {
        case "/healthz":
            let body = "{\"status\":\"\(shuttingDown ? "stopping" : "ok")\",\"connections\":\(groupConnections),\"kafka\":\"\(kafkaDescription)\"}\n"
            return (shuttingDown ? 503 : 200, "application/json", body)
        case "/metrics":
            return (200, "text/plain; version=0.0.4", metricsText())
        default:
            return (404, "text/plain; charset=utf-8", "not found: use a WebSocket upgrade (subprotocol streamotter.v1), /healthz or /metrics\n")
        }
    }

    /// Every metric of this engine as (name, type, help, value), always in the same order.
    func metricSamples() -> [MetricSample] {
        let m = server.metrics
        var s: [MetricSample] = []
        s.reserveCapacity(32)
        func metric(_ name: String, _ type: String, _ help: String, _ v: UInt64) { s.append(MetricSample(name, type, help, v)) }
        // First: `groupConnections` reads it from the other engines' snapshots.
        metric("connections_open", "gauge", "Open WebSocket connections.", UInt64(server.metrics.openWebSockets))
        metric("connections_opened_total", "counter", "WebSocket connections opened.", m.connectionsOpened)
        metric("messages_in_total", "counter", "WebSocket messages received.", m.messagesIn)
        metric("messages_out_total", "counter", "Protocol messages queued to clients.", m.messagesOut)
        metric("bytes_in_total", "counter", "Bytes received from clients.", m.bytesIn)
        metric("protocol_errors_total", "counter", "Connections failed for WebSocket protocol violations.", m.protocolErrors)
        metric("http_errors_total", "counter", "HTTP requests refused.", m.httpErrors)
        metric("handshake_timeouts_total", "counter", "Handshakes that timed out.", m.handshakeTimeouts)
        metric("publishes_total", "counter", "Publish requests handed to Kafka.", m.publishes)
        metric("publish_acks_total", "counter", "Publishes acknowledged by Kafka.", m.acks)
        metric("publish_failures_total", "counter", "Publishes that failed.", m.publishFailures)
        metric("publishes_in_flight", "gauge", "Publishes waiting for Kafka.", UInt64(pendingPublishes.count))
        metric("deliveries_total", "counter", "Kafka records delivered to subscribers.", m.deliveries)
        metric("deliveries_on_ack_total", "counter", "Deliveries sent on the producer's acknowledgement instead of the next fetch.", m.deliveriesOnAck)
        metric("slow_consumer_closes_total", "counter", "Connections closed for exceeding their outbound buffer bound.", m.slowConsumerCloses)
        metric("inbound_buffered_bytes", "gauge", "Bytes held for incomplete inbound messages, all connections.", UInt64(max(0, m.inboundBufferedBytes)))
        metric("inbound_overflow_closes_total", "counter", "Connections closed (1013) for taking incomplete inbound messages over ws.max_inbound_buffered_bytes.", m.inboundOverflows)
        metric("partition_feeds", "gauge", "Topic-partitions consumed.", UInt64(feeds.count))
        flowMetricSamples(into: &s)
        return s
    }

    /// The Prometheus text: this engine's figures, plus the latest snapshots of the other
    /// engines on the same listener (`--engines N`), so every scrape sees the whole process.
    private func metricsText() -> String {
        var samples = metricSamples()
        if let group = metricsGroup {
            for other in group.others(self) where other.count == samples.count {
                for i in samples.indices { samples[i].value &+= other[i] }
            }
        }
        var s = ""
        for m in samples {
            s += "# HELP streamotter_\(m.name) \(m.help)\n# TYPE streamotter_\(m.name) \(m.type)\nstreamotter_\(m.name) \(m.value)\n"
        }
        return s
    }

    /// Open WebSocket connections of this engine and the other engines on its listener.
    private var groupConnections: UInt64 {
        var n = UInt64(server.metrics.openWebSockets)
        for other in metricsGroup?.others(self) ?? [] { n &+= other.first ?? 0 }
        return n
    }

    /// Shares this engine's figures with the other engines listening on `key` (SO_REUSEPORT
    /// engines of one process), refreshed every 500 ms on this loop.
    func joinMetricsGroup(_ key: String) {
        metricsGroup = MetricsGroup.join(key, self, metricSamples().map(\.value))
        let t = LoopTimer(loop: loop)
        t.start(afterMs: 500, repeatMs: 500, unref: true) { [unowned self] in
            self.metricsGroup?.publish(self, self.metricSamples().map(\.value))
        }
        metricsTimer = t
    }

    func leaveMetricsGroup() {
        metricsTimer?.close()
        metricsTimer = nil
        metricsGroup?.leave(self)
        metricsGroup = nil
    }

    // MARK: connections

    func authorizeUpgrade(_ c: WebSocketConnection, request: HTTPRequest, done: @escaping (UpgradeDecision) -> Void) {
        guard let auth = authenticator else {
            done(.allow(Identity(subject: c.tlsPeerSubject, method: c.tlsPeerSubject == nil ? "anonymous" : "mtls")))
            return
        }
        auth.authenticate(c, request, done)
    }

    func connectionOpened(_ c: WebSocketConnection, request: HTTPRequest) {
        let session = Session()
        let sec = config.security
        if sec.messagesPerSecond > 0 || sec.bytesPerSecond > 0 {
            session.rate = RateLimiter(messagesPerSecond: sec.messagesPerSecond, bytesPerSecond: sec.bytesPerSecond,
                                       now: SecurityClock.monotonicNanos())
        }
        c.session = session
        audit.opened(c)
        hooks?.connectionOpened(c.id, path: request.target, headers: request.headers.map { ($0.name, $0.value) })
    }

    func connectionClosed(_ c: WebSocketConnection, code: UInt16, reason: String) {
        hooks?.connectionClosed(c.id, code: code, reason: reason)
        audit.closed(c, code: code, reason: reason)
        flow.overSince.removeValue(forKey: c.id)
        guard let s = c.session as? Session else { return }
        s.closed = true
        for sub in s.subscriptions.values { detach(sub) }
        s.subscriptions.removeAll()
        c.session = nil
    }

    func connectionDrained(_ c: WebSocketConnection) { resumeDrained(c) }

    func connectionBinary(_ c: WebSocketConnection, _ message: [UInt8]) {
        hooks?.connectionMessage(c.id, text: false, message)
        guard config.handleProtocol else { return }
        reply(c, ServerFrames.error(id: nil, code: "unsupported", message: "binary frames are not supported by streamotter.v1; send JSON text frames"))
    }

    func reply(_ c: WebSocketConnection, _ payload: [UInt8]) {
        server.metrics.messagesOut += 1
        if c.sendText(payload) == .overBound { slowConsumer(c) }
    }

    /// An `ack`, encoded in a reused buffer (one per publish: the hot path).
    func replyAck(_ c: WebSocketConnection, id: String?, channel: String, partition: Int32, offset: Int64) {
        server.metrics.messagesOut += 1
        ackScratch.removeAll(keepingCapacity: true)
        ServerFrames.appendAck(id: id, channel: channel, partition: partition, offset: offset, to: &ackScratch)
        let status = ackScratch.withUnsafeBytes { c.sendFrame(.text, $0) }
        if status == .overBound { slowConsumer(c) }
    }

    /// Over the outbound bound: `ws.slow_consumer` decides (GatewayFlow.swift).
    func slowConsumer(_ c: WebSocketConnection) { noteOverBound(c) }

    func connectionText(_ c: WebSocketConnection, _ message: [UInt8]) {
        hooks?.connectionMessage(c.id, text: true, message)
        guard config.handleProtocol else { return }
        if let session = c.session as? Session, session.rate != nil,
           case .limited(let wait) = session.rate!.consume(bytes: message.count, now: SecurityClock.monotonicNanos()) {
            server.metrics.rateLimited += 1
            audit.limit(c, reason: "rate limit")
            let id = (try? message.withUnsafeBytes { try ProtocolParser.parse($0) })?.id
            reply(c, ServerFrames.error(id: id, code: "rate_limited",
                message: "over limits.messages_per_second / limits.bytes_per_second; the request was dropped, retry in \(wait / 1_000_000 + 1) ms"))
            return
        }
        let request: ClientRequest
        do {
            request = try message.withUnsafeBytes { try ProtocolParser.parse($0) }
        } catch let e as ProtocolError {
            reply(c, ServerFrames.error(id: e.id, code: e.code, message: e.message))
            return
        } catch {
            reply(c, ServerFrames.error(id: nil, code: "bad_request", message: "\(error)"))
            return
        }
        guard let session = c.session as? Session else { return }
        switch request {
        case .publish(let id, let channel, let key, let headers, let value):
            publish(c, id: id, channel: channel, key: key, headers: headers, value: value)
        case .subscribe(let id, let channel, let from):
            subscribe(c, session, id: id, channel: channel, from: from)
        case .unsubscribe(let id, let channel):
            guard let sub = session.subscriptions.removeValue(forKey: channel) else {
                reply(c, ServerFrames.error(id: id, code: "not_subscribed", message: "not subscribed to channel '\(channel)'"))
                return
            }
            detach(sub)
            reply(c, ServerFrames.ok(id: id))
        case .auth(let id, let token):
            refreshCredential(c, id: id, token: token)
        }
    }

    // MARK: credentials

    /// `{"op":"auth","token":...}`: a new credential for an open connection. It must verify
    /// and name the same subject; the connection then lives until the new expiry.
    private func refreshCredential(_ c: WebSocketConnection, id: String?, token: String) {
        guard let auth = authenticator else {
            reply(c, ServerFrames.error(id: id, code: "unsupported", message: "this gateway does not use tokens (no authentication configured)"))
            return
        }
        let cid = c.id
        auth.verify(token: token, for: c) { [weak self] result in
            guard let self, let c = self.server.connections[cid], c.isOpen else { return }
            switch result {
            case .success(let identity):
                guard identity.subject == c.identity.subject else {
                    self.reply(c, ServerFrames.error(id: id, code: "unauthorized", message: "the new token names another subject"))
                    return
                }
                c.identity = identity
                self.audit.refreshed(c, ok: true, reason: "ok")
                self.reply(c, ServerFrames.ok(id: id))
            case .failure(let e):
                self.audit.refreshed(c, ok: false, reason: e.message)
                self.reply(c, ServerFrames.error(id: id, code: "unauthorized", message: e.message))
            }
        }
    }

    // MARK: publish

    func upgradeRefused(_ c: WebSocketConnection, status: Int, reason: String) {
        audit.refused(c, status: status, reason: reason)
    }

    func credentialExpiring(_ c: WebSocketConnection, expiresAtMs: Int64) {
        var f = Array("{\"op\":\"error\",\"code\":\"token_expiring\",\"message\":\"the credential expires soon; send {\\\"op\\\":\\\"auth\\\",\\\"token\\\":...} to refresh it\",\"expires_at\":".utf8)
        f += Array(String(expiresAtMs).utf8)
        f.append(UInt8(ascii: "}"))
        reply(c, f)
    }

    private func publish(_ c: WebSocketConnection, id: String?, channel: String, key: [UInt8]?, headers: [(String, [UInt8])], value: [UInt8]) {
        if c.credentialExpired {
            reply(c, ServerFrames.error(id: id, code: "unauthorized", message: "the credential has expired"))
            return
        }
        if !permitted(c, .publish, channel, op: "publish") {
            reply(c, ServerFrames.error(id: id, code: "forbidden", message: "publish to '\(channel)' is not allowed for this identity"))
            return
        }
        if shuttingDown {
            reply(c, ServerFrames.error(id: id, code: "shutting_down", message: "the gateway is shutting down; publish elsewhere or retry"))
            return
        }
        // A resend of a publish in flight or recently acked is answered from the dedupe
        // window, compared as the client sent it (GatewayFlow.swift).
        var dedupeKey: PublishKey?
        if answerResend(c, id: id, channel: channel, key: key, headers: headers, value: value, dedupeKey: &dedupeKey) { return }
        var value = value
        var headers = headers
        if let encryption, encryption.applies(to: channel) {
            do {
                let sealed = try encryption.cipher.seal(value, channel: channel)
                value = sealed.bytes
                headers.removeAll { $0.0 == MessageCipher.keyIDHeader }
                headers.append((MessageCipher.keyIDHeader, Array(sealed.keyID.utf8)))
            } catch {
                reply(c, ServerFrames.error(id: id, code: "encryption_failed", message: "\(error)"))
                return
            }
        }
        // Dedupe, the id header, and holding on a full queue: GatewayFlow.swift.
        acceptPublish(c, id: id, channel: channel, key: key, headers: headers, value: value, dedupeKey: dedupeKey)
    }

    /// Produces one record for the host (not for a connection); `done` runs on the loop
    /// thread exactly once if this returns nil.
    func hostPublish(topic: String, partition: Int32, key: [UInt8]?, headers: [(String, [UInt8])], value: [UInt8],
                     done: @escaping (KafkaError?, Int32, Int64) -> Void) -> KafkaError? {
        let token = nextToken
        nextToken += 1
        let created = wallClockMs()
        let rc = producer.produce(topic: topic, partition: partition, key: key, headers: headers, value: value,
                                  token: token, timestamp: created)
        if rc != RD_KAFKA_RESP_ERR_NO_ERROR { return KafkaError(rc) }
        hostPublishes[token] = (done, created)
        return nil
    }

    private var hostPublishes: [UInt64: ((KafkaError?, Int32, Int64) -> Void, Int64)] = [:]

    /// Answers the publish; returns the record's CreateTime, nil for an unknown token.
    private func delivered(token: UInt64, err: rd_kafka_resp_err_t, partition: Int32, offset: Int64) -> Int64? {
        if let (done, created) = hostPublishes.removeValue(forKey: token) {
            done(err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError(err), partition, offset)
            return created
        }
        return publishFinished(token: token, err: err, partition: partition, offset: offset)
    }

    // MARK: subscribe

    private struct Plan {
        var start: [Int32: Int64] = [:]
        var latest = false
        /// End offset of each partition at lookup time.
        var high: [Int32: Int64] = [:]
    }

    private func subscribe(_ c: WebSocketConnection, _ session: Session, id: String?, channel: String, from: StartPosition) {
        if shuttingDown {
            reply(c, ServerFrames.error(id: id, code: "shutting_down", message: "the gateway is shutting down"))
            return
        }
        if c.credentialExpired {
            reply(c, ServerFrames.error(id: id, code: "unauthorized", message: "the credential has expired"))
            return
        }
        if !permitted(c, .subscribe, channel, op: "subscribe") {
            reply(c, ServerFrames.error(id: id, code: "forbidden", message: "subscribe to '\(channel)' is not allowed for this identity"))
            return
        }
        if from != .latest, !permitted(c, .replay, channel, op: "subscribe") {
            reply(c, ServerFrames.error(id: id, code: "forbidden", message: "replay of '\(channel)' (from other than latest) is not allowed for this identity"))
            return
        }
        if session.subscriptions.count + session.pending.count >= config.maxSubscriptions {
            reply(c, ServerFrames.error(id: id, code: "too_many_subscriptions",
                message: "at most \(config.maxSubscriptions) subscriptions per connection (limits.max_subscriptions)"))
            return
        }
        if session.subscriptions[channel] != nil || session.pending.contains(channel) {
            reply(c, ServerFrames.error(id: id, code: "already_subscribed", message: "already subscribed to channel '\(channel)'; unsubscribe first"))
            return
        }
        session.pending.insert(channel)
        let consumer = self.consumer
        let timeout = config.kafkaLookupTimeoutMs
        // A partition count looked up in the last 30 s spares a metadata request (which
        // asks for every topic of the cluster); an unknown topic is always asked again.
        let now = loopNowMs(loop)
        let known = partitionCounts[channel].flatMap { now &- $0.at < 30_000 ? $0.count : nil }
        loop.runBlocking({ () -> Result<Plan, ProtocolError> in
            Gateway.resolve(consumer: consumer, id: id, topic: channel, from: from, knownCount: known, timeoutMs: timeout)
        }, then: { [self, cid = c.id] result in
            // Strong (the lookup ends within its timeout): a weak capture would give the
            // gateway a side table, which slows every retain of it (see WebSocketServer.delegate).
            switch result {
            case .success(let plan) where known == nil:
                self.partitionCounts[channel] = (Int32(plan.high.count), loopNowMs(self.loop))
            case .failure:
                self.partitionCounts.removeValue(forKey: channel)   // ask again next time
            default:
                break
            }
            guard let c = self.server.connections[cid] else { return }
            session.pending.remove(channel)
            guard !session.closed, c.isOpen else { return }
            switch result {
            case .failure(let e):
                self.reply(c, ServerFrames.error(id: id, code: e.code, message: e.message))
            case .success(let plan):
                let starts = self.attach(c, session, channel: channel, plan: plan)
                self.reply(c, ServerFrames.subscribed(id: id, channel: channel, offsets: starts))
            }
        })
    }

    /// Looks up partitions and start offsets. Runs on a worker thread (blocking calls).
    private static func resolve(consumer: KafkaFanoutConsumer, id: String?, topic: String, from: StartPosition,
                                knownCount: Int32?, timeoutMs: Int32) -> Result<Plan, ProtocolError> {
        let count: Int32
        switch knownCount.map({ Result<Int32, KafkaError>.success($0) }) ?? consumer.partitionCount(topic: topic, timeoutMs: timeoutMs) {
        case .success(let n): count = n
        case .failure(let e):
            if e.code == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || e.code == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC {
                return .failure(ProtocolError(code: "unknown_channel", message: "channel '\(topic)' does not exist", id: id))
            }
            return .failure(ProtocolError(code: "kafka_unavailable", message: "metadata for '\(topic)': \(e)", id: id))
        }
        var marks: [Int32: (Int64, Int64)] = [:]
        for p in 0..<count {
            switch consumer.watermarks(topic: topic, partition: p, timeoutMs: timeoutMs) {
            case .success(let w): marks[p] = w
            case .failure(let e):
                return .failure(ProtocolError(code: "kafka_unavailable", message: "offsets of \(topic)/\(p): \(e)", id: id))
            }
        }
        var plan = Plan()
        for p in 0..<count { plan.high[p] = marks[p]!.1 }
        switch from {
        case .latest:
            plan.latest = true
            for p in 0..<count { plan.start[p] = marks[p]!.1 }
        case .earliest:
            for p in 0..<count { plan.start[p] = marks[p]!.0 }
        case .offsets(let given):
            for (p, o) in given where p < 0 || p >= count {
                return .failure(ProtocolError(code: "invalid_from", message: "channel '\(topic)' has no partition \(p) (it has \(count)); offset \(o) cannot apply", id: id))
            }
            for p in 0..<count {
                let (lo, hi) = marks[p]!
                if let o = given[p] {
                    if o < lo || o > hi {
                        return .failure(ProtocolError(code: "offset_out_of_range",
                            message: "partition \(p): offset \(o) is outside the available range \(lo)..\(hi)", id: id))
                    }
                    plan.start[p] = o
                } else {
                    plan.start[p] = hi
                }
            }
        case .timestamp(let ts):
            switch consumer.offsetsForTime(topic: topic, partitions: count, timestampMs: ts, timeoutMs: timeoutMs) {
            case .success(let offs):
                for p in 0..<count {
                    let o = offs[p] ?? -1
                    plan.start[p] = o < 0 ? marks[p]!.1 : o
                }
            case .failure(let e):
                return .failure(ProtocolError(code: "kafka_unavailable", message: "offsets for time: \(e)", id: id))
            }
        }
        return .success(plan)
    }

    /// Registers the subscription on each partition's feed; returns where it starts.
    private func attach(_ c: WebSocketConnection, _ session: Session, channel: String, plan: Plan) -> [(Int32, Int64)] {
        let sub = ChannelSubscription(channel: channel, connection: c)
        for (p, start) in plan.start.sorted(by: { $0.key < $1.key }) {
            // The live feed when it is at or before `start`, else the replay lane.
            attachPartition(sub, p, start: start, latest: plan.latest, high: plan.high[p])
        }
        session.subscriptions[channel] = sub
        return sub.next.sorted
    }

    /// Leaves every live and replay feed; the subscription keeps its next offsets.
    func detach(_ sub: ChannelSubscription) {
        detachReplays(sub)
        for feed in sub.feeds {
            feed.subscribers.removeAll { $0 === sub }
            if feed.subscribers.isEmpty {
                consumer.unassign(topic: feed.tp.topic, partition: feed.tp.partition)
                feeds.removeValue(forKey: feed.tp)
            }
        }
        sub.feeds.removeAll()
    }

    // MARK: fan-out

    private var consumedTopics = TopicNameCache()
    private var producedTopics = TopicNameCache()

    private func consumed(_ m: UnsafeMutablePointer<rd_kafka_message_t>) {
        let msg = m.pointee
        let topic = consumedTopics.name(msg.rkt)
        if msg.err != RD_KAFKA_RESP_ERR_NO_ERROR {
            consumerError(topic: topic, partition: msg.partition, err: msg.err, m)
            return
        }
        let tp = TopicPartition(topic: topic, partition: msg.partition)
        guard let feed = feeds[tp] else { return }
        feed.position = msg.offset + 1
        _ = fanOut(m, topic: topic, to: feed.subscribers)
    }

    /// A record this engine produced, just acknowledged by Kafka with acks=all: it is in the
    /// log at this offset, and a fetch would return the same record (topic, partition,
    /// offset, timestamp, key, headers, value). Live subscribers whose next offset is
    /// exactly this one get it now; the fetch brings it again later and `fanOut` skips it
    /// for them. Subscribers behind it (records from other producers not fetched yet) wait
    /// for the fetch, which keeps every subscription in offset order without gaps.
    ///
    /// The timestamp is the one a fetch would show: the broker's LogAppendTime when it
    /// returned one (topics with message.timestamp.type=LogAppendTime), else the CreateTime
    /// the gateway set. librdkafka's mock cluster returns a fixed LogAppendTime of 1234 ms
    /// while its log keeps CreateTime, so an append time a day or more before the record
    /// was created is not taken.
    private func deliverAcknowledged(_ m: UnsafeMutablePointer<rd_kafka_message_t>, created: Int64) {
        guard !feeds.isEmpty, m.pointee.offset >= 0, m.pointee.rkt != nil else { return }
        let topic = producedTopics.name(m.pointee.rkt)
        guard let feed = feeds[TopicPartition(topic: topic, partition: m.pointee.partition)],
              feed.assigned, !feed.subscribers.isEmpty else { return }
        var tstype = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let ts = rd_kafka_message_timestamp(m, &tstype)
        let shown = tstype == RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME && ts >= created - 86_400_000 ? ts : created
        server.metrics.deliveriesOnAck += UInt64(fanOut(m, topic: topic, to: feed.subscribers, exactly: true, timestamp: shown))
    }

    /// Encodes the `message` frame once; every subscriber shares the bytes.
    /// `timestamp` replaces the message's own.
    func encodeMessage(_ m: UnsafeMutablePointer<rd_kafka_message_t>, topic: String, timestamp: Int64? = nil) -> OutBuffer {
        let msg = m.pointee
        var tstype = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let ts = timestamp ?? rd_kafka_message_timestamp(m, &tstype)
        var headers: [(String, UnsafeRawBufferPointer?)] = []
        forEachHeader(m) { headers.append(($0, $1)) }
        let key = msg.key.map { UnsafeRawBufferPointer(start: $0, count: msg.key_len) }
        let value = msg.payload.map { UnsafeRawBufferPointer(start: $0, count: msg.len) }
        scratch.removeAll(keepingCapacity: true)
        if let encryption, encryption.applies(to: topic) {
            // Kafka holds ciphertext: subscribers get the plaintext, or an error, never
            // tampered or unreadable bytes.
            let keyID = headers.first { $0.0 == MessageCipher.keyIDHeader }?.1.map { String(decoding: $0, as: UTF8.self) }
            do {
                guard let keyID, let value else { throw MessageCipherError.malformed }
                let plain = try encryption.cipher.open(Array(value), keyID: keyID, channel: topic)
                let shown = headers.filter { $0.0 != MessageCipher.keyIDHeader }
                plain.withUnsafeBytes { pb in
                    ServerFrames.message(channel: topic, partition: msg.partition, offset: msg.offset, timestamp: ts,
                                         key: key, headers: shown, value: pb, into: &scratch)
                }
            } catch {
                server.metrics.decryptFailures += 1
                var f = Array("{\"op\":\"error\",\"code\":\"decrypt_failed\",\"channel\":".utf8)
                JSON.appendString(topic, to: &f)
                f += Array(",\"partition\":\(msg.partition),\"offset\":\(msg.offset),\"message\":".utf8)
                JSON.appendString("the record could not be decrypted (\(error)); it is not delivered", to: &f)
                f.append(UInt8(ascii: "}"))
                scratch = f
            }
            return scratch.withUnsafeBytes { WebSocketConnection.encodeFrame(.text, $0) }
        }
        ServerFrames.message(channel: topic, partition: msg.partition, offset: msg.offset, timestamp: ts,
                             key: key, headers: headers, value: value, into: &scratch)
        return scratch.withUnsafeBytes { WebSocketConnection.encodeFrame(.text, $0) }
    }

    private func consumerError(topic: String, partition: Int32, err: rd_kafka_resp_err_t, _ m: UnsafeMutablePointer<rd_kafka_message_t>) {
        let text = rd_kafka_message_errstr(m).map { String(cString: $0) } ?? KafkaError(err).message
        Log.event("warn", "kafka_consumer_error", ["topic": topic, "partition": String(partition), "error": "\(KafkaError(err).name): \(text)"])
        // A position that can no longer be served: say so to every subscriber of it,
        // then continue from the earliest available offset (never a silent jump).
        guard err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET || err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE,
              let feed = feeds[TopicPartition(topic: topic, partition: partition)] else { return }
        for sub in feed.subscribers {
            reply(sub.connection, ServerFrames.error(id: nil, code: "offset_out_of_range",
                message: "channel '\(topic)' partition \(partition): position \(sub.next[partition] ?? -1) is no longer available; continuing from the earliest available offset"))
            sub.next[partition] = 0
        }
        // With auto.offset.reset=error the partition's fetcher has stopped (librdkafka
        // refuses a seek on it: "partition not started"): assign it again, from the start.
        consumer.unassign(topic: topic, partition: partition)
        if let e = consumer.assign(topic: topic, partition: partition, offset: Int64(RD_KAFKA_OFFSET_BEGINNING)) {
            Log.event("error", "kafka_assign_failed", ["topic": topic, "partition": String(partition), "error": e.description])
        }
        feed.position = 0
    }
}

/// One metric of an engine.
struct MetricSample {
    let name: String
    let type: String
    let help: String
    var value: UInt64
    init(_ name: String, _ type: String, _ help: String, _ value: UInt64) {
        self.name = name
        self.type = type
        self.help = help
        self.value = value
    }
}

/// The engines of one process that listen on the same address (SO_REUSEPORT): the kernel
/// hands each HTTP request to one of them, so each keeps a snapshot of its figures here
/// for the others to add. A group leaves the registry with its last member, so engines
/// started and stopped again and again (an embedding program) leave nothing behind. Any
/// thread.
final class MetricsGroup: @unchecked Sendable {
    private nonisolated(unsafe) static var groups: [String: MetricsGroup] = [:]
    private nonisolated(unsafe) static var groupsMutex = pthread_mutex_t()
    private let key: String
    private var mutex = pthread_mutex_t()
    private var snapshots: [ObjectIdentifier: [UInt64]] = [:]

    private init(key: String) { self.key = key }

    /// Adds `who` with its first snapshot to the group for `key` (created if needed).
    static func join(_ key: String, _ who: AnyObject, _ values: [UInt64]) -> MetricsGroup {
        pthread_mutex_lock(&groupsMutex)
        defer { pthread_mutex_unlock(&groupsMutex) }
        let g = groups[key] ?? MetricsGroup(key: key)
        groups[key] = g
        g.publish(who, values)
        return g
    }

    /// Number of groups in the registry (tests).
    static var registeredCount: Int {
        pthread_mutex_lock(&groupsMutex)
        defer { pthread_mutex_unlock(&groupsMutex) }
        return groups.count
    }

    func publish(_ who: AnyObject, _ values: [UInt64]) {
        pthread_mutex_lock(&mutex)
        snapshots[ObjectIdentifier(who)] = values
        pthread_mutex_unlock(&mutex)
    }

    /// Removes `who`; the last member takes the group out of the registry.
    func leave(_ who: AnyObject) {
        pthread_mutex_lock(&MetricsGroup.groupsMutex)
        pthread_mutex_lock(&mutex)
        snapshots.removeValue(forKey: ObjectIdentifier(who))
        let empty = snapshots.isEmpty
        pthread_mutex_unlock(&mutex)
        if empty && MetricsGroup.groups[key] === self { MetricsGroup.groups[key] = nil }
        pthread_mutex_unlock(&MetricsGroup.groupsMutex)
    }

    /// The latest snapshots of every member but `who`.
    func others(_ who: AnyObject) -> [[UInt64]] {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        let me = ObjectIdentifier(who)
        return snapshots.filter { $0.key != me }.map(\.value)
    }
}

/// The name of the last topic seen, kept as a String so that the per-record path does
/// not build one per message. Compared by name (a few bytes): a handle's address alone
/// could be reused by another topic once the first handle is freed.
struct TopicNameCache {
    private var cached = ""

    mutating func name(_ rkt: OpaquePointer?) -> String {
        guard let rkt, let c = rd_kafka_topic_name(rkt) else { return "" }
        if cached.withCString({ strcmp($0, c) }) != 0 { cached = String(cString: c) }
        return cached
    }
}

/// Wall-clock milliseconds since the epoch.
func wallClockMs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

