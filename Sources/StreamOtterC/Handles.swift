import CShim
import CStreamOtterHeader
import Glibc
import StreamOtter
import StreamOtterCore

// MARK: handle registry

/// Live handles: a destroyed (or never created) pointer is refused with
/// SOT_ERR_BAD_HANDLE instead of being dereferenced.
enum Registry {
    nonisolated(unsafe) static var mutex: pthread_mutex_t = {
        var m = pthread_mutex_t()
        pthread_mutex_init(&m, nil)
        return m
    }()
    nonisolated(unsafe) static var live = Set<UnsafeRawPointer>()

    static func add(_ p: UnsafeRawPointer) {
        pthread_mutex_lock(&mutex); live.insert(p); pthread_mutex_unlock(&mutex)
    }
    static func remove(_ p: UnsafeRawPointer) -> Bool {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return live.remove(p) != nil
    }
    static func contains(_ p: UnsafeRawPointer) -> Bool {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return live.contains(p)
    }
}

func lookup<T: AnyObject>(_ p: OpaquePointer?, _: T.Type) -> T? {
    guard let p, Registry.contains(UnsafeRawPointer(p)) else { return nil }
    return Unmanaged<T>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

// MARK: callback dispatch

/// The engine whose callback runs on this thread right now (for the in-callback rules).
let inCallbackKey: pthread_key_t = {
    var k = pthread_key_t()
    pthread_key_create(&k, nil)
    return k
}()

func currentCallbackEngine() -> EngineHandle? {
    guard let p = pthread_getspecific(inCallbackKey) else { return nil }
    return Unmanaged<EngineHandle>.fromOpaque(p).takeUnretainedValue()
}

/// Delivers callbacks in "thread" mode (now, on the loop thread) or "poll" mode (queued
/// for sot_engine_poll on the host's thread). Everything a queued callback needs is copied
/// into its closure.
final class Dispatcher {
    let pollMode: Bool
    private var mutex = pthread_mutex_t()
    private var queue: [() -> Void] = []
    private var head = 0
    private(set) var fds: [Int32] = [-1, -1]
    private var signalled = false
    unowned(unsafe) var owner: EngineHandle!

    init(pollMode: Bool) {
        self.pollMode = pollMode
        pthread_mutex_init(&mutex, nil)
        if pollMode { _ = fds.withUnsafeMutableBufferPointer { cshim_pipe($0.baseAddress) } }
    }

    deinit {
        if fds[0] >= 0 { Glibc.close(fds[0]); Glibc.close(fds[1]) }
        pthread_mutex_destroy(&mutex)
    }

    /// Called on the loop thread.
    func deliver(_ f: @escaping () -> Void) {
        if !pollMode {
            runMarked(f)
            return
        }
        pthread_mutex_lock(&mutex)
        queue.append(f)
        let wake = !signalled
        signalled = true
        pthread_mutex_unlock(&mutex)
        if wake {
            var one: UInt8 = 1
            _ = write(fds[1], &one, 1)
        }
    }

    func runMarked(_ f: () -> Void) {
        let prev = pthread_getspecific(inCallbackKey)
        pthread_setspecific(inCallbackKey, Unmanaged.passUnretained(owner).toOpaque())
        f()
        pthread_setspecific(inCallbackKey, prev)
        owner.afterCallback()
    }

    /// Runs up to `max` queued callbacks on the calling thread.
    func poll(max: Int) -> Int {
        cshim_drain_fd(fds[0])
        pthread_mutex_lock(&mutex)
        let available = queue.count - head
        let n = max <= 0 ? available : min(max, available)
        let batch = Array(queue[head..<(head + n)])
        head += n
        if head == queue.count {
            queue.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 4096 {
            queue.removeFirst(head)
            head = 0
        }
        let more = head < queue.count
        signalled = more
        pthread_mutex_unlock(&mutex)
        if more {
            var one: UInt8 = 1
            _ = write(fds[1], &one, 1)
        }
        for f in batch {
            runMarked(f)
            if owner.destroyed { break }
        }
        return batch.count
    }

    /// Drops queued callbacks (after destroy no callback runs).
    func discard() {
        pthread_mutex_lock(&mutex)
        queue.removeAll()
        head = 0
        pthread_mutex_unlock(&mutex)
    }
}

// MARK: engine handle

final class EngineHandle {
    let engine: Engine
    let dispatcher: Dispatcher
    var bootstrap: UnsafeMutablePointer<CChar>?
    var started = false
    var stopped = false
    var destroyed = false
    var destroyRequested = false
    var serverCallbacks: sot_server_callbacks?
    let authAnswers = AuthAnswers()
    var serverOpaque: UnsafeMutableRawPointer?
    var clients: [ObjectIdentifier: ClientHandle] = [:]
    var consumers: [ObjectIdentifier: ConsumerHandle] = [:]
    var childMutex = pthread_mutex_t()

    init(_ e: Engine, pollMode: Bool) {
        engine = e
        dispatcher = Dispatcher(pollMode: pollMode)
        pthread_mutex_init(&childMutex, nil)
        dispatcher.owner = self
    }

    deinit {
        free(bootstrap)
        pthread_mutex_destroy(&childMutex)
    }

    var pointer: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    /// A destroy requested from inside a callback happens once the callback returned.
    func afterCallback() {
        guard destroyRequested, !destroyed, currentCallbackEngine() == nil else { return }
        destroyRequested = false
        let me = OpaquePointer(pointer)
        if engine.isLoopThread {
            // The loop thread cannot wait for itself: finish on a helper thread.
            var t = pthread_t()
            let box = Unmanaged.passRetained(BoxedPointer(me)).toOpaque()
            pthread_create(&t, nil, { arg in
                let b = Unmanaged<BoxedPointer>.fromOpaque(arg!).takeRetainedValue()
                sot_engine_destroy(b.p)
                return nil
            }, box)
            pthread_detach(t)
        } else {
            sot_engine_destroy(me)
        }
    }

    func stopAndWait() {
        guard started, !stopped else { return }
        stopped = true
        engine.stop()
        engine.wait()
    }
}

final class BoxedPointer {
    let p: OpaquePointer
    init(_ p: OpaquePointer) { self.p = p }
}

// MARK: C string helpers

func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let s else { return body(nil) }
    return s.withCString { body($0) }
}

func withHeaders<R>(_ headers: [(String, [UInt8]?)], _ body: (UnsafePointer<sot_header>?, Int) -> R) -> R {
    if headers.isEmpty { return body(nil, 0) }
    // Keep NUL-terminated copies alive for the duration of the call.
    var names: [UnsafeMutablePointer<CChar>] = []
    var values: [UnsafeMutablePointer<CChar>?] = []
    var arr: [sot_header] = []
    for (n, v) in headers {
        let np = strdup(n)!
        names.append(np)
        var vp: UnsafeMutablePointer<CChar>? = nil
        if let v {
            vp = UnsafeMutablePointer<CChar>.allocate(capacity: v.count + 1)
            v.withUnsafeBytes { b in if let base = b.baseAddress { UnsafeMutableRawPointer(vp!).copyMemory(from: base, byteCount: v.count) } }
            vp![v.count] = 0
        }
        values.append(vp)
        arr.append(sot_header(name: np, value: vp, value_len: v?.count ?? 0))
    }
    defer {
        for n in names { free(n) }
        for v in values { v?.deallocate() }
    }
    return arr.withUnsafeBufferPointer { body($0.baseAddress, $0.count) }
}

/// A host argument the C ABI refuses (SOT_ERR_INVALID_ARG with this message).
struct ArgumentError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// Copies the host's headers. A size_t count or length above SSIZE_MAX arrives here as a
/// negative Int: refused, as is a NULL array or name (never a trap).
func readHeaders(_ h: UnsafePointer<sot_header>?, _ n: Int) throws(ArgumentError) -> [(String, [UInt8])] {
    guard n >= 0 else { throw ArgumentError("n_headers is too large") }
    guard n > 0 else { return [] }
    guard let h else { throw ArgumentError("headers must not be NULL when n_headers > 0") }
    var out: [(String, [UInt8])] = []
    for i in 0..<n {
        guard let name = h[i].name else { throw ArgumentError("headers[\(i)].name must not be NULL") }
        guard h[i].value_len >= 0 else { throw ArgumentError("headers[\(i)].value_len is too large") }
        let v: [UInt8] = h[i].value.map { Array(UnsafeRawBufferPointer(start: $0, count: h[i].value_len)) } ?? []
        out.append((String(cString: name), v))
    }
    return out
}

/// Copies `n` bytes at `p` ([] for NULL or 0). Callers check `validLength` first: a
/// negative `n` (a size_t above SSIZE_MAX) is refused, not read as empty.
func bytes(_ p: UnsafeRawPointer?, _ n: Int) -> [UInt8] {
    guard let p, n > 0 else { return [] }
    return Array(UnsafeRawBufferPointer(start: p, count: n))
}

/// True when a size_t length from the host can describe a buffer (at most SSIZE_MAX).
func validLength(_ n: Int) -> Bool { n >= 0 }
