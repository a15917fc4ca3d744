import CStreamOtterHeader
import Glibc
import StreamOtter
import StreamOtterCore

/// Makes sure no callback of a destroyed object is running or will run: in thread mode,
/// waits until the loop has passed this point (unless called on the loop thread).
func loopBarrier(_ eh: EngineHandle) {
    guard eh.started, !eh.stopped, !eh.dispatcher.pollMode, !eh.engine.isLoopThread else { return }
    let s = OneShotSignal()
    eh.engine.runOnLoop { s.signal() }
    _ = s.wait(timeoutMs: 5000)
}

final class ClientHandle {
    let client: StreamClient
    unowned let engine: EngineHandle
    let cbs: sot_client_callbacks?
    let opaque: UnsafeMutableRawPointer?
    var alive = true
    var started = false

    init(client: StreamClient, engine: EngineHandle, cbs: sot_client_callbacks?, opaque: UnsafeMutableRawPointer?) {
        self.client = client
        self.engine = engine
        self.cbs = cbs
        self.opaque = opaque
    }

    var pointer: UnsafeRawPointer { UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque()) }
    func release() { Unmanaged.passUnretained(self).release() }

    /// Delivers a callback unless the client was destroyed by then.
    func emit(_ f: @escaping () -> Void) {
        engine.dispatcher.deliver { [weak self] in
            guard let self, self.alive else { return }
            f()
        }
    }

    func wire() {
        let opaque = self.opaque
        if let cb = cbs?.on_open {
            client.onOpen = { [weak self] proto in self?.emit { withOptionalCString(proto) { cb(opaque, $0) } } }
        }
        if let cb = cbs?.on_message {
            client.onMessage = { [weak self] text, data in
                self?.emit { data.withUnsafeBytes { cb(opaque, text ? 1 : 0, $0.baseAddress, $0.count) } }
            }
        }
        if let cb = cbs?.on_close {
            client.onClose = { [weak self] code, reason in self?.emit { reason.withCString { cb(opaque, Int32(code), $0) } } }
        }
        if let cb = cbs?.on_error {
            client.onError = { [weak self] e in self?.emit { e.code.withCString { c in e.message.withCString { cb(opaque, c, $0) } } } }
        }
    }
}

func clientHandle(_ p: OpaquePointer?) -> ClientHandle? { lookup(p, ClientHandle.self) }

@_cdecl("sot_client_new")
public func sot_client_new(_ e: OpaquePointer?, _ url: UnsafePointer<CChar>?, _ conf: OpaquePointer?,
                           _ cbs: UnsafePointer<sot_client_callbacks>?, _ opaque: UnsafeMutableRawPointer?,
                           _ errstr: UnsafeMutablePointer<CChar>?, _ errsize: Int) -> OpaquePointer? {
    func refuse(_ code: Int32, _ msg: String) -> OpaquePointer? {
        copyOut(msg, errstr, errsize)
        setLastError(msg, status: code)
        return nil
    }
    guard let eh = engineHandle(e) else { return refuse(-10, "not a live engine handle") }
    guard let url else { return refuse(-1, "url must not be NULL") }
    if let cbs, cbs.pointee.size < MemoryLayout<sot_client_callbacks>.size {
        return refuse(-1, "callbacks.size must be sizeof(sot_client_callbacks)")
    }
    var config = ClientConfig()
    if let conf {
        let ch = Unmanaged<ConfHandle>.fromOpaque(UnsafeRawPointer(conf)).takeUnretainedValue()
        do {
            for (k, v) in ch.entries where ClientConfig.isClientKey(k) { try config.set(k, v) }
        } catch { return refuse(-2, "\(error)") }
    }
    let client: StreamClient
    do {
        client = try StreamClient(engine: eh.engine, url: String(cString: url), config: config)
    } catch { return refuse(-2, "\(error)") }
    let h = ClientHandle(client: client, engine: eh, cbs: cbs?.pointee, opaque: opaque)
    h.wire()
    let p = Unmanaged.passRetained(h).toOpaque()
    Registry.add(p)
    pthread_mutex_lock(&eh.childMutex)
    eh.clients[ObjectIdentifier(h)] = h
    pthread_mutex_unlock(&eh.childMutex)
    return OpaquePointer(p)
}

