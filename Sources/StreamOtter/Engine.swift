import CRdKafka
import CShim
import CUV
import Glibc
import StreamOtterCore

/// An error of the engine's public API, with the category the C ABI maps to a code.
public struct StreamOtterError: Error, CustomStringConvertible {
    public enum Kind { case config, state, kafka, io, internalError }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }
}

/// The StreamOtter engine: one libuv loop on its own thread, the WebSocket gateway on it,
/// and the Kafka clients whose events are wired into it.
///
/// Threading: `start`, `stop`, `wait` and the read-only properties may be called from any
/// thread; everything the engine owns lives on its loop thread.
public final class Engine {
    public let config: EngineConfig
    let loop = EventLoop()
    private var embedded: EmbeddedKafka?
    private var producer: KafkaProducer?
    private var consumer: KafkaFanoutConsumer?
    var server: WebSocketServer?
    var gateway: Gateway?
    private var echoService: EchoService?
    private var keepAlive: LoopTimer?
    /// Clients running on this engine's loop (closed when the engine stops).
    private var clients: [ObjectIdentifier: StreamClient] = [:]

    func register(_ c: StreamClient) { clients[ObjectIdentifier(c)] = c }
    func unregister(_ c: StreamClient) { clients.removeValue(forKey: ObjectIdentifier(c)) }
    /// Clients whose connection is still closing (their Close frame in flight): the loop
    /// stops only when they are done (or after a bound), so peers see a clean close.
    var closingClients: [ObjectIdentifier: StreamClient] = [:]

    /// Runs `then` once every closing client's socket is closed, or after `boundMs`.
    private func afterClientsClosed(boundMs: UInt64, _ then: @escaping () -> Void) {
        let started = loopNowMs(loop)
        let t = LoopTimer(loop: loop)
        t.start(afterMs: 0, repeatMs: 5) { [unowned self] in
            if self.closingClients.isEmpty || loopNowMs(self.loop) - started >= boundMs {
                t.close()
                then()
            }
        }
    }
    private var thread: pthread_t?
    private var signals: [UnsafeMutablePointer<uv_signal_t>] = []
    var stopping = false
    private var started = false
    /// True once start succeeded.
    public var isRunning: Bool { thread != nil }
    private var finished = false
    var mutex = pthread_mutex_t()
    var liveConnections = Set<UInt64>()
    /// Set before start.
    public var serverHooks = ServerHooks()
    /// Authentication of upgrades by the host (set before start). Runs on the loop
    /// thread; answer through the closure, from any thread, before the handshake timeout.
    public var authHandler: ((AuthRequest, @escaping (AuthAnswer) -> Void) -> Void)?
    /// Receives every audit event as a JSON line (set before start; loop thread).
    public var auditHandler: ((String) -> Void)?
    /// Message-encryption keys: (key id or nil for the active key, channel or nil) ->
    /// (key id, 32 key bytes). Set before start; called on the loop thread per record.
    public var keyProvider: (@Sendable (String?, String?) -> (String, [UInt8])?)?
    private var cond = pthread_cond_t()

    /// Kafka bootstrap servers in use (the embedded cluster's when embedded).
    public private(set) var bootstrapServers = ""
    public var isEmbeddedKafka: Bool { embedded != nil || config.sharedEmbeddedKafka }
    /// The port the gateway listens on (useful with port 0).
    public private(set) var port = 0
    public private(set) var listenAddress = ""

    public init(config: EngineConfig) {
        self.config = config
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    deinit {
        // An engine that never ran still owns its loop.
        if !finished && thread == nil && !started { loop.close() }
        pthread_mutex_destroy(&mutex)
        pthread_cond_destroy(&cond)
    }

    /// Sets up Kafka and the listener, then runs the loop on a new thread. Throws (and
    /// leaves nothing running) when Kafka clients cannot be created or the port cannot be
    /// bound.
    public func start() throws {
        guard !started else { throw StreamOtterError(.state, "the engine was already started") }
        started = true
        cshim_ignore_sigpipe()
        do {
            try setUp()
        } catch let e as UVError {
            throw StreamOtterError(.io, "listen on \(config.listenHost):\(config.listenPort): \(e)")
        } catch let e as ConfigError {
            throw StreamOtterError(e.description.hasPrefix("kafka") || e.description.hasPrefix("embedded") ? .kafka : .config, e.description)
        }
        let box = Unmanaged.passRetained(self).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let me = Unmanaged<Engine>.fromOpaque(arg!).takeRetainedValue()
            me.loop.run()
            me.tearDown()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Engine>.fromOpaque(box).release()
            throw ConfigError("cannot start the engine thread: \(String(cString: strerror(rc)))")
        }
        thread = t
    }

