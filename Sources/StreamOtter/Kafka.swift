import CRdKafka
import CShim
import CUV
import Glibc

/// A librdkafka error code with its text.
struct KafkaError: Error, CustomStringConvertible {
    let code: rd_kafka_resp_err_t
    let message: String
    init(_ code: rd_kafka_resp_err_t, _ message: String? = nil) {
        self.code = code
        self.message = message ?? String(cString: rd_kafka_err2str(code))
    }
    var name: String { String(cString: rd_kafka_err2name(code)) }
    var description: String { "\(name): \(message)" }
}

/// Builds a librdkafka conf from properties, reporting the first bad one.
func makeKafkaConf(_ props: [(String, String)]) throws -> OpaquePointer {
    let conf = rd_kafka_conf_new()!
    var err = [CChar](repeating: 0, count: 512)
    for (k, v) in props {
        if rd_kafka_conf_set(conf, k, v, &err, err.count) != RD_KAFKA_CONF_OK {
            rd_kafka_conf_destroy(conf)
            throw ConfigError("kafka.\(k): \(String(cString: err))")
        }
    }
    return conf
}

/// Watches a librdkafka queue through its io-event fd with uv_poll: Kafka events arrive on
/// the loop like socket events, with no polling thread and no sleeps.
///
/// The fd is written only when the queue goes from empty to non-empty, so the queue is
/// drained once right after enabling and until empty on every wake-up; a drain that stops
/// early for fairness schedules another pass itself.
final class KafkaQueueWatcher {
    private let loop: EventLoop
    private let queue: OpaquePointer
    private var fds: [Int32] = [-1, -1]
    private let poll: UnsafeMutablePointer<uv_poll_t>
    /// Drains up to a budget; returns true when the queue may still hold events.
    private let drain: () -> Bool
    private var passScheduled = false
    private var closed = false
    private(set) var wakeups: UInt64 = 0

    init(loop: EventLoop, queue: OpaquePointer, drain: @escaping () -> Bool) throws {
        self.loop = loop
        self.queue = queue
        self.drain = drain
        poll = .allocate(capacity: 1)
        let rc = fds.withUnsafeMutableBufferPointer { cshim_pipe($0.baseAddress) }
        if rc != 0 {
            poll.deallocate()
            throw ConfigError("pipe: \(String(cString: strerror(-rc)))")
        }
        rd_kafka_queue_io_event_enable(queue, fds[1], "1", 1)
        uv_poll_init(loop.uv, poll, fds[0])
        poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_poll_start(poll, Int32(UV_READABLE.rawValue)) { p, status, _ in
            guard let p, let d = p.pointee.data else { return }
            let me = Unmanaged<KafkaQueueWatcher>.fromOpaque(d).takeUnretainedValue()
            me.wakeups += 1
            cshim_drain_fd(me.fds[0])
            me.pass()
        }
        // Events queued before the fd was enabled are never signalled: drain them now.
        loop.post { [weak self] in self?.pass() }
    }

    private func pass() {
        guard !closed else { return }
        if drain() && !passScheduled {
            passScheduled = true
            loop.post { [weak self] in
                guard let self else { return }
                self.passScheduled = false
                self.pass()
            }
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        rd_kafka_queue_io_event_enable(queue, -1, nil, 0)
        uv_poll_stop(poll)
        poll.pointee.data = nil
        uv_close(rawHandle(poll)) { h in h?.deallocate() }
        Glibc.close(fds[0])
        Glibc.close(fds[1])
    }
}

/// The gateway's producer: idempotent, acks=all, murmur2 keyed partitioning like Java.
/// Delivery reports arrive on the loop thread. Loop thread only, except `flush`.
final class KafkaProducer {
    let rk: OpaquePointer
    private let queue: OpaquePointer
    private var watcher: KafkaQueueWatcher?
    /// (token, delivery report) for every produced record, exactly once. The message
    /// (topic, partition, offset, error, key, value, headers, timestamp) is valid for the
    /// call only.
    var onDelivery: ((UInt64, UnsafeMutablePointer<rd_kafka_message_t>) -> Void)?
    var onError: ((KafkaError, Bool) -> Void)?
    /// Called after a pass that served at least one event (delivery reports free queue
    /// room: the moment to retry publishes held back by a full queue).
    var afterEvents: (() -> Void)?

