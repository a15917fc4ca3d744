import CRdKafka
import Glibc
import StreamOtterCore

/// A publish accepted while the producer queue was full, waiting for room.
struct HeldPublish {
    let token: UInt64
    let connection: UInt64
    let channel: String
    let key: [UInt8]?
    let headers: [(String, [UInt8])]
    let value: [UInt8]
    let created: Int64
}

/// The gateway's delivery-guarantee state: the publish dedupe window, publishes held back by
/// a full producer queue, and the replay lane. Loop thread only.
final class FlowState {
    var dedupe: DedupeWindow
    /// token -> resends (connection, request id) waiting for the same delivery report.
    var waiters: [UInt64: [(UInt64, String?)]] = [:]
    var held: [HeldPublish] = []
    var heldHead = 0
    var heldPerConnection: [UInt64: Int] = [:]
    var retryTimer: LoopTimer?
    var retryTimerRunning = false
    var replay: ReplayLane?
    var replayUnavailable = false
    /// Connections over their outbound bound this turn, judged after the turn's flush.
    var suspects: Set<UInt64> = []
    var suspectCheckPosted = false
    /// Connections over their bound (but under twice it) since this time.
    var overSince: [UInt64: UInt64] = [:]

    var dedupeHits: UInt64 = 0
    var heldTotal: UInt64 = 0
    var pauses: UInt64 = 0
    var parks: UInt64 = 0
    var resumes: UInt64 = 0

    init(config: EngineConfig) {
        dedupe = DedupeWindow(capacity: config.dedupeWindow, ttlMs: config.dedupeWindowMs)
    }

    var heldCount: Int { held.count - heldHead }
}

extension Gateway {
    /// The Kafka header that carries a publish's `id`.
    static let idHeader = "streamotter-id"

    // MARK: publish: dedupe, header, inbound backpressure

    /// Answers a resend of a publish that is still in flight or was acknowledged recently
    /// (same channel, id and content) from the dedupe window. Returns true when it did;
    /// otherwise `key` is the entry to record for this publish (nil without an id). Call
    /// with the publish as the client sent it (before any encryption, whose output differs
    /// on every call).
    func answerResend(_ c: WebSocketConnection, id: String?, channel: String, key: [UInt8]?,
                      headers: [(String, [UInt8])], value: [UInt8], dedupeKey: inout PublishKey?) -> Bool {
        dedupeKey = nil
        guard let id, flow.dedupe.isEnabled else { return false }
        let k = PublishKey(channel: channel, id: id, key: key, headers: headers, value: value)
        switch flow.dedupe.lookup(k, now: loopNowMs(loop)) {
        case .acked(let partition, let offset)?:
            flow.dedupeHits += 1
            reply(c, ServerFrames.ack(id: id, channel: channel, partition: partition, offset: offset))
            return true
        case .inFlight(let token)?:
            flow.dedupeHits += 1
            flow.waiters[token, default: []].append((c.id, id))
            return true
        case nil:
            dedupeKey = k
            return false
        }
    }

    /// Accepts one publish from a connection (after `answerResend` said it is new). Every
    /// accepted publish is answered exactly once per request: an `ack` after Kafka
    /// acknowledged it, or an `error`.
    func acceptPublish(_ c: WebSocketConnection, id: String?, channel: String, key: [UInt8]?,
                       headers userHeaders: [(String, [UInt8])], value: [UInt8], dedupeKey pkey: PublishKey?) {
        // The header name is reserved: the gateway sets it from `id`.
        // The name is reserved in any letter case: a consumer that looks headers up
        // case-insensitively must not be fooled by a client's own.
        var headers = userHeaders
        if !headers.isEmpty { headers.removeAll { Gateway.isIDHeader($0.0) } }
        if let id { headers.append((Gateway.idHeader, Array(id.utf8))) }
        let token = nextToken
        nextToken += 1
        server.metrics.publishes += 1
        let created = wallClockMs()
        pendingPublishes.insert(token, PendingPublish(connection: c, id: id, channel: channel, key: pkey, created: created))
        // One connection's share of the producer queue: past it, stop reading from it until
        // half its publishes are answered, so a flooding client cannot put every other
        // client's publishes behind its own (requests already read still go through).
        c.publishesInFlight += 1
        if c.publishesInFlight >= maxPublishesInFlight { c.holdInbound(.publishesInFlight) }
        if let pkey { flow.dedupe.begin(pkey, token: token) }
        if flow.heldCount == 0 {
            let rc = producer.produce(topic: channel, key: key, headers: headers, value: value, token: token, timestamp: created)
            if rc == RD_KAFKA_RESP_ERR_NO_ERROR { return }
            if rc != RD_KAFKA_RESP_ERR__QUEUE_FULL {
                publishFinished(token: token, err: rc, partition: -1, offset: -1)
                return
            }
        }
        hold(HeldPublish(token: token, connection: c.id, channel: channel, key: key, headers: headers, value: value, created: created), c)
    }