@_cdecl("sot_client_start")
public func sot_client_start(_ c: OpaquePointer?) -> Int32 {
    guard let h = clientHandle(c) else { return fail(-10, "not a live client handle") }
    guard h.engine.started, !h.engine.stopped else { return fail(-3, "the engine is not running") }
    guard !h.started else { return fail(-3, "the client was already started") }
    h.started = true
    h.client.start()
    return 0
}

@_cdecl("sot_client_send")
public func sot_client_send(_ c: OpaquePointer?, _ data: UnsafeRawPointer?, _ len: Int, _ isText: Int32) -> Int32 {
    guard let h = clientHandle(c) else { return fail(-10, "not a live client handle") }
    guard data != nil || len == 0 else { return fail(-1, "data must not be NULL") }
    guard validLength(len) else { return fail(-1, "len is too large") }
    guard h.client.health.state != .closed || !h.started else { return fail(-3, "the client is closed") }
    h.client.send(bytes(data, len), text: isText != 0)
    return 0
}

@_cdecl("sot_client_publish")
public func sot_client_publish(_ c: OpaquePointer?, _ channel: UnsafePointer<CChar>?, _ key: UnsafePointer<CChar>?,
                               _ json: UnsafePointer<CChar>?, _ cb: sot_ack_cb?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let h = clientHandle(c) else { return fail(-10, "not a live client handle") }
    guard let channel, let json else { return fail(-1, "channel and json must not be NULL") }
    let data = Array(UnsafeRawBufferPointer(start: json, count: strlen(json)))
    guard data.withUnsafeBytes({ JSON.isValid($0) }) else { return fail(-1, "json is not one valid JSON value") }
    h.client.publish(channel: String(cString: channel), key: key.map { String(cString: $0) }, data: data) { [weak h] result in
        guard let cb, let h else { return }
        h.emit {
            switch result {
            case .success(let a): cb(opaque, 0, nil, nil, a.partition, a.offset)
            case .failure(let e):
                e.code.withCString { code in e.message.withCString { cb(opaque, -11, code, $0, -1, -1) } }
            }
        }
    }
    return 0
}

@_cdecl("sot_client_subscribe")
public func sot_client_subscribe(_ c: OpaquePointer?, _ channel: UnsafePointer<CChar>?, _ fromJSON: UnsafePointer<CChar>?,
                                 _ onMessage: sot_message_cb?, _ onResult: sot_result_cb?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let h = clientHandle(c) else { return fail(-10, "not a live client handle") }
    guard let channel else { return fail(-1, "channel must not be NULL") }
    var from = StartPosition.latest
    if let fromJSON {
        do { from = try StartPosition.parse(json: String(cString: fromJSON)) } catch {
            return fail(-1, "from_json: \(error)")
        }
    }
    h.client.subscribe(channel: String(cString: channel), from: from, handler: { [weak h] m in
        guard let onMessage, let h else { return }
        h.emit { deliverMessage(m, onMessage, opaque) }
    }) { [weak h] result in
        guard let onResult, let h else { return }
        h.emit { deliverResult(result, onResult, opaque) }
    }
    return 0
}

func deliverResult(_ r: Result<Void, ClientError>, _ cb: sot_result_cb, _ opaque: UnsafeMutableRawPointer?) {
    switch r {
    case .success: cb(opaque, 0, nil, nil)
    case .failure(let e): e.code.withCString { c in e.message.withCString { cb(opaque, -11, c, $0) } }
    }
}

