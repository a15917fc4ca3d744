import CRdKafka
import Glibc

/// A Kafka record as the host sees it (copied out of librdkafka).
public struct KafkaRecord: Sendable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    /// Milliseconds since the epoch, -1 when unknown.
    public var timestamp: Int64
    public var key: [UInt8]?
    public var value: [UInt8]?
    public var headers: [(String, [UInt8]?)]
}

/// A Kafka consumer for the embedding host, its events wired into an engine's loop:
/// consumer groups (`subscribe`) or assigned partitions (`assign`), seek and replay from an
/// offset or a time, explicit commits.
///
/// Threading: methods may be called from any thread except from inside `onRecord`, which
/// runs on the engine's loop thread. Blocking calls (`commit`, `seek(topic:timestampMs:)`,
/// `close`) wait for Kafka.
public final class KafkaConsumer {
    public static let offsetBeginning = Int64(RD_KAFKA_OFFSET_BEGINNING)
    public static let offsetEnd = Int64(RD_KAFKA_OFFSET_END)
    public static let offsetStored = Int64(RD_KAFKA_OFFSET_STORED)

    let rk: OpaquePointer
    private let queue: OpaquePointer
    private let engine: Engine
    private var watcher: KafkaQueueWatcher?
    private var closed = false
    private let onRecord: (KafkaRecord) -> Void
    private let onError: ((String) -> Void)?