    /// The producer queue is full: keep the publish, stop reading from its connection (TCP
    /// backpressure), retry when delivery reports free room.
    private func hold(_ h: HeldPublish, _ c: WebSocketConnection) {
        flow.held.append(h)
        flow.heldTotal += 1
        flow.heldPerConnection[h.connection, default: 0] += 1
        c.holdInbound(.producerQueueFull)
        if !flow.retryTimerRunning {
            if flow.retryTimer == nil { flow.retryTimer = LoopTimer(loop: loop) }
            flow.retryTimerRunning = true
            flow.retryTimer?.start(afterMs: 50, repeatMs: 50) { [unowned self] in self.retryHeld() }
        }
    }

    /// Hands held publishes to the producer in arrival order until the queue is full again.
    func retryHeld() {
        guard flow.heldCount > 0 else { return }
        while flow.heldHead < flow.held.count {
            let h = flow.held[flow.heldHead]
            let rc = producer.produce(topic: h.channel, key: h.key, headers: h.headers, value: h.value, token: h.token,
                                      timestamp: h.created)
            if rc == RD_KAFKA_RESP_ERR__QUEUE_FULL { break }
            flow.heldHead += 1
            if rc != RD_KAFKA_RESP_ERR_NO_ERROR {
                publishFinished(token: h.token, err: rc, partition: -1, offset: -1)
            }
            let left = (flow.heldPerConnection[h.connection] ?? 1) - 1
            if left <= 0 {
                flow.heldPerConnection.removeValue(forKey: h.connection)
                server.connections[h.connection]?.releaseInbound(.producerQueueFull)
            } else {
                flow.heldPerConnection[h.connection] = left
            }
        }
        if flow.heldHead == flow.held.count {
            flow.held.removeAll(keepingCapacity: flow.held.count < 4096)
            flow.heldHead = 0
            if flow.retryTimerRunning {
                flow.retryTimerRunning = false
                flow.retryTimer?.stop()
            }
        } else if flow.heldHead > 1024 && flow.heldHead * 2 > flow.held.count {
            flow.held.removeFirst(flow.heldHead)
            flow.heldHead = 0
        }
    }

    /// The outcome of one publish (a delivery report, or a local error): answers the
    /// publishing request and every resend waiting for it.
    /// Returns the record's CreateTime, nil for an unknown token.
    @discardableResult
    func publishFinished(token: UInt64, err: rd_kafka_resp_err_t, partition: Int32, offset: Int64) -> Int64? {
        guard let p = pendingPublishes.remove(token) else { return nil }
        let ok = err == RD_KAFKA_RESP_ERR_NO_ERROR
        let pc = p.connection
        pc.publishesInFlight -= 1
        if pc.publishesInFlight <= maxPublishesInFlight / 2 && pc.isHeld(.publishesInFlight) {
            pc.releaseInbound(.publishesInFlight)
        }
        if ok {
            server.metrics.acks += 1
            if let key = p.key { flow.dedupe.acked(key, partition: partition, offset: offset, now: loopNowMs(loop)) }
        } else {
            server.metrics.publishFailures += 1
            if let key = p.key { flow.dedupe.failed(key) }
        }
        func answer(_ c: WebSocketConnection, _ id: String?) {
            guard c.isOpen else { return }
            if ok {
                replyAck(c, id: id, channel: p.channel, partition: partition, offset: offset)
            } else {
                reply(c, ServerFrames.error(id: id, code: "publish_failed", message: "kafka: \(KafkaError(err).description)"))
            }
        }
        answer(p.connection, p.id)
        // Resends of the same publish that arrived while it was in flight.
        if !flow.waiters.isEmpty, let waiters = flow.waiters.removeValue(forKey: token) {
            for (conn, id) in waiters {
                if let c = server.connections[conn] { answer(c, id) }
            }
        }
        return p.created
    }