    static let defaults: [(String, String)] = [
        ("client.id", "streamotter"),
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "1"),
        ("partitioner", "murmur2_random"),
    ]

    /// True when every acknowledged record is in the log of all in-sync replicas (acks=all,
    /// the default): only then is an acknowledged offset the one consumers will read.
    let acksAll: Bool

    init(loop: EventLoop, props: [(String, String)]) throws {
        let all = KafkaProducer.defaults + props
        let acks = all.last { $0.0 == "acks" || $0.0 == "request.required.acks" }?.1 ?? "all"
        acksAll = acks == "all" || acks == "-1"
        let conf = try makeKafkaConf(all)
        rd_kafka_conf_set_events(conf, Int32(RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR))
        var err = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &err, err.count) else {
            rd_kafka_conf_destroy(conf)
            throw ConfigError("kafka producer: \(String(cString: err))")
        }
        self.rk = rk
        queue = rd_kafka_queue_get_main(rk)
        watcher = try KafkaQueueWatcher(loop: loop, queue: queue) { [unowned self] in self.drainEvents(budget: 64) }
    }

    /// Serves up to `budget` events; true if more may be waiting.
    private func drainEvents(budget: Int) -> Bool {
        var n = 0
        while n < budget, let ev = rd_kafka_queue_poll(queue, 0) {
            n += 1
            switch rd_kafka_event_type(ev) {
            case Int32(RD_KAFKA_EVENT_DR):
                while let m = rd_kafka_event_message_next(ev) {
                    let token = UInt64(UInt(bitPattern: m.pointee._private))
                    onDelivery?(token, UnsafeMutablePointer(mutating: m))  // read only
                }
            case Int32(RD_KAFKA_EVENT_ERROR):
                let code = rd_kafka_event_error(ev)
                let fatal = rd_kafka_event_error_is_fatal(ev) != 0
                let msg = rd_kafka_event_error_string(ev).map { String(cString: $0) } ?? ""
                onError?(KafkaError(code, msg), fatal)
            default:
                break
            }
            rd_kafka_event_destroy(ev)
        }
        if n > 0 { afterEvents?() }
        return n == budget
    }

    /// Queues one record (copied). `token` comes back in `onDelivery`.
    /// `timestamp` is the record's CreateTime in ms since the epoch (0: now).
    func produce(topic: String, partition: Int32 = -1, key: [UInt8]?, headers: [(String, [UInt8])],
                 value: [UInt8], token: UInt64, timestamp: Int64 = 0) -> rd_kafka_resp_err_t {
        var hdrs: OpaquePointer? = nil
        if !headers.isEmpty {
            hdrs = rd_kafka_headers_new(headers.count)
            for (name, v) in headers {
                v.withUnsafeBytes { vb in
                    _ = rd_kafka_header_add(hdrs, name, name.utf8.count, vb.baseAddress, vb.count)
                }
            }
        }
        let opaque = UnsafeMutableRawPointer(bitPattern: UInt(token))
        let rc: rd_kafka_resp_err_t = value.withUnsafeBytes { vb in
            if let key {
                return key.withUnsafeBytes { kb in
                    cshim_produce(rk, topic, partition, kb.baseAddress ?? UnsafeRawPointer(bitPattern: 1), kb.count,
                                  vb.baseAddress, vb.count, hdrs, opaque, timestamp)
                }
            }
            return cshim_produce(rk, topic, partition, nil, 0, vb.baseAddress, vb.count, hdrs, opaque, timestamp)
        }
        if rc != RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs { rd_kafka_headers_destroy(hdrs) }
        return rc
    }

    /// Records queued or in flight.
    var outstanding: Int { Int(rd_kafka_outq_len(rk)) }

    func close() {
        watcher?.close()
        watcher = nil
        rd_kafka_queue_destroy(queue)
        rd_kafka_destroy(rk)
    }
}

/// One consumer instance shared by every subscription of the engine: each topic-partition
/// is assigned at most once (fan-out happens above it). Manual assignment; nothing is
/// committed. Messages arrive on the loop thread.
final class KafkaFanoutConsumer {
    let rk: OpaquePointer
    /// A client with no traffic of its own, for blocking look-ups.
    let lookup: OpaquePointer
    private let queue: OpaquePointer
    private var watcher: KafkaQueueWatcher?
    var onMessage: ((UnsafeMutablePointer<rd_kafka_message_t>) -> Void)?