    /// `properties` are librdkafka properties (without the `kafka.` prefix); the engine's
    /// bootstrap servers are used unless given. Group consumption needs `group.id`.
    public init(engine: Engine, properties: [(String, String)], onRecord: @escaping (KafkaRecord) -> Void,
                onError: ((String) -> Void)? = nil) throws {
        guard engine.isRunning else { throw StreamOtterError(.state, "the engine is not running") }
        self.engine = engine
        self.onRecord = onRecord
        self.onError = onError
        var props: [(String, String)] = [("client.id", "streamotter-consumer"), ("enable.partition.eof", "false")]
        if !properties.contains(where: { $0.0 == "bootstrap.servers" || $0.0 == "metadata.broker.list" }) {
            guard !engine.bootstrapServers.isEmpty else {
                throw StreamOtterError(.config, "kafka.bootstrap.servers is required (the engine has no Kafka)")
            }
            props.append(("bootstrap.servers", engine.bootstrapServers))
        }
        if !properties.contains(where: { $0.0 == "group.id" }) {
            props.append(("group.id", "streamotter-host-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"))
            props.append(("enable.auto.commit", "false"))
        }
        let conf: OpaquePointer
        do { conf = try makeKafkaConf(props + properties) } catch { throw StreamOtterError(.config, "\(error)") }
        var err = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, &err, err.count) else {
            rd_kafka_conf_destroy(conf)
            throw StreamOtterError(.kafka, String(cString: err))
        }
        self.rk = rk
        rd_kafka_poll_set_consumer(rk)
        queue = rd_kafka_queue_get_consumer(rk)
        engine.runOnLoop { [self] in
            guard !closed else { return }
            watcher = try? KafkaQueueWatcher(loop: engine.loop, queue: queue) { [unowned self] in self.drain(256) }
        }
    }

    private func drain(_ budget: Int) -> Bool {
        var n = 0
        while n < budget, !closed, let m = rd_kafka_consumer_poll(rk, 0) {
            n += 1
            let msg = m.pointee
            if msg.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                let text = rd_kafka_message_errstr(m).map { String(cString: $0) } ?? KafkaError(msg.err).message
                onError?("\(KafkaError(msg.err).name): \(text)")
            } else {
                onRecord(KafkaConsumer.copy(m))
            }
            rd_kafka_message_destroy(m)
        }
        return n == budget
    }

    static func copy(_ m: UnsafeMutablePointer<rd_kafka_message_t>) -> KafkaRecord {
        let msg = m.pointee
        var tstype = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let ts = rd_kafka_message_timestamp(m, &tstype)
        var headers: [(String, [UInt8]?)] = []
        forEachHeader(m) { name, value in headers.append((name, value.map { Array($0) })) }
        return KafkaRecord(
            topic: msg.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "",
            partition: msg.partition, offset: msg.offset, timestamp: ts,
            key: msg.key.map { Array(UnsafeRawBufferPointer(start: $0, count: msg.key_len)) },
            value: msg.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: msg.len)) },
            headers: headers)
    }

    private func check(_ e: OpaquePointer?) throws {
        guard let e else { return }
        let msg = String(cString: rd_kafka_error_string(e))
        rd_kafka_error_destroy(e)
        throw StreamOtterError(.kafka, msg)
    }

    /// Joins the consumer group for `topics` (needs group.id).
    public func subscribe(_ topics: [String]) throws {
        guard !topics.isEmpty else { throw StreamOtterError(.config, "no topics") }
        let list = rd_kafka_topic_partition_list_new(Int32(clamping: topics.count))!   // an initial size; the list grows
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for t in topics { rd_kafka_topic_partition_list_add(list, t, RD_KAFKA_PARTITION_UA) }
        let rc = rd_kafka_subscribe(rk, list)
        if rc != RD_KAFKA_RESP_ERR_NO_ERROR { throw StreamOtterError(.kafka, KafkaError(rc).description) }
    }

    /// Adds `topic`/`partition` to the assignment, starting at `offset` (or
    /// offsetBeginning / offsetEnd / offsetStored).
    public func assign(topic: String, partition: Int32, offset: Int64) throws {
        let list = rd_kafka_topic_partition_list_new(1)!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        rd_kafka_topic_partition_list_add(list, topic, partition)!.pointee.offset = offset
        try check(rd_kafka_incremental_assign(rk, list))
    }

    /// Moves an assigned partition to `offset` (replay or skip).
    public func seek(topic: String, partition: Int32, offset: Int64) throws {
        let list = rd_kafka_topic_partition_list_new(1)!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        rd_kafka_topic_partition_list_add(list, topic, partition)!.pointee.offset = offset
        try check(rd_kafka_seek_partitions(rk, list, 5000))
        if list.pointee.elems[0].err != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw StreamOtterError(.kafka, KafkaError(list.pointee.elems[0].err).description)
        }
    }

    /// Moves every assigned partition of `topic` to the first offset at or after
    /// `timestampMs` (the end when there is none). Blocking.
    public func seek(topic: String, timestampMs: Int64) throws {
        var assigned: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        let rc = rd_kafka_assignment(rk, &assigned)
        guard rc == RD_KAFKA_RESP_ERR_NO_ERROR, let assigned else { throw StreamOtterError(.kafka, KafkaError(rc).description) }
        defer { rd_kafka_topic_partition_list_destroy(assigned) }
        let list = rd_kafka_topic_partition_list_new(assigned.pointee.cnt)!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for i in 0..<Int(assigned.pointee.cnt) where strcmp(assigned.pointee.elems[i].topic, topic) == 0 {
            rd_kafka_topic_partition_list_add(list, topic, assigned.pointee.elems[i].partition)!.pointee.offset = timestampMs
        }
        guard list.pointee.cnt > 0 else { throw StreamOtterError(.state, "no partition of '\(topic)' is assigned") }
        let r = rd_kafka_offsets_for_times(rk, list, 10_000)
        if r != RD_KAFKA_RESP_ERR_NO_ERROR { throw StreamOtterError(.kafka, KafkaError(r).description) }
        // No record at or after the time: the end, resolved now to an absolute offset (a
        // logical end resolved later would skip a record produced in between).
        for i in 0..<Int(list.pointee.cnt) where list.pointee.elems[i].offset < 0 {
            var lo: Int64 = 0, hi: Int64 = 0
            let e = list.pointee.elems[i]
            let r = rd_kafka_query_watermark_offsets(rk, e.topic, e.partition, &lo, &hi, 10_000)
            list.pointee.elems[i].offset = r == RD_KAFKA_RESP_ERR_NO_ERROR ? hi : Int64(RD_KAFKA_OFFSET_END)
        }
        try check(rd_kafka_seek_partitions(rk, list, 5000))
    }

    /// Commits the positions of everything delivered so far (synchronous).
    public func commit() throws {
        var assigned: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        guard rd_kafka_assignment(rk, &assigned) == RD_KAFKA_RESP_ERR_NO_ERROR, let assigned else {
            throw StreamOtterError(.kafka, "no assignment")
        }
        defer { rd_kafka_topic_partition_list_destroy(assigned) }
        _ = rd_kafka_position(rk, assigned)
        let rc = rd_kafka_commit(rk, assigned, 0)
        if rc != RD_KAFKA_RESP_ERR_NO_ERROR { throw StreamOtterError(.kafka, KafkaError(rc).description) }
    }

    /// Leaves the group, stops fetching and frees the consumer. No callback runs after
    /// close returns. Idempotent.
    public func close() {
        if closed { return }
        // Stop the loop's watcher first (on the loop thread), then close the consumer.
        if engine.isLoopThread {
            closed = true
            watcher?.close()
            watcher = nil
        } else {
            let done = OneShotSignal()
            engine.runOnLoop { [self] in
                closed = true
                watcher?.close()
                watcher = nil
                done.signal()
            }
            _ = done.wait(timeoutMs: 5000)
            closed = true
        }
        rd_kafka_queue_destroy(queue)
        rd_kafka_consumer_close(rk)
        rd_kafka_destroy(rk)
    }

    deinit { close() }
}

/// A signal one thread waits for and another gives, once. Shared by reference, so a late
/// signal after a timed-out wait is harmless.
public final class OneShotSignal {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var fired = false
    public init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }
    deinit {
        pthread_mutex_destroy(&mutex)
        pthread_cond_destroy(&cond)
    }
    public func signal() {
        pthread_mutex_lock(&mutex)
        fired = true
        pthread_cond_broadcast(&cond)
        pthread_mutex_unlock(&mutex)
    }
    /// True when signalled before the timeout.
    public func wait(timeoutMs: Int) -> Bool {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        ts.tv_sec += timeoutMs / 1000
        ts.tv_nsec += (timeoutMs % 1000) * 1_000_000
        if ts.tv_nsec >= 1_000_000_000 { ts.tv_sec += 1; ts.tv_nsec -= 1_000_000_000 }
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while !fired {
            if pthread_cond_timedwait(&cond, &mutex, &ts) != 0 { return fired }
        }
        return true
    }
}