    /// True for the reserved id header name, in any letter case.
    static func isIDHeader(_ name: String) -> Bool {
        name.utf8.count == idHeader.utf8.count && name.lowercased() == idHeader
    }

    // MARK: subscriptions: live feed or replay lane

    /// Puts one partition of a subscription on the live feed, or on the replay lane when it
    /// starts behind the live feed (or behind the end of the partition when there is no
    /// live feed). `high` is the partition's end offset when the subscribe looked it up.
    func attachPartition(_ sub: ChannelSubscription, _ p: Int32, start: Int64, latest: Bool, high: Int64?) {
        let tp = TopicPartition(topic: sub.channel, partition: p)
        var start = start
        if latest, let live = feeds[tp], live.assigned { start = max(start, live.position) }
        sub.next[p] = start
        if let s = sub.connection.session as? Session, s.paused { return }
        if let live = feeds[tp], live.assigned {
            if start >= live.position {
                join(sub, live)
                return
            }
        } else if latest || high.map({ start >= $0 }) == true {
            join(sub, liveFeed(tp, at: start))
            return
        }
        if let lane = replayLane(), let f = lane.feed(for: tp, start: start) {
            f.subscribers.append(sub)
            sub.replays.append(f)
            lane.startTicking { [unowned self] in self.replayTick() }
            return
        }
        // No replay lane: fall back to moving the shared feed back.
        let live = liveFeed(tp, at: start)
        if start < live.position {
            if let e = consumer.seek(topic: tp.topic, partition: p, offset: start) {
                Log.event("error", "kafka_seek_failed", ["topic": tp.topic, "partition": String(p), "error": e.description])
            }
            live.position = start
        }
        join(sub, live)
    }

    /// The live feed of `tp`, created and assigned at `start` if there is none.
    private func liveFeed(_ tp: TopicPartition, at start: Int64) -> PartitionFeed {
        if let f = feeds[tp], f.assigned { return f }
        let f = feeds[tp] ?? PartitionFeed(tp)
        feeds[tp] = f
        if let e = consumer.assign(topic: tp.topic, partition: tp.partition, offset: start) {
            Log.event("error", "kafka_assign_failed", ["topic": tp.topic, "partition": String(tp.partition), "error": e.description])
        }
        f.assigned = true
        f.position = start
        return f
    }

    private func join(_ sub: ChannelSubscription, _ feed: PartitionFeed) {
        feed.subscribers.append(sub)
        sub.feeds.append(feed)
    }

    private func replayLane() -> ReplayLane? {
        if let r = flow.replay { return r }
        if flow.replayUnavailable { return nil }
        do {
            let r = try ReplayLane(loop: loop, props: config.kafka + config.kafkaConsumer, rate: config.replayRate)
            r.consumer.onMessage = { [unowned self] m in self.strayReplayMessage(m) }
            flow.replay = r
            return r
        } catch {
            flow.replayUnavailable = true
            Log.event("error", "kafka_replay_consumer_failed", ["error": "\(error)"])
            return nil
        }
    }

    /// Removes a subscription from the replay feeds it reads (they close at the next tick
    /// when nobody is left).
    func detachReplays(_ sub: ChannelSubscription) {
        for f in sub.replays { f.subscribers.removeAll { $0 === sub } }
        sub.replays.removeAll()
    }