    static let defaults: [(String, String)] = [
        ("client.id", "streamotter"),
        ("group.id", "streamotter-fanout"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "error"),
        ("enable.partition.eof", "false"),
    ]

    /// `lookupProps` configure a separate client for metadata and offset look-ups: on the
    /// consumer's own connections they would queue behind fetch requests that wait for
    /// data (fetch.wait.max.ms), since a broker answers one connection's requests in order.
    init(loop: EventLoop, props: [(String, String)], lookupProps: [(String, String)]? = nil) throws {
        let conf = try makeKafkaConf(KafkaFanoutConsumer.defaults + props)
        var err = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, &err, err.count) else {
            rd_kafka_conf_destroy(conf)
            throw ConfigError("kafka consumer: \(String(cString: err))")
        }
        self.rk = rk
        if let lookupProps {
            let lconf = try makeKafkaConf([("client.id", "streamotter-lookup")] + lookupProps)
            guard let lk = rd_kafka_new(RD_KAFKA_PRODUCER, lconf, &err, err.count) else {
                rd_kafka_conf_destroy(lconf)
                rd_kafka_destroy(rk)
                throw ConfigError("kafka lookup client: \(String(cString: err))")
            }
            lookup = lk
        } else {
            lookup = rk
        }
        rd_kafka_poll_set_consumer(rk)
        queue = rd_kafka_queue_get_consumer(rk)
        watcher = try KafkaQueueWatcher(loop: loop, queue: queue) { [unowned self] in self.drain(budget: 2048) }
    }

    private func drain(budget: Int) -> Bool {
        var n = 0
        while n < budget, let m = rd_kafka_consumer_poll(rk, 0) {
            n += 1
            onMessage?(m)
            rd_kafka_message_destroy(m)
        }
        return n == budget
    }

    private func withList(_ topic: String, _ partition: Int32, _ offset: Int64, _ body: (UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> Void) {
        let list = rd_kafka_topic_partition_list_new(1)!
        let tp = rd_kafka_topic_partition_list_add(list, topic, partition)!
        tp.pointee.offset = offset
        body(list)
        rd_kafka_topic_partition_list_destroy(list)
    }

    func assign(topic: String, partition: Int32, offset: Int64) -> KafkaError? {
        var result: KafkaError?
        withList(topic, partition, offset) { list in
            if let e = rd_kafka_incremental_assign(rk, list) {
                result = KafkaError(rd_kafka_error_code(e), String(cString: rd_kafka_error_string(e)))
                rd_kafka_error_destroy(e)
            }
        }
        return result
    }

    func unassign(topic: String, partition: Int32) {
        withList(topic, partition, Int64(RD_KAFKA_OFFSET_INVALID)) { list in
            if let e = rd_kafka_incremental_unassign(rk, list) { rd_kafka_error_destroy(e) }
        }
    }

    /// Moves an assigned partition to `offset`. Waits (briefly, a local operation) until
    /// the fetcher took the new position, so no message fetched for the old position is
    /// passed on afterwards.
    func seek(topic: String, partition: Int32, offset: Int64) -> KafkaError? {
        var result: KafkaError?
        withList(topic, partition, offset) { list in
            if let e = rd_kafka_seek_partitions(rk, list, 5000) {
                result = KafkaError(rd_kafka_error_code(e), String(cString: rd_kafka_error_string(e)))
                rd_kafka_error_destroy(e)
            } else if list.pointee.elems[0].err != RD_KAFKA_RESP_ERR_NO_ERROR {
                result = KafkaError(list.pointee.elems[0].err)
            }
        }
        return result
    }

    /// Number of partitions of `topic`. Blocking: call from a worker thread.
    ///
    /// Asks for the metadata of all topics: a request naming the topic would make brokers
    /// with auto-creation on (and the mock cluster, always) create it as a side effect.
    func partitionCount(topic: String, timeoutMs: Int32) -> Result<Int32, KafkaError> {
        var md: UnsafePointer<rd_kafka_metadata>?
        let rc = rd_kafka_metadata(lookup, 1, nil, &md, timeoutMs)
        guard rc == RD_KAFKA_RESP_ERR_NO_ERROR, let md else { return .failure(KafkaError(rc)) }
        defer { rd_kafka_metadata_destroy(md) }
        for i in 0..<Int(md.pointee.topic_cnt) {
            let t = md.pointee.topics[i]
            guard let name = t.topic, strcmp(name, topic) == 0 else { continue }
            if t.err != RD_KAFKA_RESP_ERR_NO_ERROR { return .failure(KafkaError(t.err)) }
            if t.partition_cnt <= 0 { break }
            return .success(t.partition_cnt)
        }
        return .failure(KafkaError(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART))
    }

    /// (low, high) watermarks. Blocking: call from a worker thread.
    func watermarks(topic: String, partition: Int32, timeoutMs: Int32) -> Result<(Int64, Int64), KafkaError> {
        var lo: Int64 = 0, hi: Int64 = 0
        let rc = rd_kafka_query_watermark_offsets(lookup, topic, partition, &lo, &hi, timeoutMs)
        if rc != RD_KAFKA_RESP_ERR_NO_ERROR { return .failure(KafkaError(rc)) }
        return .success((lo, hi))
    }

    /// The first offset at or after `timestampMs` per partition (end offset when none).
    /// Blocking: call from a worker thread.
    func offsetsForTime(topic: String, partitions: Int32, timestampMs: Int64, timeoutMs: Int32) -> Result<[Int32: Int64], KafkaError> {
        let list = rd_kafka_topic_partition_list_new(partitions)!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for p in 0..<partitions {
            rd_kafka_topic_partition_list_add(list, topic, p)!.pointee.offset = timestampMs
        }
        let rc = rd_kafka_offsets_for_times(lookup, list, timeoutMs)
        if rc != RD_KAFKA_RESP_ERR_NO_ERROR { return .failure(KafkaError(rc)) }
        var out: [Int32: Int64] = [:]
        for i in 0..<Int(list.pointee.cnt) {
            let e = list.pointee.elems[i]
            if e.err != RD_KAFKA_RESP_ERR_NO_ERROR { return .failure(KafkaError(e.err)) }
            out[e.partition] = e.offset
        }
        return .success(out)
    }

    func close() {
        watcher?.close()
        watcher = nil
        _ = rd_kafka_assign(rk, nil)
        rd_kafka_queue_destroy(queue)
        rd_kafka_consumer_close(rk)
        rd_kafka_destroy(rk)
        if lookup != rk { rd_kafka_destroy(lookup) }
    }
}