    private func setUp() throws {
        var cfg = config
        if cfg.mode == "client" {
            installSignals(cfg)
            keepAlive = LoopTimer(loop: loop)
            keepAlive?.start(afterMs: 1 << 40) {}
            return
        }
        if cfg.mode == "echo" {
            let s = WebSocketServer(loop: loop, settings: try cfg.webSocketSettings())
            server = s
            let echo = EchoService(server: s)
            echoService = echo
            s.delegate = echo
            do {
                try s.listen(host: cfg.listenHost, port: cfg.listenPort, reusePort: cfg.reusePort)
            } catch {
                tearDown()
                throw error
            }
            port = s.port
            listenAddress = s.boundAddress
            installSignals(cfg)
            Log.event("info", "engine_started", ["listen": listenAddress, "mode": "echo"])
            return
        }
        if cfg.usesEmbeddedKafka {
            let e = try EmbeddedKafka(brokers: cfg.embeddedBrokers)
            embedded = e
            for (name, n) in cfg.embeddedTopics { try e.createTopic(name, partitions: n) }
            cfg.kafka.insert(("bootstrap.servers", e.bootstrapServers), at: 0)
        }
        // Not cfg.usesEmbeddedKafka: the block above has just given cfg bootstrap servers.
        if isEmbeddedKafka {
            // The mock cluster holds an empty fetch for the whole fetch.wait.max.ms even
            // when records arrive (a real broker answers as soon as there is data): keep
            // the wait short so deliveries are not delayed by up to 500 ms. A user's own
            // kafka.consumer.fetch.wait.max.ms comes later and wins.
            cfg.kafkaConsumer.insert(("fetch.wait.max.ms", "5"), at: 0)
        }
        bootstrapServers = cfg.kafka.last { $0.0 == "bootstrap.servers" || $0.0 == "metadata.broker.list" }?.1 ?? ""
        do {
            let p = try KafkaProducer(loop: loop, props: cfg.kafka + cfg.kafkaProducer)
            producer = p
            let c = try KafkaFanoutConsumer(loop: loop, props: cfg.kafka + cfg.kafkaConsumer, lookupProps: cfg.kafka)
            consumer = c
            let s = WebSocketServer(loop: loop, settings: try cfg.webSocketSettings())
            server = s
            let g = Gateway(loop: loop, server: s, producer: p, consumer: c, config: cfg)
            g.kafkaDescription = isEmbeddedKafka ? "embedded" : "external"
            if serverHooks.onConnect != nil || serverHooks.onMessage != nil || serverHooks.onClose != nil { g.hooks = self }
            try g.configureSecurity(customAuth: authHandler.map { CustomAuthenticator(loop: loop, handler: $0) },
                                    keyProvider: keyProvider)
            g.audit.sink = auditHandler
            gateway = g
            s.delegate = g
            try s.listen(host: cfg.listenHost, port: cfg.listenPort, reusePort: cfg.reusePort)
            port = s.port
            listenAddress = s.boundAddress
            if cfg.reusePort { g.joinMetricsGroup("\(cfg.listenHost):\(s.port)") }
        } catch {
            tearDown()
            throw error
        }
        installSignals(cfg)
        Log.event("info", "engine_started", ["listen": listenAddress, "kafka": bootstrapServers, "embedded": isEmbeddedKafka ? "true" : "false"])
    }

