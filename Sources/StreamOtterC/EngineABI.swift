import CStreamOtterHeader
import Glibc
import StreamOtter
import StreamOtterCore

// MARK: engine

func engineHandle(_ p: OpaquePointer?) -> EngineHandle? { lookup(p, EngineHandle.self) }

@_cdecl("sot_engine_new")
public func sot_engine_new(_ conf: OpaquePointer?, _ errstr: UnsafeMutablePointer<CChar>?, _ errsize: Int) -> OpaquePointer? {
    var config = EngineConfig()
    if let conf {
        let h = Unmanaged<ConfHandle>.fromOpaque(UnsafeRawPointer(conf)).takeUnretainedValue()
        do {
            for (k, v) in h.entries where !ClientConfig.isClientKey(k) { try config.set(k, v) }
        } catch {
            copyOut("\(error)", errstr, errsize)
            setLastError("\(error)", status: -2)
            return nil
        }
    }
    let h = EngineHandle(Engine(config: config), pollMode: config.callbackMode == "poll")
    let p = Unmanaged.passRetained(h).toOpaque()
    Registry.add(p)
    return OpaquePointer(p)
}

@_cdecl("sot_engine_start")
public func sot_engine_start(_ e: OpaquePointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard !h.started else { return fail(-3, "the engine was already started") }
    if let cbs = h.serverCallbacks {
        let opaque = h.serverOpaque
        let d = h.dispatcher
        var hooks = ServerHooks()
        if let cb = cbs.on_connect {
            hooks.onConnect = { id, path, headers in
                d.deliver {
                    withHeaders(headers.map { ($0.0, Array($0.1.utf8)) }) { hp, n in
                        path.withCString { cb(opaque, id, $0, hp, n) }
                    }
                }
            }
        }
        if let cb = cbs.on_message {
            hooks.onMessage = { id, text, data in
                d.deliver { data.withUnsafeBytes { cb(opaque, id, text ? 1 : 0, $0.baseAddress, $0.count) } }
            }
        }
        if let cb = cbs.on_close {
            hooks.onClose = { id, code, reason in
                d.deliver { reason.withCString { cb(opaque, id, Int32(code), $0) } }
            }
        }
        h.engine.serverHooks = hooks
    }
    do {
        try h.engine.start()
    } catch {
        return fail(code(for: error), "\(error)")
    }
    h.started = true
    h.bootstrap = strdup(h.engine.bootstrapServers)
    return 0
}

@_cdecl("sot_engine_stop")
public func sot_engine_stop(_ e: OpaquePointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    if currentCallbackEngine() === h { return fail(-9, "sot_engine_stop cannot be called from inside a callback of the same engine") }
    if h.stopped { return 0 }
    guard h.started else { return fail(-3, "the engine is not running") }
    closeChildren(h)
    h.stopAndWait()
    return 0
}

func closeChildren(_ h: EngineHandle) {
    pthread_mutex_lock(&h.childMutex)
    let clients = Array(h.clients.values)
    let consumers = Array(h.consumers.values)
    pthread_mutex_unlock(&h.childMutex)
    for c in consumers { c.consumer.close() }
    for c in clients { c.client.close(code: 1001, reason: "engine stopping") }
}

@_cdecl("sot_engine_port")
public func sot_engine_port(_ e: OpaquePointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard h.started else { return fail(-3, "the engine is not started") }
    return Int32(h.engine.port)
}

@_cdecl("sot_engine_bootstrap_servers")
public func sot_engine_bootstrap_servers(_ e: OpaquePointer?) -> UnsafePointer<CChar>? {
    guard let h = engineHandle(e) else { return nil }
    return h.bootstrap.map { UnsafePointer($0) }
}

@_cdecl("sot_engine_destroy")
public func sot_engine_destroy(_ e: OpaquePointer?) {
    guard let e else { return }
    guard let h = engineHandle(e) else {
        setLastError("sot_engine_destroy: not a live engine handle (destroyed twice?)", status: -10)
        return
    }
    if currentCallbackEngine() === h {
        h.destroyRequested = true
        return
    }
    guard Registry.remove(UnsafeRawPointer(e)) else { return }
    closeChildren(h)
    h.stopAndWait()
    h.destroyed = true
    h.dispatcher.discard()
    pthread_mutex_lock(&h.childMutex)
    for c in h.clients.values { _ = Registry.remove(c.pointer); c.release() }
    for c in h.consumers.values { _ = Registry.remove(c.pointer); c.release() }
    h.clients.removeAll()
    h.consumers.removeAll()
    pthread_mutex_unlock(&h.childMutex)
    Unmanaged<EngineHandle>.fromOpaque(UnsafeRawPointer(e)).release()
}