/// librdkafka's mock cluster, in-process: the embedded default when no brokers are
/// configured. A real Kafka-protocol TCP server on loopback.
final class EmbeddedKafka {
    private let rk: OpaquePointer
    let cluster: OpaquePointer
    let bootstrapServers: String

    init(brokers: Int) throws {
        let conf = try makeKafkaConf([("test.mock.num.brokers", String(max(1, brokers))), ("client.id", "streamotter-embedded"), ("log_level", "3")])
        var err = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &err, err.count) else {
            rd_kafka_conf_destroy(conf)
            throw ConfigError("embedded kafka: \(String(cString: err))")
        }
        self.rk = rk
        guard let mc = rd_kafka_handle_mock_cluster(rk) else {
            rd_kafka_destroy(rk)
            throw ConfigError("embedded kafka: this librdkafka has no mock cluster")
        }
        cluster = mc
        bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(mc))
    }

    func createTopic(_ name: String, partitions: Int32, replication: Int32 = 1) throws {
        let rc = rd_kafka_mock_topic_create(cluster, name, partitions, replication)
        if rc != RD_KAFKA_RESP_ERR_NO_ERROR { throw ConfigError("topic \(name): \(KafkaError(rc))") }
    }

    func close() { rd_kafka_destroy(rk) }
}

public struct ConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Calls `body` with each header of a consumed message, in order; the value bytes are
/// valid during the call only (nil for a null value).
func forEachHeader(_ m: UnsafeMutablePointer<rd_kafka_message_t>, _ body: (String, UnsafeRawBufferPointer?) -> Void) {
    var hdrs: OpaquePointer?
    guard rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs else { return }
    var i = 0
    var name: UnsafePointer<CChar>?
    var val: UnsafeRawPointer?
    var size = 0
    while rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
        body(name.map { String(cString: $0) } ?? "", val.map { UnsafeRawBufferPointer(start: $0, count: size) })
        i += 1
    }
}
