import StreamOtterCore

/// The engine's configuration: string keys and values, the same keys in a config file, on
/// the command line (`--set`), and through the C ABI. Keys under `kafka.` go to librdkafka
/// unchanged (`kafka.producer.` / `kafka.consumer.` for one client only).
public struct EngineConfig {
    public var listenHost = "127.0.0.1"
    public var listenPort = 8080
    public var reusePort = false
    /// Properties for both Kafka clients, then for one only.
    public var kafka: [(String, String)] = []
    public var kafkaProducer: [(String, String)] = []
    public var kafkaConsumer: [(String, String)] = []
    public var embeddedBrokers = 3
    public var embeddedTopics: [(String, Int32)] = []
    /// The bootstrap servers name an embedded Kafka that this process runs for several
    /// engines (`serve --engines N`): each engine reports it as embedded (`/healthz`) and
    /// uses the embedded broker's short fetch wait, as the engine that starts its own does.
    public var sharedEmbeddedKafka = false
    /// Engines in this process (`serve --engines N`): each takes its share of the
    /// file-descriptor limit for its sockets (see WebSocketServer.socketBudget).
    public var enginesInProcess: Int {
        get { ws.enginesInProcess }
        set { ws.enginesInProcess = max(1, newValue) }
    }
    public var handleSignals = false
    /// "gateway" (streamotter.v1 bridged to Kafka), "echo" (a WebSocket echo server with
    /// no Kafka at all, for transport benchmarks and tests) or "client" (no listener and no
    /// Kafka: a loop for WebSocket clients only).
    public var mode = "gateway"
    /// How the C ABI delivers callbacks: "thread" (on the engine's loop thread) or "poll"
    /// (queued until the host calls sot_engine_poll on its own thread).
    public var callbackMode = "thread"
    /// false when `gateway.protocol=none`: messages go to the host's hooks only.
    public var handleProtocol = true
    public var shutdownTimeoutMs: UInt64 = 10_000
    /// Milliseconds a metadata or offset lookup may take before a subscribe fails.
    public var kafkaLookupTimeoutMs: Int32 = 10_000
    /// Publish resends answered from memory: most acknowledged (channel, id) entries kept
    /// (0 turns the dedupe window off), and for how long.
    public var dedupeWindow = 100_000
    /// Publishes one connection may have handed to Kafka and not yet answered; at this many
    /// the gateway stops reading from it until half are answered (its share of the
    /// producer queue).
    public var maxPublishesInFlight = 1024
    public var dedupeWindowMs: UInt64 = 120_000
    /// Messages per second per replayed partition (0: no limit).
    public var replayRate = 10_000
    /// Deliver a record published through this engine to the engine's live subscribers as
    /// soon as Kafka acknowledges it (with acks=all: it is then in the log at that offset),
    /// instead of waiting for the consumer's next fetch. Only for subscribers whose next
    /// offset is exactly the record's; anyone else gets it from the fetch, in order.
    public var deliverOnAck = true
    /// What happens to a subscriber over `ws.max_buffered_bytes`: close it (with its
    /// positions) or pause it until its socket drains.
    public var slowConsumerPause = false
    /// How long a subscriber may stay between one and two times its bound before it
    /// counts as slow.
    public var slowConsumerGraceMs: UInt64 = 1_000
    var ws = WebSocketSettings()
    /// Most channels one connection may subscribe to.
    public var maxSubscriptions = 100
    /// Authentication, authorization, audit, encryption and rate limits.
    public var security = SecuritySettings()
    var tlsSettings = TLSServerSettings(certFile: "", keyFile: "")

    /// The WebSocket settings with TLS resolved (TLS is on when a certificate is set).
    func webSocketSettings() throws -> WebSocketSettings {
        var w = ws
        if !tlsSettings.certFile.isEmpty || !tlsSettings.keyFile.isEmpty || !tlsSettings.sni.isEmpty {
            guard !tlsSettings.certFile.isEmpty, !tlsSettings.keyFile.isEmpty else {
                throw ConfigError("tls: both tls.cert_file and tls.key_file are required")
            }
            w.tls = tlsSettings
        }
        return w
    }
    public var usesTLS: Bool { !tlsSettings.certFile.isEmpty }
    public var handshakeTimeoutMs: UInt64 { ws.handshakeTimeoutMs }
    private var idleTimeoutSet = false

    public init() {}