    private func installSignals(_ cfg: EngineConfig) {
        if cfg.handleSignals {
            for sig in [SIGINT, SIGTERM] {
                let h = UnsafeMutablePointer<uv_signal_t>.allocate(capacity: 1)
                uv_signal_init(loop.uv, h)
                h.pointee.data = Unmanaged.passUnretained(self).toOpaque()
                uv_signal_start(h, { h, signum in
                    guard let h, let d = h.pointee.data else { return }
                    let me = Unmanaged<Engine>.fromOpaque(d).takeUnretainedValue()
                    Log.event("info", "signal", ["signal": signum == SIGINT ? "SIGINT" : "SIGTERM"])
                    me.beginStop()
                }, sig)
                uv_unref(rawHandle(h))
                signals.append(h)
            }
        }
    }

    /// Graceful stop: stop accepting, answer in-flight publishes (up to the shutdown
    /// timeout), close every socket with 1001, flush the producer, end the loop. Any thread;
    /// returns at once (use `wait`).
    public func stop() {
        loop.post { [weak self] in self?.beginStop() }
    }

    /// Blocks until the engine thread has ended.
    public func wait() {
        if let t = thread {
            pthread_join(t, nil)
            thread = nil
        }
    }

    private func beginStop() {
        guard !stopping else { return }
        for c in clients.values { c.shutdown(code: 1001, reason: "engine stopping") }
        clients.removeAll()
        if config.mode == "client" {
            stopping = true
            keepAlive?.close()
            keepAlive = nil
            // Let the clients' closing handshakes finish (bounded).
            afterClientsClosed(boundMs: 1500) { [unowned self] in
                for h in self.signals { uv_close(rawHandle(h)) { h in h?.deallocate() } }
                self.signals.removeAll()
                self.loop.stop()
            }
            return
        }
        if echoService != nil, !stopping, let server {
            stopping = true
            server.stopListening()
            server.closeAll(code: 1001, reason: "server shutting down")
            let timer = LoopTimer(loop: loop)
            let started = loopNowMs(loop)
            timer.start(afterMs: 5, repeatMs: 5) { [unowned self] in
                if server.connections.isEmpty || loopNowMs(self.loop) - started > server.settings.closeTimeoutMs + 500 {
                    timer.close()
                    self.finishStop(server)
                }
            }
            return
        }
        guard !stopping, let gateway, let server, let producer else { return }
        stopping = true
        gateway.shuttingDown = true
        server.stopListening()
        let started = loopNowMs(loop)
        let timer = LoopTimer(loop: loop)
        var phase = 0
        timer.start(afterMs: 0, repeatMs: 5) { [unowned self] in
            let now = loopNowMs(self.loop)
            if phase == 0 {
                // Publishes already handed to Kafka get their ack or error first.
                if gateway.inFlightPublishes == 0 && producer.outstanding == 0 || now - started > self.config.shutdownTimeoutMs {
                    phase = 1
                    server.closeAll(code: 1001, reason: "server shutting down")
                }
            } else if server.connections.isEmpty || now - started > self.config.shutdownTimeoutMs + server.settings.closeTimeoutMs + 500 {
                timer.close()
                self.finishStop(server)
            }
        }
    }

    private func finishStop(_ server: WebSocketServer) {
        guard closingClients.isEmpty else {
            afterClientsClosed(boundMs: 1500) { [unowned self] in
                self.closingClients.removeAll()
                self.finishStop(server)
            }
            return
        }
        server.shutdown()
        for h in signals {
            uv_close(rawHandle(h)) { h in h?.deallocate() }
        }
        signals.removeAll()
        loop.stop()
    }

    private func tearDown() {
        if let p = producer {
            let remaining = rd_kafka_flush(p.rk, Int32(min(config.shutdownTimeoutMs, 30_000)))
            if remaining != RD_KAFKA_RESP_ERR_NO_ERROR {
                Log.event("warn", "producer_flush_incomplete", ["outstanding": String(p.outstanding)])
            }
        }
        gateway?.leaveMetricsGroup()
        gateway?.closeFlow()
        consumer?.close()
        consumer = nil
        producer?.close()
        producer = nil
        server?.delegate = nil   // the server holds its delegate strongly
        gateway = nil
        echoService = nil
        server = nil
        embedded?.close()
        embedded = nil
        if !finished { loop.close() }
        finished = true
        // A client-only engine (the C ABI's and the bindings' clients) logged no start either.
        if config.mode != "client" { Log.event("info", "engine_stopped") }
    }
}

