import CStreamOtterHeader
import Glibc
import StreamOtter

final class ConsumerHandle {
    var consumer: KafkaConsumer!
    unowned let engine: EngineHandle
    var alive = true
    init(engine: EngineHandle) { self.engine = engine }
    var pointer: UnsafeRawPointer { UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque()) }
    func release() { Unmanaged.passUnretained(self).release() }
}

func consumerHandle(_ p: OpaquePointer?) -> ConsumerHandle? { lookup(p, ConsumerHandle.self) }

@_cdecl("sot_consumer_new")
public func sot_consumer_new(_ e: OpaquePointer?, _ conf: OpaquePointer?, _ cb: sot_record_cb?, _ opaque: UnsafeMutableRawPointer?,
                             _ errstr: UnsafeMutablePointer<CChar>?, _ errsize: Int) -> OpaquePointer? {
    func refuse(_ msg: String, _ code: Int32 = -2) -> OpaquePointer? {
        copyOut(msg, errstr, errsize)
        setLastError(msg, status: code)
        return nil
    }
    guard let eh = engineHandle(e) else { return refuse("not a live engine handle", -10) }
    guard let cb else { return refuse("the record callback must not be NULL", -1) }
    guard eh.started, !eh.stopped else { return refuse("the engine is not running", -3) }
    var props: [(String, String)] = []
    if let conf {
        let ch = Unmanaged<ConfHandle>.fromOpaque(UnsafeRawPointer(conf)).takeUnretainedValue()
        for (k, v) in ch.entries {
            guard k.hasPrefix("kafka.") else { return refuse("consumer configuration takes kafka.* keys only, got '\(k)'") }
            props.append((String(k.dropFirst(6)), v))
        }
    }
    let h = ConsumerHandle(engine: eh)
    let d = eh.dispatcher
    do {
        h.consumer = try KafkaConsumer(engine: eh.engine, properties: props, onRecord: { [weak h] r in
            d.deliver {
                guard let h, h.alive else { return }
                deliverRecord(r, cb, opaque)
            }
        })
    } catch { return refuse("\(error)", code(for: error)) }
    let p = Unmanaged.passRetained(h).toOpaque()
    Registry.add(p)
    pthread_mutex_lock(&eh.childMutex)
    eh.consumers[ObjectIdentifier(h)] = h
    pthread_mutex_unlock(&eh.childMutex)
    return OpaquePointer(p)
}

func deliverRecord(_ r: KafkaRecord, _ cb: sot_record_cb, _ opaque: UnsafeMutableRawPointer?) {
    r.topic.withCString { topic in
        withHeaders(r.headers) { hp, n in
            let k = r.key ?? []
            let v = r.value ?? []
            k.withUnsafeBytes { kb in
                v.withUnsafeBytes { vb in
                    var rec = sot_record(size: MemoryLayout<sot_record>.size, topic: topic, partition: r.partition, offset: r.offset,
                                         timestamp: r.timestamp,
                                         key: r.key == nil ? nil : (kb.baseAddress ?? UnsafeRawPointer(bitPattern: 1)), key_len: k.count,
                                         value: r.value == nil ? nil : (vb.baseAddress ?? UnsafeRawPointer(bitPattern: 1)), value_len: v.count,
                                         headers: hp, n_headers: n)
                    cb(opaque, &rec)
                }
            }
        }
    }
}

func consumerCall(_ c: OpaquePointer?, _ body: (KafkaConsumer) throws -> Void) -> Int32 {
    guard let h = consumerHandle(c) else { return fail(-10, "not a live consumer handle") }
    do { try body(h.consumer) } catch { return fail(code(for: error), "\(error)") }
    return 0
}

@_cdecl("sot_consumer_subscribe")
public func sot_consumer_subscribe(_ c: OpaquePointer?, _ topics: UnsafePointer<UnsafePointer<CChar>?>?, _ n: Int) -> Int32 {
    guard let topics, n > 0 else { return fail(-1, "topics must not be NULL or empty") }
    var list: [String] = []
    for i in 0..<n {
        guard let t = topics[i] else { return fail(-1, "topic \(i) is NULL") }
        list.append(String(cString: t))
    }
    return consumerCall(c) { try $0.subscribe(list) }
}

@_cdecl("sot_consumer_assign")
public func sot_consumer_assign(_ c: OpaquePointer?, _ topic: UnsafePointer<CChar>?, _ partition: Int32, _ offset: Int64) -> Int32 {
    guard let topic, partition >= 0 else { return fail(-1, "topic must not be NULL and partition >= 0") }
    return consumerCall(c) { try $0.assign(topic: String(cString: topic), partition: partition, offset: offset) }
}

@_cdecl("sot_consumer_seek")
public func sot_consumer_seek(_ c: OpaquePointer?, _ topic: UnsafePointer<CChar>?, _ partition: Int32, _ offset: Int64) -> Int32 {
    guard let topic, partition >= 0 else { return fail(-1, "topic must not be NULL and partition >= 0") }
    if let h = consumerHandle(c), h.engine.engine.isLoopThread { return fail(-9, "seek waits for the loop; call it outside the engine's callbacks") }
    return consumerCall(c) { try $0.seek(topic: String(cString: topic), partition: partition, offset: offset) }
}

@_cdecl("sot_consumer_seek_time")
public func sot_consumer_seek_time(_ c: OpaquePointer?, _ topic: UnsafePointer<CChar>?, _ ts: Int64) -> Int32 {
    guard let topic else { return fail(-1, "topic must not be NULL") }
    if let h = consumerHandle(c), h.engine.engine.isLoopThread { return fail(-9, "seek waits for Kafka; call it outside the engine's callbacks") }
    return consumerCall(c) { try $0.seek(topic: String(cString: topic), timestampMs: ts) }
}

@_cdecl("sot_consumer_commit")
public func sot_consumer_commit(_ c: OpaquePointer?) -> Int32 {
    if let h = consumerHandle(c), h.engine.engine.isLoopThread { return fail(-9, "commit waits for Kafka; call it outside the engine's callbacks") }
    return consumerCall(c) { try $0.commit() }
}

@_cdecl("sot_consumer_destroy")
public func sot_consumer_destroy(_ c: OpaquePointer?) {
    guard let c else { return }
    guard let h = consumerHandle(c) else {
        setLastError("sot_consumer_destroy: not a live consumer handle (destroyed twice?)", status: -10)
        return
    }
    if h.engine.engine.isLoopThread && !h.engine.dispatcher.pollMode {
        setLastError("sot_consumer_destroy cannot run inside the engine's callbacks", status: -9)
        return
    }
    guard Registry.remove(UnsafeRawPointer(c)) else { return }
    h.alive = false
    loopBarrier(h.engine)
    h.consumer.close()
    pthread_mutex_lock(&h.engine.childMutex)
    h.engine.consumers.removeValue(forKey: ObjectIdentifier(h))
    pthread_mutex_unlock(&h.engine.childMutex)
    h.release()
}
