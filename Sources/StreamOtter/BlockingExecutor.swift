import Glibc

/// A few threads of its own for blocking calls that depend on someone else's server
/// (token introspection), so a slow or hostile endpoint cannot occupy libuv's shared
/// worker pool, which subscribe look-ups need. The queue is bounded: when it is full,
/// `submit` refuses at once instead of queueing without end.
final class BlockingExecutor: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var queue: [() -> Void] = []
    private let capacity: Int
    private var stopping = false
    private var threads: [pthread_t] = []

    init(threads n: Int, capacity: Int) {
        self.capacity = capacity
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
        for _ in 0..<max(1, n) {
            var t = pthread_t()
            let me = Unmanaged.passRetained(self).toOpaque()
            if pthread_create(&t, nil, { arg in
                let ex = Unmanaged<BlockingExecutor>.fromOpaque(arg!).takeRetainedValue()
                ex.work()
                return nil
            }, me) == 0 {
                threads.append(t)
            } else {
                Unmanaged<BlockingExecutor>.fromOpaque(me).release()
            }
        }
    }

    private func work() {
        while true {
            pthread_mutex_lock(&mutex)
            while queue.isEmpty && !stopping { pthread_cond_wait(&cond, &mutex) }
            if queue.isEmpty && stopping {
                pthread_mutex_unlock(&mutex)
                return
            }
            let job = queue.removeFirst()
            pthread_mutex_unlock(&mutex)
            job()
        }
    }

    /// Runs `job` on one of the threads, then `done` with its result on `loop`. Returns
    /// false (and runs nothing) when the queue is full or the executor stopped.
    func submit<T>(on loop: EventLoop, _ job: @escaping () -> T, then done: @escaping (T) -> Void) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard !stopping, queue.count < capacity else { return false }
        queue.append {
            let r = job()
            loop.post { done(r) }
        }
        pthread_cond_signal(&cond)
        return true
    }

    /// Lets queued jobs finish and the threads end (they hold the last references).
    func stop() {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_broadcast(&cond)
        pthread_mutex_unlock(&mutex)
        for t in threads { pthread_detach(t) }
        threads.removeAll()
    }
}
