import CRdKafka
import Glibc

/// One catch-up read of a topic-partition, shared by every subscriber of the engine that is
/// behind the live feed on it. `position` is the next offset the replay fetcher delivers;
/// subscribers skip offsets below their own next offset (the same seam rule as the live
/// feed), and a subscriber that has caught up moves to the live feed.
final class ReplayFeed {
    let tp: TopicPartition
    let queue: OpaquePointer
    var subscribers: [ChannelSubscription] = []
    var position: Int64
    var bucket: TokenBucket
    /// When the last subscriber left (the feed closes after `ReplayLane.lingerMs`).
    var emptySince: UInt64?
    init(tp: TopicPartition, queue: OpaquePointer, position: Int64, bucket: TokenBucket) {
        self.tp = tp
        self.queue = queue
        self.position = position
        self.bucket = bucket
    }
}

/// Replays history to subscribers that are behind, without touching the live feeds.
///
/// A second consumer instance reads the partitions being replayed. Each replayed
/// partition's messages are split off into their own librdkafka queue
/// (`rd_kafka_queue_get_partition` + `rd_kafka_queue_forward(q, NULL)`), and a pacing timer
/// takes at most `gateway.replay_rate` messages per second from each. What is not taken
/// stays in librdkafka's bounded prefetch queue (`queued.max.messages.kbytes`), so the
/// fetcher itself slows down: no unbounded buffering in the gateway, and the live feed
/// (another consumer instance, another queue) is never held up by a replay.
///
/// Loop thread only.
final class ReplayLane {
    static let tickMs: UInt64 = 10
    /// Most messages taken from one partition per tick when the rate is unlimited.
    static let tickBudget = 4096
    /// How long a replay feed with no subscribers stays assigned.
    static let lingerMs: UInt64 = 1_000

    static let consumerDefaults: [(String, String)] = [
        ("client.id", "streamotter-replay"),
        ("fetch.wait.max.ms", "100"),
        // Prefetch per replayed partition (each has its own queue): what a paced replay
        // may hold in memory ahead of its readers.
        ("queued.min.messages", "2000"),
        ("queued.max.messages.kbytes", "2048"),
    ]

    let loop: EventLoop
    let consumer: KafkaFanoutConsumer
    let rate: Int
    private(set) var feeds: [TopicPartition: ReplayFeed] = [:]
    private var timer: LoopTimer?
    private var ticking = false
    /// Messages delivered to subscribers from replays.
    var replayed: UInt64 = 0

    init(loop: EventLoop, props: [(String, String)], rate: Int) throws {
        self.loop = loop
        self.rate = rate
        consumer = try KafkaFanoutConsumer(loop: loop, props: ReplayLane.consumerDefaults + props)
    }

    /// The feed for `tp`, created (assigned at `start`) if needed; an existing feed already
    /// past `start` is moved back with a synchronous seek.
    func feed(for tp: TopicPartition, start: Int64) -> ReplayFeed? {
        if let f = feeds[tp] {
            if start < f.position {
                if let e = consumer.seek(topic: tp.topic, partition: tp.partition, offset: start) {
                    Log.event("error", "kafka_replay_seek_failed", ["topic": tp.topic, "partition": String(tp.partition), "error": e.description])
                    return nil
                }
                f.position = start
            }
            return f
        }
        guard let q = rd_kafka_queue_get_partition(consumer.rk, tp.topic, tp.partition) else { return nil }
        // Our own queue for this partition: the fetcher no longer forwards it to the
        // consumer queue, so it is read only when the pacing timer takes from it.
        rd_kafka_queue_forward(q, nil)
        if let e = consumer.assign(topic: tp.topic, partition: tp.partition, offset: start) {
            Log.event("error", "kafka_replay_assign_failed", ["topic": tp.topic, "partition": String(tp.partition), "error": e.description])
            rd_kafka_queue_destroy(q)
            return nil
        }
        let f = ReplayFeed(tp: tp, queue: q, position: start, bucket: TokenBucket(rate: rate, now: loopNowMs(loop)))
        feeds[tp] = f
        return f
    }

    /// Starts the pacing timer; `tick` runs every `tickMs` while feeds exist.
    func startTicking(_ tick: @escaping () -> Void) {
        if timer == nil { timer = LoopTimer(loop: loop) }
        guard !ticking else { return }
        ticking = true
        timer?.start(afterMs: ReplayLane.tickMs, repeatMs: ReplayLane.tickMs, tick)
    }

    func stopTicking() {
        guard ticking else { return }
        ticking = false
        timer?.stop()
    }

    /// Next message of the feed's partition, or nil. The caller destroys it.
    func poll(_ f: ReplayFeed) -> UnsafeMutablePointer<rd_kafka_message_t>? {
        rd_kafka_consume_queue(f.queue, 0)
    }

    /// The partition's high watermark as last seen by the replay fetcher, or nil.
    func cachedHighWatermark(_ tp: TopicPartition) -> Int64? {
        var lo: Int64 = -1, hi: Int64 = -1
        let rc = rd_kafka_get_watermark_offsets(consumer.rk, tp.topic, tp.partition, &lo, &hi)
        return rc == RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0 ? hi : nil
    }

    /// Moves a feed back to the beginning (after its position went out of range).
    func rewindToBeginning(_ f: ReplayFeed) {
        // The fetcher stopped at the error (auto.offset.reset=error); a seek is refused
        // then, so the partition is assigned again. Its queue stays split off.
        consumer.unassign(topic: f.tp.topic, partition: f.tp.partition)
        _ = consumer.assign(topic: f.tp.topic, partition: f.tp.partition, offset: Int64(RD_KAFKA_OFFSET_BEGINNING))
        f.position = 0
    }

    /// Stops reading the feed's partition.
    func close(_ f: ReplayFeed) {
        guard feeds[f.tp] === f else { return }
        feeds.removeValue(forKey: f.tp)
        consumer.unassign(topic: f.tp.topic, partition: f.tp.partition)
        rd_kafka_queue_destroy(f.queue)
    }

    func shutdown() {
        for f in Array(feeds.values) { close(f) }
        timer?.close()
        timer = nil
        ticking = false
        consumer.close()
    }
}