@_cdecl("sot_engine_fd")
public func sot_engine_fd(_ e: OpaquePointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard h.dispatcher.pollMode else { return fail(-3, "the engine delivers callbacks on its thread (callbacks=thread)") }
    return h.dispatcher.fds[0]
}

@_cdecl("sot_engine_poll")
public func sot_engine_poll(_ e: OpaquePointer?, _ max: Int32) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard h.dispatcher.pollMode else { return fail(-3, "the engine delivers callbacks on its thread (callbacks=thread)") }
    // At most Int32.max callbacks per call, so the count always fits the return type.
    return Int32(h.dispatcher.poll(max: max > 0 ? Int(max) : Int(Int32.max)))
}

let runtimeInfoString = strdup(runtimeLibraryInfo())!

@_cdecl("sot_runtime_info")
public func sot_runtime_info() -> UnsafePointer<CChar> { UnsafePointer(runtimeInfoString) }

// MARK: server

@_cdecl("sot_engine_set_server_callbacks")
public func sot_engine_set_server_callbacks(_ e: OpaquePointer?, _ cbs: UnsafePointer<sot_server_callbacks>?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard let cbs, cbs.pointee.size >= MemoryLayout<sot_server_callbacks>.size else {
        return fail(-1, "callbacks must not be NULL and size must be sizeof(sot_server_callbacks)")
    }
    guard !h.started else { return fail(-3, "set the server callbacks before sot_engine_start") }
    h.serverCallbacks = cbs.pointee
    h.serverOpaque = opaque
    return 0
}

@_cdecl("sot_conn_send")
public func sot_conn_send(_ e: OpaquePointer?, _ conn: UInt64, _ data: UnsafeRawPointer?, _ len: Int, _ isText: Int32) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard data != nil || len == 0 else { return fail(-1, "data must not be NULL") }
    guard validLength(len) else { return fail(-1, "len is too large") }
    return h.engine.send(connection: conn, bytes(data, len), text: isText != 0) ? 0 : fail(-8, "connection \(conn) is unknown or closed")
}

@_cdecl("sot_conn_close")
public func sot_conn_close(_ e: OpaquePointer?, _ conn: UInt64, _ code: Int32, _ reason: UnsafePointer<CChar>?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard code >= 1000, code <= 4999, WSCloseCode.isValidOnWire(UInt16(code)) else { return fail(-1, "close code \(code) may not be sent") }
    let r = reason.map { String(cString: $0) } ?? ""
    return h.engine.closeConnection(conn, code: UInt16(code), reason: r) ? 0 : fail(-8, "connection \(conn) is unknown or closed")
}

@_cdecl("sot_engine_publish")
public func sot_engine_publish(_ e: OpaquePointer?, _ channel: UnsafePointer<CChar>?, _ partition: Int32,
                               _ key: UnsafeRawPointer?, _ keyLen: Int, _ value: UnsafeRawPointer?, _ valueLen: Int,
                               _ headers: UnsafePointer<sot_header>?, _ nHeaders: Int,
                               _ cb: sot_delivery_cb?, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let h = engineHandle(e) else { return fail(-10, "not a live engine handle") }
    guard let channel else { return fail(-1, "channel must not be NULL") }
    guard value != nil || valueLen == 0, key != nil || keyLen == 0 else { return fail(-1, "NULL data with a length") }
    guard validLength(keyLen), validLength(valueLen) else { return fail(-1, "key_len or value_len is too large") }
    let hdrs: [(String, [UInt8])]
    do { hdrs = try readHeaders(headers, nHeaders) } catch { return fail(-1, error.message) }
    let topic = String(cString: channel)
    let d = h.dispatcher
    do {
        try h.engine.publish(topic: topic, partition: partition, key: key == nil ? nil : bytes(key, keyLen), headers: hdrs,
                             value: bytes(value, valueLen)) { result in
            guard let cb else { return }
            d.deliver {
                switch result {
                case .success(let a): topic.withCString { cb(opaque, 0, nil, $0, a.partition, a.offset) }
                case .failure(let err):
                    err.message.withCString { m in topic.withCString { cb(opaque, -4, m, $0, -1, -1) } }
                }
            }
        }
    } catch {
        return fail(code(for: error), "\(error)")
    }
    return 0
}