    /// Paces the replay lane: takes up to the token bucket's worth of messages from each
    /// replayed partition, then moves subscribers that caught up to the live feed.
    func replayTick() {
        guard let lane = flow.replay else { return }
        let now = loopNowMs(loop)
        // Replays are paced by the reader too: a subscriber with half its bound queued
        // steps off the feed (keeping its position) until its socket drains, so history
        // never overflows a reader that keeps up, and never waits on one that does not.
        let threshold = server.settings.maxBufferedBytes / 2
        for f in Array(lane.feeds.values) {
            f.bucket.refill(now: now)
            var budget = ReplayLane.tickBudget
            while budget > 0, f.bucket.available {
                for sub in f.subscribers where sub.connection.queuedBytes >= threshold { park(sub, f) }
                if f.subscribers.isEmpty { break }
                guard let m = lane.poll(f) else { break }
                budget -= 1
                if m.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    replayError(lane, f, m)
                } else {
                    f.position = m.pointee.offset + 1
                    let n = fanOut(m, topic: f.tp.topic, to: f.subscribers)
                    if n > 0 {
                        lane.replayed += UInt64(n)
                        _ = f.bucket.take(now: now)
                    }
                }
                rd_kafka_message_destroy(m)
            }
            for sub in f.subscribers where caughtUp(sub, f, lane) {
                f.subscribers.removeAll { $0 === sub }
                sub.replays.removeAll { $0 === f }
                join(sub, liveFeed(f.tp, at: sub.next[f.tp.partition] ?? f.position))
            }
            // A feed whose readers all stepped off lingers a moment, positioned where they
            // left, so that taking them back needs no new assignment or seek.
            if !f.subscribers.isEmpty {
                f.emptySince = nil
            } else if let since = f.emptySince {
                if now &- since >= ReplayLane.lingerMs { lane.close(f) }
            } else {
                f.emptySince = now
            }
        }
        if lane.feeds.isEmpty { lane.stopTicking() }
    }

    /// Takes a subscriber off a replay feed until its connection drains.
    private func park(_ sub: ChannelSubscription, _ f: ReplayFeed) {
        f.subscribers.removeAll { $0 === sub }
        sub.replays.removeAll { $0 === f }
        guard let session = sub.connection.session as? Session else { return }
        session.parked.append((sub, f.tp.partition))
        flow.parks += 1
        let c = sub.connection
        c.stream.lowWater = server.settings.maxBufferedBytes / 4
        c.stream.requestDrainNotification()
    }

    private func caughtUp(_ sub: ChannelSubscription, _ f: ReplayFeed, _ lane: ReplayLane) -> Bool {
        guard let next = sub.next[f.tp.partition] else { return true }
        if let live = feeds[f.tp], live.assigned { return next >= live.position }
        guard let hi = lane.cachedHighWatermark(f.tp) else { return false }
        return next >= hi
    }

    private func replayError(_ lane: ReplayLane, _ f: ReplayFeed, _ m: UnsafeMutablePointer<rd_kafka_message_t>) {
        let err = m.pointee.err
        let text = rd_kafka_message_errstr(m).map { String(cString: $0) } ?? KafkaError(err).message
        Log.event("warn", "kafka_replay_error", ["topic": f.tp.topic, "partition": String(f.tp.partition), "error": "\(KafkaError(err).name): \(text)"])
        guard err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET || err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE else { return }
        let p = f.tp.partition
        for sub in f.subscribers {
            reply(sub.connection, ServerFrames.error(id: nil, code: "offset_out_of_range",
                message: "channel '\(f.tp.topic)' partition \(p): position \(sub.next[p] ?? -1) is no longer available; continuing from the earliest available offset"))
            sub.next[p] = 0
        }
        lane.rewindToBeginning(f)
    }

    /// A replayed partition's message that reached the replay consumer's main queue (it
    /// should not: every replayed partition has its own queue). Delivered like any other.
    private func strayReplayMessage(_ m: UnsafeMutablePointer<rd_kafka_message_t>) {
        guard m.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR, let rkt = m.pointee.rkt, let lane = flow.replay else { return }
        let tp = TopicPartition(topic: String(cString: rd_kafka_topic_name(rkt)), partition: m.pointee.partition)
        guard let f = lane.feeds[tp] else { return }
        f.position = m.pointee.offset + 1
        lane.replayed += UInt64(fanOut(m, topic: tp.topic, to: f.subscribers))
    }

    /// Sends one record to the subscribers that need it (offset at or past their next
    /// offset; with `exactly`, only those whose next offset is this one); the frame is
    /// encoded once. Returns how many got it.
    func fanOut(_ m: UnsafeMutablePointer<rd_kafka_message_t>, topic: String, to subscribers: [ChannelSubscription],
                exactly: Bool = false, timestamp: Int64? = nil) -> Int {
        let partition = m.pointee.partition
        let offset = m.pointee.offset
        var frame: OutBuffer?
        var n = 0
        for sub in subscribers {
            guard let next = sub.next[partition], exactly ? offset == next : offset >= next else { continue }
            let c = sub.connection
            // Nothing is delivered on an expired credential (the connection is closing).
            if c.credentialExpired { continue }
            // Ahead of the fetch only while the socket keeps up: a burst of acknowledgements
            // (after a producer stall) is left to the fetches, which come in bounded batches.
            if exactly && !c.keepsUp { continue }
            sub.next[partition] = offset + 1
            if frame == nil { frame = encodeMessage(m, topic: topic, timestamp: timestamp) }
            n += 1
            if c.sendShared(frame!) == .overBound { noteOverBound(c) }
        }
        server.metrics.deliveries += UInt64(n)
        server.metrics.messagesOut += UInt64(n)
        return n
    }

    // MARK: slow consumers

    /// A send left more than `ws.max_buffered_bytes` queued. That alone does not make the
    /// reader slow: one loop turn may queue a burst (a whole batch from Kafka) that the
    /// kernel takes at the end of the turn. The connection is judged once per turn, after
    /// its bytes were offered to the kernel, on what the kernel did not take:
    /// - at most the bound: fine;
    /// - over twice the bound: slow, at once (the memory bound);
    /// - in between: slow if it has not drained back to the bound within
    ///   `ws.slow_consumer_grace_ms` (a reader that keeps up drains a burst in far less).
    func noteOverBound(_ c: WebSocketConnection) {
        guard c.isOpen else { return }
        flow.suspects.insert(c.id)
        if !flow.suspectCheckPosted {
            flow.suspectCheckPosted = true
            loop.post { [self] in judgeSuspects() }   // strong: no side table (see WebSocketServer.delegate)
        }
    }

    private func judgeSuspects() {
        flow.suspectCheckPosted = false
        let ids = flow.suspects
        flow.suspects.removeAll()
        let bound = server.settings.maxBufferedBytes
        let now = loopNowMs(loop)
        for id in ids {
            guard let c = server.connections[id], c.isOpen else {
                flow.overSince.removeValue(forKey: id)
                continue
            }
            c.stream.flushTurn()  // offer this turn's bytes to the kernel now
            let unsent = c.stream.unsentBytes
            if unsent <= bound {
                flow.overSince.removeValue(forKey: id)
            } else if unsent > 2 * bound {
                flow.overSince.removeValue(forKey: id)
                handleSlowConsumer(c)
            } else if let since = flow.overSince[id] {
                if now &- since >= config.slowConsumerGraceMs {
                    flow.overSince.removeValue(forKey: id)
                    handleSlowConsumer(c)
                }
            } else {
                flow.overSince[id] = now
                c.stream.lowWater = bound
                c.stream.requestDrainNotification()
            }
        }
    }

    /// A connection went over `ws.max_buffered_bytes`. `close`: an `error` frame with code
    /// `slow_consumer` and the resume positions of every subscription, then Close 1008.
    /// `pause`: no more messages to it until its socket drains, then it resumes from its
    /// positions; if replies alone take it past twice the bound, it is closed as above.
    func handleSlowConsumer(_ c: WebSocketConnection) {
        guard c.isOpen, let session = c.session as? Session else { return }
        let bound = server.settings.maxBufferedBytes
        if config.slowConsumerPause && (!session.paused || c.stream.unsentBytes <= 2 * bound) {
            // Paused already: only replies add to its queue now, and up to twice the bound
            // they are allowed; past that the connection is closed like under `close`.
            guard !session.paused else { return }
            session.paused = true
            flow.pauses += 1
            for sub in session.subscriptions.values { detach(sub) }
            session.parked.removeAll()
            c.stream.lowWater = bound / 4
            c.stream.requestDrainNotification()
            Log.event("info", "slow_consumer_paused", ["conn": String(c.id), "peer": c.peer, "queued_bytes": String(c.queuedBytes)])
            return
        }
        server.metrics.slowConsumerCloses += 1
        Log.event("warn", "slow_consumer_closed", ["conn": String(c.id), "peer": c.peer, "queued_bytes": String(c.queuedBytes)])
        let positions = session.subscriptions.values.sorted { $0.channel < $1.channel }.map { sub in
            (sub.channel, sub.next.sorted)
        }
        c.sendText(ServerFrames.slowConsumer(positions: positions, limit: bound))
        c.fail(code: 1008, reason: "outbound buffer bound exceeded")
    }

    /// The socket of a paused subscriber drained: resume every subscription from its
    /// positions (through the replay lane when it is behind the live feed).
    func resumeDrained(_ c: WebSocketConnection) {
        flow.overSince.removeValue(forKey: c.id)
        guard c.isOpen, let session = c.session as? Session else { return }
        if !session.paused {
            // Replays parked while the socket was half full.
            let parked = session.parked
            session.parked.removeAll()
            for (sub, p) in parked where session.subscriptions[sub.channel] === sub {
                attachPartition(sub, p, start: sub.next[p] ?? 0, latest: false, high: nil)
            }
            return
        }
        session.paused = false
        session.parked.removeAll()
        flow.resumes += 1
        Log.event("info", "slow_consumer_resumed", ["conn": String(c.id), "peer": c.peer])
        for sub in session.subscriptions.values {
            for (p, next) in sub.next.sorted {
                attachPartition(sub, p, start: next, latest: false, high: nil)
            }
        }
    }

    // MARK: metrics and shutdown

    func flowMetricSamples(into s: inout [MetricSample]) {
        func metric(_ name: String, _ type: String, _ help: String, _ v: UInt64) { s.append(MetricSample(name, type, help, v)) }
        metric("publish_dedupe_hits_total", "counter", "Publish resends answered with the original outcome instead of a second record.", flow.dedupeHits)
        metric("publish_dedupe_entries", "gauge", "Entries in the publish dedupe window.", UInt64(flow.dedupe.count))
        metric("publishes_held", "gauge", "Publishes waiting for room in the producer queue.", UInt64(flow.heldCount))
        metric("publishes_held_total", "counter", "Publishes that had to wait for room in the producer queue.", flow.heldTotal)
        metric("slow_consumer_pauses_total", "counter", "Subscribers paused for exceeding their outbound buffer bound.", flow.pauses)
        metric("slow_consumer_resumes_total", "counter", "Paused subscribers resumed after their socket drained.", flow.resumes)
        metric("replay_parks_total", "counter", "Replays stopped until the subscriber's socket drained.", flow.parks)
        metric("replay_feeds", "gauge", "Topic-partitions being replayed to subscribers behind the live feed.", UInt64(flow.replay?.feeds.count ?? 0))
        metric("replay_messages_total", "counter", "Messages delivered from replays.", flow.replay?.replayed ?? 0)
    }

    /// Closes the replay consumer and timers (engine teardown, loop thread).
    func closeFlow() {
        flow.retryTimer?.close()
        flow.retryTimer = nil
        flow.retryTimerRunning = false
        flow.replay?.shutdown()
        flow.replay = nil
    }
}