/// The embedding host's callbacks for gateway connections. They run on the loop thread.
public struct ServerHooks {
    /// (connection id, request target, request headers)
    public var onConnect: ((UInt64, String, [(String, String)]) -> Void)?
    /// (connection id, is text, message bytes)
    public var onMessage: ((UInt64, Bool, [UInt8]) -> Void)?
    /// (connection id, close code, reason); pairs one to one with onConnect.
    public var onClose: ((UInt64, UInt16, String) -> Void)?
    public init() {}
}

extension Engine: GatewayHooks {
    func connectionOpened(_ id: UInt64, path: String, headers: [(String, String)]) {
        pthread_mutex_lock(&mutex)
        liveConnections.insert(id)
        pthread_mutex_unlock(&mutex)
        serverHooks.onConnect?(id, path, headers)
    }

    func connectionMessage(_ id: UInt64, text: Bool, _ bytes: [UInt8]) {
        serverHooks.onMessage?(id, text, bytes)
    }

    func connectionClosed(_ id: UInt64, code: UInt16, reason: String) {
        pthread_mutex_lock(&mutex)
        liveConnections.remove(id)
        pthread_mutex_unlock(&mutex)
        serverHooks.onClose?(id, code, reason)
    }

    private func isLive(_ id: UInt64) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return liveConnections.contains(id)
    }

    /// Queues a message to gateway connection `id` (any thread). False when the connection
    /// is unknown or closed.
    @discardableResult
    public func send(connection id: UInt64, _ bytes: [UInt8], text: Bool = true) -> Bool {
        guard isLive(id) else { return false }
        loop.post { [weak self] in
            guard let c = self?.server?.connections[id] else { return }
            _ = bytes.withUnsafeBytes { c.sendFrame(text ? .text : .binary, $0) }
        }
        return true
    }

    /// Starts the closing handshake of connection `id` with `code` (any thread).
    @discardableResult
    public func closeConnection(_ id: UInt64, code: UInt16, reason: String) -> Bool {
        guard isLive(id) else { return false }
        loop.post { [weak self] in self?.server?.connections[id]?.close(code: code, reason: reason) }
        return true
    }

    /// Produces one record to `topic` (a channel) through the engine's producer (any
    /// thread). `completion` runs once on the loop thread with Kafka's answer. Throws when
    /// the engine has no producer (not a running gateway).
    public func publish(topic: String, partition: Int32 = -1, key: [UInt8]?, headers: [(String, [UInt8])] = [], value: [UInt8],
                        completion: @escaping (Result<PublishAck, StreamOtterError>) -> Void) throws {
        guard isRunning, config.mode == "gateway" else {
            throw StreamOtterError(.state, "publish needs a running engine in gateway mode")
        }
        guard !topic.isEmpty else { throw StreamOtterError(.config, "topic must not be empty") }
        loop.post { [weak self] in
            guard let self, let g = self.gateway, !self.stopping else {
                completion(.failure(StreamOtterError(.state, "the engine is stopping")))
                return
            }
            if let e = g.hostPublish(topic: topic, partition: partition, key: key, headers: headers, value: value, done: { err, p, o in
                if let err { completion(.failure(StreamOtterError(.kafka, err.description))) }
                else { completion(.success(PublishAck(channel: topic, partition: p, offset: o))) }
            }) {
                completion(.failure(StreamOtterError(.kafka, e.description)))
            }
        }
    }

    /// Runs `f` on the loop thread (any thread).
    public func runOnLoop(_ f: @escaping () -> Void) { loop.post(f) }

    /// Runs `f` on the loop thread after `ms` milliseconds (any thread).
    public func runAfter(ms: Int, _ f: @escaping (Engine) -> Void) {
        loop.post { [weak self] in
            guard let self else { return }
            let t = LoopTimer(loop: self.loop)
            t.start(afterMs: UInt64(max(0, ms)), unref: true) { [weak self] in
                t.close()
                if let self { f(self) }
            }
        }
    }

    /// True on the engine's loop thread.
    public var isLoopThread: Bool { loop.isLoopThread }
}