func deliverMessage(_ m: StreamMessage, _ cb: sot_message_cb, _ opaque: UnsafeMutableRawPointer?) {
    var data = m.data ?? []
    data.append(0)
    var frame = m.frame
    frame.append(0)
    m.channel.withCString { ch in
        withOptionalCString(m.key) { key in
            data.withUnsafeBufferPointer { dp in
                frame.withUnsafeBufferPointer { fp in
                    dp.baseAddress!.withMemoryRebound(to: CChar.self, capacity: dp.count) { d in
                        fp.baseAddress!.withMemoryRebound(to: CChar.self, capacity: fp.count) { f in
                            var msg = sot_message(size: MemoryLayout<sot_message>.size, channel: ch, partition: m.partition,
                                                  offset: m.offset, timestamp: m.timestamp, key: key,
                                                  data: m.data == nil ? nil : d, data_len: m.data?.count ?? 0,
                                                  frame: f, frame_len: m.frame.count)
                            cb(opaque, &msg)
                        }
                    }
                }
            }
        }
    }
}

@_cdecl("sot_client_unsubscribe")
public func sot_client_unsubscribe(_ c: OpaquePointer?, _ channel: UnsafePointer<CChar>?, _ cb: sot_result_cb?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let h = clientHandle(c) else { return fail(-10, "not a live client handle") }
    guard let channel else { return fail(-1, "channel must not be NULL") }
    h.client.unsubscribe(channel: String(cString: channel)) { [weak h] r in
        guard let cb, let h else { return }
        h.emit { deliverResult(r, cb, opaque) }
    }
    return 0
}

@_cdecl("sot_client_get_health")
public func sot_client_get_health(_ c: OpaquePointer?, _ out: UnsafeMutablePointer<sot_client_health>?) -> Int32 {
    guard let h = clientHandle(c) else { return fail(-10, "not a live client handle") }
    guard let out, out.pointee.size >= MemoryLayout<Int>.size else { return fail(-1, "out must not be NULL and out->size must be set") }
    let hl = h.client.health
    var full = sot_client_health(size: MemoryLayout<sot_client_health>.size, state: Int32(hl.state.rawValue), score: hl.score,
                                 rtt_ms: hl.rttMs, missed_pongs: hl.missedPongs, consecutive_failures: hl.consecutiveFailures,
                                 reconnects: hl.reconnects)
    let n = min(out.pointee.size, MemoryLayout<sot_client_health>.size)
    let callerSize = out.pointee.size
    withUnsafeBytes(of: &full) { UnsafeMutableRawPointer(out).copyMemory(from: $0.baseAddress!, byteCount: n) }
    out.pointee.size = callerSize
    return 0
}

@_cdecl("sot_client_close")
public func sot_client_close(_ c: OpaquePointer?, _ code: Int32, _ reason: UnsafePointer<CChar>?) -> Int32 {
    guard let h = clientHandle(c) else { return fail(-10, "not a live client handle") }
    let cc = code == 0 ? 1000 : code
    guard cc >= 1000, cc <= 4999, WSCloseCode.isValidOnWire(UInt16(cc)) else { return fail(-1, "close code \(code) may not be sent") }
    h.client.close(code: UInt16(cc), reason: reason.map { String(cString: $0) } ?? "")
    return 0
}

@_cdecl("sot_client_destroy")
public func sot_client_destroy(_ c: OpaquePointer?) {
    guard let c else { return }
    guard let h = clientHandle(c), Registry.remove(UnsafeRawPointer(c)) else {
        setLastError("sot_client_destroy: not a live client handle (destroyed twice?)", status: -10)
        return
    }
    h.client.close(code: 1000, reason: "")
    loopBarrier(h.engine)
    h.alive = false
    loopBarrier(h.engine)
    pthread_mutex_lock(&h.engine.childMutex)
    h.engine.clients.removeValue(forKey: ObjectIdentifier(h))
    pthread_mutex_unlock(&h.engine.childMutex)
    h.release()
}