    /// True when no bootstrap servers are configured: the engine starts the embedded broker.
    public var usesEmbeddedKafka: Bool {
        !kafka.contains { $0.0 == "bootstrap.servers" || $0.0 == "metadata.broker.list" }
    }

    public static let knownKeys = [
        "listen", "reuseport", "mode", "log.level", "callbacks", "gateway.protocol", "embedded.brokers", "embedded.topics", "shutdown.timeout_ms",
        "kafka.lookup_timeout_ms", "ws.max_frame_size", "ws.max_message_size",
        "ws.handshake_timeout_ms", "ws.ping_interval_ms", "ws.idle_timeout_ms",
        "ws.close_timeout_ms", "ws.max_buffered_bytes", "ws.max_inbound_buffered_bytes", "ws.max_header_bytes", "ws.max_headers",
        "security.allowed_origins", "limits.max_connections", "limits.max_connections_per_address",
        "limits.max_subscriptions", "limits.max_publishes_in_flight", "tls.cert_file", "tls.key_file", "tls.ca_file", "tls.client_auth", "tls.min_version", "tls.reload_interval_ms",
        "gateway.dedupe_window", "gateway.dedupe_window_ms", "gateway.replay_rate", "gateway.deliver_on_ack", "ws.slow_consumer",
        "ws.slow_consumer_grace_ms",
    ]

    /// Sets one key. Throws ConfigError with a message naming the key on a bad key or value.
    public mutating func set(_ key: String, _ value: String) throws {
        func int(_ min: Int, _ max: Int = Int.max) throws -> Int {
            guard let v = Int(value.trimmingSpaces), v >= min, v <= max else {
                throw ConfigError("\(key): expected an integer in \(min)...\(max), got '\(value)'")
            }
            return v
        }
        if SecuritySettings.isSecurityKey(key) {
            try security.set(key, value)
            return
        }
        if key.hasPrefix("kafka.producer.") {
            kafkaProducer.append((String(key.dropFirst(15)), value)); return
        }
        if key.hasPrefix("kafka.consumer.") {
            kafkaConsumer.append((String(key.dropFirst(15)), value)); return
        }
        switch key {
        case "listen":
            (listenHost, listenPort) = try EngineConfig.parseHostPort(value)
        case "log.level":
            guard ["debug", "info", "warn", "error", "off"].contains(value) else {
                throw ConfigError("log.level: expected debug, info, warn, error or off, got '\(value)'")
            }
            Log.level = value
        case "mode":
            guard ["gateway", "echo", "client"].contains(value) else {
                throw ConfigError("mode: expected gateway, echo or client, got '\(value)'")
            }
            mode = value
        case "callbacks":
            guard value == "thread" || value == "poll" else { throw ConfigError("callbacks: expected thread or poll, got '\(value)'") }
            callbackMode = value
        case "gateway.protocol":
            guard value == "streamotter.v1" || value == "none" else {
                throw ConfigError("gateway.protocol: expected streamotter.v1 or none, got '\(value)'")
            }
            handleProtocol = value != "none"
        case "security.allowed_origins":
            ws.allowedOrigins = value.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
        case "limits.max_connections": ws.maxConnections = try int(1)
        case "limits.max_connections_per_address": ws.maxConnectionsPerAddress = try int(1)
        case "limits.max_subscriptions": maxSubscriptions = try int(1)
        case "limits.max_publishes_in_flight": maxPublishesInFlight = try int(2)
        case "tls.cert_file": tlsSettings.certFile = value
        case "tls.key_file": tlsSettings.keyFile = value
        case "tls.ca_file": tlsSettings.caFile = value.isEmpty ? nil : value
        case "tls.client_auth":
            switch value {
            case "none": tlsSettings.clientAuth = 0
            case "request", "optional": tlsSettings.clientAuth = 1
            case "require", "required": tlsSettings.clientAuth = 2
            default: throw ConfigError("tls.client_auth: expected none, request or require, got '\(value)'")
            }
        case "tls.min_version":
            switch value {
            case "1.2": tlsSettings.minVersion = 12
            case "1.3": tlsSettings.minVersion = 13
            default: throw ConfigError("tls.min_version: expected 1.2 or 1.3 (older versions are refused), got '\(value)'")
            }
        case "tls.reload_interval_ms": tlsSettings.reloadIntervalMs = UInt64(try int(0))
        case "reuseport":
            reusePort = ["1", "true", "yes", "on"].contains(value.lowercased())
        case "embedded.brokers": embeddedBrokers = try int(1, 16)
        case "embedded.topics":
            for part in value.split(separator: ",") where !part.isEmpty {
                embeddedTopics.append(try EngineConfig.parseTopicSpec(String(part)))
            }
        case "shutdown.timeout_ms": shutdownTimeoutMs = UInt64(try int(0))
        case "kafka.lookup_timeout_ms": kafkaLookupTimeoutMs = Int32(try int(1, Int(Int32.max)))
        case "ws.max_frame_size": ws.limits.maxFrameSize = try int(126, 1 << 30)
        case "ws.max_message_size": ws.limits.maxMessageSize = try int(126, 1 << 30)
        case "ws.handshake_timeout_ms": ws.handshakeTimeoutMs = UInt64(try int(1))
        case "ws.ping_interval_ms":
            ws.pingIntervalMs = UInt64(try int(0))
            if !idleTimeoutSet { ws.idleTimeoutMs = ws.pingIntervalMs == 0 ? 0 : 2 * ws.pingIntervalMs }
        case "ws.idle_timeout_ms":
            ws.idleTimeoutMs = UInt64(try int(0)); idleTimeoutSet = true
        case "ws.close_timeout_ms": ws.closeTimeoutMs = UInt64(try int(1))
        case "ws.max_buffered_bytes": ws.maxBufferedBytes = try int(1024)
        case "ws.max_inbound_buffered_bytes": ws.maxInboundBufferedBytes = try int(1024)
        case "ws.max_header_bytes": ws.http.maxHeaderBytes = try int(256, 1 << 20)
        case "ws.max_headers": ws.http.maxHeaderCount = try int(4, 10_000)
        case "gateway.dedupe_window": dedupeWindow = try int(0, 10_000_000)
        case "gateway.dedupe_window_ms": dedupeWindowMs = UInt64(try int(0))
        case "gateway.replay_rate": replayRate = try int(0, 100_000_000)
        case "gateway.deliver_on_ack":
            switch value.lowercased() {
            case "1", "true", "yes", "on": deliverOnAck = true
            case "0", "false", "no", "off": deliverOnAck = false
            default: throw ConfigError("gateway.deliver_on_ack: expected true or false, got '\(value)'")
            }
        case "ws.slow_consumer":
            guard value == "close" || value == "pause" else {
                throw ConfigError("ws.slow_consumer: expected close or pause, got '\(value)'")
            }
            slowConsumerPause = value == "pause"
        case "ws.slow_consumer_grace_ms": slowConsumerGraceMs = UInt64(try int(0))
        default:
            if key.hasPrefix("tls.sni.") {
                let host = String(key.dropFirst(8))
                let parts = value.split(separator: ",").map { String($0).trimmingSpaces }
                guard !host.isEmpty, parts.count == 2 else { throw ConfigError("\(key): expected CERT_FILE,KEY_FILE") }
                tlsSettings.sni.append((host, parts[0], parts[1]))
                return
            }
            if key.hasPrefix("kafka.") {
                kafka.append((String(key.dropFirst(6)), value)); return
            }
            throw ConfigError("unknown configuration key '\(key)'")
        }
    }

