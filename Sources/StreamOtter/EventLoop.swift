import CShim
import CUV
import Glibc

/// Something with bytes queued during this loop turn; flushed once at the end of the turn.
protocol TurnFlushable: AnyObject {
    func flushTurn()
}

/// The engine's libuv loop, its thread, and the cross-thread command queue.
///
/// Threading: `post` may be called from any thread; everything else only on the loop thread.
final class EventLoop {
    let uv: UnsafeMutablePointer<uv_loop_t>
    private let asyncHandle: UnsafeMutablePointer<uv_async_t>
    private let idleHandle: UnsafeMutablePointer<uv_idle_t>
    private let checkHandle: UnsafeMutablePointer<uv_check_t>
    private var mutex = pthread_mutex_t()
    private var commands: [() -> Void] = []
    private var dirty: [TurnFlushable] = []
    private var idleActive = false
    private(set) var threadID: pthread_t?
    /// One read buffer for every socket on this loop.
    let readPool = ReadPool()
    private var closed = false

    init() {
        uv = .allocate(capacity: 1)
        uv_loop_init(uv)
        uv.pointee.data = Unmanaged.passUnretained(readPool).toOpaque()
        asyncHandle = .allocate(capacity: 1)
        idleHandle = .allocate(capacity: 1)
        checkHandle = .allocate(capacity: 1)
        pthread_mutex_init(&mutex, nil)
        let me = Unmanaged.passUnretained(self).toOpaque()
        uv_async_init(uv, asyncHandle) { h in
            guard let h, let data = h.pointee.data else { return }
            Unmanaged<EventLoop>.fromOpaque(data).takeUnretainedValue().runCommands()
        }
        asyncHandle.pointee.data = me
        uv_idle_init(uv, idleHandle)
        idleHandle.pointee.data = me
        uv_check_init(uv, checkHandle)
        checkHandle.pointee.data = me
        uv_check_start(checkHandle) { h in
            guard let h, let data = h.pointee.data else { return }
            Unmanaged<EventLoop>.fromOpaque(data).takeUnretainedValue().flushDirty()
        }
        // The check handle must not keep the loop alive on its own.
        uv_unref(rawHandle(checkHandle))
    }

    deinit {
        pthread_mutex_destroy(&mutex)
    }

    var isLoopThread: Bool {
        guard let t = threadID else { return true }
        return pthread_equal(t, pthread_self()) != 0
    }

    /// Runs `cmd` on the loop thread. Callable from any thread; wakes the loop.
    func post(_ cmd: @escaping () -> Void) {
        pthread_mutex_lock(&mutex)
        let isClosed = closed
        if !isClosed { commands.append(cmd) }
        pthread_mutex_unlock(&mutex)
        if !isClosed { uv_async_send(asyncHandle) }
    }

    private func runCommands() {
        pthread_mutex_lock(&mutex)
        let batch = commands
        commands.removeAll(keepingCapacity: true)
        pthread_mutex_unlock(&mutex)
        for c in batch { c() }
    }

    /// Spare write buffers of `TCPStream.tailSize` bytes (loop thread only). A socket
    /// takes one for the small frames of a turn and hands it back when the kernel took
    /// them at once, so the steady state allocates none; at most `tailPoolMax` are kept
    /// (1 MiB), and an idle socket holds none.
    private var tailPool: [OutBuffer] = []
    static let tailPoolMax = 256

    func takeTailBuffer() -> OutBuffer {
        tailPool.popLast() ?? OutBuffer(capacity: TCPStream.tailSize)
    }

    func recycleTailBuffer(_ b: OutBuffer) {
        if tailPool.count < EventLoop.tailPoolMax && b.count == TCPStream.tailSize { tailPool.append(b) }
    }

    /// Marks `f` to be flushed at the end of this loop turn (loop thread only).
    func markDirty(_ f: TurnFlushable) {
        dirty.append(f)
        if !idleActive {
            idleActive = true
            // An active idle handle makes the poll phase non-blocking, so the check
            // handle runs promptly even when the bytes were queued from a timer.
            uv_idle_start(idleHandle) { _ in }
        }
    }

    private func flushDirty() {
        while !dirty.isEmpty {
            let batch = dirty
            dirty.removeAll(keepingCapacity: true)
            for f in batch { f.flushTurn() }
        }
        if idleActive {
            idleActive = false
            uv_idle_stop(idleHandle)
        }
    }

    /// Runs the loop on the current thread until it is stopped.
    func run() {
        threadID = pthread_self()
        uv_run(uv, UV_RUN_DEFAULT)
    }

    func stop() { uv_stop(uv) }

    /// Closes the loop's own handles and the loop after every other handle was closed.
    func close() {
        pthread_mutex_lock(&mutex)
        closed = true
        let leftover = commands
        commands.removeAll()
        pthread_mutex_unlock(&mutex)
        for c in leftover { c() }
        uv_close(rawHandle(asyncHandle)) { h in h?.deallocate() }
        uv_close(rawHandle(idleHandle)) { h in h?.deallocate() }
        uv_close(rawHandle(checkHandle)) { h in h?.deallocate() }
        // Anything still open (a socket whose peer never closed) is closed without its
        // owner's callback; the small allocation is left to process exit.
        uv_walk(uv, { h, _ in
            guard let h, uv_is_closing(h) == 0 else { return }
            h.pointee.data = nil
            uv_close(h, nil)
        }, nil)
        // Let close callbacks (and any other pending closes) run.
        uv_run(uv, UV_RUN_DEFAULT)
        uv_loop_close(uv)
        uv.deallocate()
    }

    /// Runs `work` on libuv's thread pool, then `done` with its result on the loop thread.
    func runBlocking<T>(_ work: @escaping () -> T, then done: @escaping (T) -> Void) {
        var result: T?
        let box = WorkBox { result = work() }
        box.finish = { done(result!) }
        let req = UnsafeMutablePointer<uv_work_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passRetained(box).toOpaque()
        let rc = uv_queue_work(uv, req, { r in
            guard let r, let d = r.pointee.data else { return }
            Unmanaged<WorkBox>.fromOpaque(d).takeUnretainedValue().work()
        }, { r, _ in
            guard let r, let d = r.pointee.data else { return }
            let b = Unmanaged<WorkBox>.fromOpaque(d).takeRetainedValue()
            r.deallocate()
            b.finish()
        })
        if rc != 0 {
            Unmanaged<WorkBox>.fromOpaque(req.pointee.data!).release()
            req.deallocate()
            done(work())
        }
    }
}

private final class WorkBox {
    let work: () -> Void
    var finish: () -> Void = {}
    init(_ w: @escaping () -> Void) { work = w }
}

@inline(__always)
func rawHandle<T>(_ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<uv_handle_t> {
    UnsafeMutableRawPointer(p).assumingMemoryBound(to: uv_handle_t.self)
}

@inline(__always)
func rawStream<T>(_ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<uv_stream_t> {
    UnsafeMutableRawPointer(p).assumingMemoryBound(to: uv_stream_t.self)
}

/// A one-shot or repeating timer owned by the loop thread.
final class LoopTimer {
    private let handle: UnsafeMutablePointer<uv_timer_t>
    private var callback: (() -> Void)?

    init(loop: EventLoop) {
        handle = .allocate(capacity: 1)
        uv_timer_init(loop.uv, handle)
        handle.pointee.data = nil
    }

    func start(afterMs: UInt64, repeatMs: UInt64 = 0, unref: Bool = false, _ cb: @escaping () -> Void) {
        callback = cb
        handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_timer_start(handle, { h in
            guard let h, let d = h.pointee.data else { return }
            Unmanaged<LoopTimer>.fromOpaque(d).takeUnretainedValue().callback?()
        }, afterMs, repeatMs)
        if unref { uv_unref(rawHandle(handle)) }
    }

    func stop() { uv_timer_stop(handle) }

    /// Stops and releases the handle; the timer cannot be used afterwards.
    func close() {
        uv_timer_stop(handle)
        callback = nil
        handle.pointee.data = nil
        uv_close(rawHandle(handle)) { h in h?.deallocate() }
    }
}

/// Milliseconds of libuv's cached monotonic clock.
@inline(__always)
func loopNowMs(_ loop: EventLoop) -> UInt64 { uv_now(loop.uv) }