    static func parseHostPort(_ s: String) throws -> (String, Int) {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), port >= 0, port <= 65535 else {
            throw ConfigError("listen: expected HOST:PORT, got '\(s)'")
        }
        var host = String(s[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty || host == "*" { host = "0.0.0.0" }
        if host == "localhost" { host = "127.0.0.1" }
        return (host, port)
    }

    static func parseTopicSpec(_ s: String) throws -> (String, Int32) {
        let parts = s.split(separator: ":")
        let name = String(parts[0]).trimmingSpaces
        let n = parts.count > 1 ? Int32(parts[1]) : 1
        guard !name.isEmpty, let n, n > 0, n <= 10_000, parts.count <= 2 else {
            throw ConfigError("topic: expected NAME[:PARTITIONS], got '\(s)'")
        }
        return (name, n)
    }

    /// Parses a config file's text: `key = value` lines, `#` comments, blank lines.
    public static func parseFile(_ text: String) throws -> [(String, String)] {
        var out: [(String, String)] = []
        var lineNo = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNo += 1
            let line = String(raw).trimmingSpaces
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw ConfigError("line \(lineNo): expected key = value")
            }
            out.append((String(line[..<eq]).trimmingSpaces, String(line[line.index(after: eq)...]).trimmingSpaces))
        }
        return out
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
