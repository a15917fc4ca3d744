import CShim
import CUV
import Glibc

/// Bytes allocated once and shared by every socket that writes them (a broadcast frame is
/// encoded once). Freed when the last writer is done.
final class OutBuffer {
    let base: UnsafeMutableRawPointer
    let count: Int

    init(capacity: Int) {
        base = UnsafeMutableRawPointer.allocate(byteCount: max(capacity, 1), alignment: 16)
        count = capacity
    }

    convenience init(_ bytes: [UInt8]) {
        self.init(capacity: bytes.count)
        bytes.withUnsafeBytes { src in
            if let s = src.baseAddress { base.copyMemory(from: s, byteCount: bytes.count) }
        }
    }

    deinit { base.deallocate() }
}

protocol TCPStreamDelegate: AnyObject {
    /// Bytes read; valid for the duration of the call only.
    func streamDidRead(_ stream: TCPStream, _ bytes: UnsafeRawBufferPointer)
    /// The peer closed (EOF) or a read/write error happened; the stream closes itself next.
    func streamDidEnd(_ stream: TCPStream, error: Int32)
    /// The handle is closed; no callback follows.
    func streamDidClose(_ stream: TCPStream)
    /// Queued bytes dropped to or below the low-water mark after being above it.
    func streamDidDrain(_ stream: TCPStream)
}

/// One TCP socket on the loop: pooled reads, writes coalesced into one uv_write per turn.
/// Loop thread only.
final class TCPStream: TurnFlushable {
    let loop: EventLoop
    let handle: UnsafeMutablePointer<uv_tcp_t>
    /// Strong, and dropped after `streamDidClose`: a weak reference would give every
    /// connection a side table, which sends each later retain and release of it down the
    /// runtime's slow path (a quarter of the loop when fanning out to 10,000 sockets).
    var delegate: TCPStreamDelegate?
    private var pending: [(OutBuffer, Int, Int)] = []   // buffer, offset, length
    private var pendingMarked = false
    /// Bytes accepted by `write` and not yet written to the kernel.
    private(set) var queuedBytes = 0
    /// Bytes the kernel has not taken yet: those queued this turn plus what libuv could
    /// not write at once. Unlike `queuedBytes` it drops as soon as a write completes
    /// synchronously (the write callback only runs on a later loop iteration), so right
    /// after a flush it is the real backlog of this socket.
    var unsentBytes: Int {
        pending.reduce(0) { $0 + $1.2 } + Int(uv_stream_get_write_queue_size(rawStream(handle)))
    }
    private var writesInFlight = 0
    private(set) var isClosing = false
    private var closeWhenFlushed = false
    private(set) var reading = false
    /// After our last byte is written and FIN sent, input is read and discarded until the
    /// peer's EOF, so the kernel never answers unread input with a reset that could destroy
    /// our final frame before the peer reads it.
    private(set) var discarding = false
    var lowWater = 0
    private var wantDrain = false
    let peer: String

    init(loop: EventLoop, accepting server: UnsafeMutablePointer<uv_tcp_t>) throws {
        self.loop = loop
        let handle = UnsafeMutablePointer<uv_tcp_t>.allocate(capacity: 1)
        self.handle = handle
        uv_tcp_init(loop.uv, handle)
        let rc = uv_accept(rawStream(server), rawStream(handle))
        if rc != 0 {
            uv_close(rawHandle(handle)) { h in h?.deallocate() }
            throw UVError(rc)
        }
        uv_tcp_nodelay(handle, 1)
        var ss = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        peer = withUnsafeMutablePointer(to: &ss) { p -> String in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp in
                uv_tcp_getpeername(handle, sp, &len) == 0 ? formatAddress(sp) : "?"
            }
        }
        // The handle holds a strong reference to self until its close callback.
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    /// Wraps a handle that `TCPConnector` connected.
    init(loop: EventLoop, connected handle: UnsafeMutablePointer<uv_tcp_t>, peer: String) {
        self.loop = loop
        self.handle = handle
        self.peer = peer
        uv_tcp_nodelay(handle, 1)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    static func from(_ h: UnsafeMutableRawPointer?) -> TCPStream? {
        guard let h else { return nil }
        let hp = h.assumingMemoryBound(to: uv_handle_t.self)
        guard let d = hp.pointee.data else { return nil }
        return Unmanaged<TCPStream>.fromOpaque(d).takeUnretainedValue()
    }

    func startReading() {
        guard !reading, !isClosing else { return }
        reading = true
        uv_read_start(rawStream(handle), { h, suggested, buf in
            guard let h, let buf, let ld = h.pointee.loop.pointee.data else { return }
            let pool = Unmanaged<ReadPool>.fromOpaque(ld).takeUnretainedValue()
            buf.pointee = uv_buf_init(pool.base.assumingMemoryBound(to: CChar.self), UInt32(pool.size))
        }, { s, nread, buf in
            guard let s, let me = TCPStream.from(UnsafeMutableRawPointer(s)) else { return }
            if nread > 0, let base = buf?.pointee.base {
                if me.discarding { return }
                me.received(UnsafeRawBufferPointer(start: base, count: nread))
            } else if nread < 0 {
                me.reading = false
                uv_read_stop(s)
                if !me.discarding { me.delegate?.streamDidEnd(me, error: Int32(nread)) }
                me.close()
            }
        })
    }

    /// TLS on this stream (set before the first byte is read or written).
    var tls: TLSChannel?
    /// Called once when the TLS handshake completed.
    var onTLSReady: (() -> Void)?
    /// Why the stream failed (TLS), for error messages.
    private(set) var failure: String?

    private func received(_ bytes: UnsafeRawBufferPointer) {
        guard let tls else {
            delegate?.streamDidRead(self, bytes)
            return
        }
        let wasDone = tls.handshakeDone
        let pool = loop.readPool
        tls.receive(bytes, scratch: pool.plain, scratchSize: pool.size) { plain in
            if !isClosing { delegate?.streamDidRead(self, plain) }
        }
        if isClosing { return }
        writeTLSOutput()
        if tls.failed {
            failure = "TLS: " + tls.failure
            reading = false
            uv_read_stop(rawStream(handle))
            delegate?.streamDidEnd(self, error: -71 /* EPROTO */)
            close()
            return
        }
        if !wasDone && tls.handshakeDone {
            onTLSReady?()
            onTLSReady = nil
            if !pending.isEmpty && !pendingMarked {
                pendingMarked = true
                loop.markDirty(self)
            }
        }
        if tls.peerClosed && !isClosing {
            reading = false
            uv_read_stop(rawStream(handle))
            delegate?.streamDidEnd(self, error: -4095 /* EOF */)
            close()
        }
    }

    /// Starts a client-side TLS handshake on a connected stream.
    func startClientTLS(_ channel: TLSChannel) {
        tls = channel
        channel.startHandshake()
        writeTLSOutput()
    }

    /// Sends whatever ciphertext OpenSSL produced (handshake, alerts) right away.
    private func writeTLSOutput() {
        guard let tls, let out = tls.takeOutput() else { return }
        rawWrite([(out, 0, out.count)], accounted: 0)
    }

    func stopReading() {
        guard reading else { return }
        reading = false
        uv_read_stop(rawStream(handle))
    }

    /// Queues bytes; they go out in one uv_write with everything else queued this turn.
    func write(_ buf: OutBuffer, offset: Int = 0, length: Int? = nil) {
        guard !isClosing else { return }
        let n = length ?? (buf.count - offset)
        if n <= 0 { return }
        pending.append((buf, offset, n))
        queuedBytes += n
        if !pendingMarked {
            pendingMarked = true
            loop.markDirty(self)
        }
    }

    func write(_ bytes: [UInt8]) { write(OutBuffer(bytes)) }

    /// Small writes of this turn are copied into one buffer: `tail`, whose first
    /// `tailUsed` bytes are taken. Dropped at the flush: back to the loop's pool when the
    /// write completed at once, else the write request keeps it.
    private var tail: OutBuffer?
    private var tailUsed = 0
    static let tailSize = 4096

    /// Queues `count` bytes that `fill` writes in place (it gets exactly `count` bytes of
    /// room). Small writes of one turn share one buffer and one iovec, so a burst of
    /// replies costs one allocation, not one per message.
    func writeCopy(count: Int, _ fill: (UnsafeMutableRawPointer) -> Void) {
        guard !isClosing, count > 0 else { return }
        if count > TCPStream.tailSize / 2 {
            let b = OutBuffer(capacity: count)
            fill(b.base)
            write(b)
            return
        }
        if let t = tail, tailUsed + count <= t.count {
            fill(t.base + tailUsed)
            if let last = pending.last, last.0 === t, last.1 + last.2 == tailUsed {
                pending[pending.count - 1].2 += count
            } else {
                pending.append((t, tailUsed, count))
            }
        } else {
            let t = loop.takeTailBuffer()
            tail = t
            tailUsed = 0
            fill(t.base)
            pending.append((t, 0, count))
        }
        tailUsed += count
        queuedBytes += count
        if !pendingMarked {
            pendingMarked = true
            loop.markDirty(self)
        }
    }

    /// Asks for a `streamDidDrain` once queued bytes fall to `lowWater`.
    func requestDrainNotification() { wantDrain = true }

    final class WriteReq {
        let bufs: [(OutBuffer, Int, Int)]
        let stream: TCPStream
        let bytes: Int
        init(_ b: [(OutBuffer, Int, Int)], _ s: TCPStream, _ n: Int) { bufs = b; stream = s; bytes = n }
    }

    func flushTurn() {
        pendingMarked = false
        var used = tail
        tail = nil
        // A tail buffer that no write request still holds (the write completed at once)
        // goes back to the loop's pool: no allocation per socket and turn.
        defer { if used != nil, isKnownUniquelyReferenced(&used!) { loop.recycleTailBuffer(used!) } }
        guard !pending.isEmpty, !isClosing else { return }
        if let tls {
            // Plaintext waits for the handshake, then goes out as one ciphertext buffer.
            guard tls.handshakeDone else { return }
            let batch = pending
            pending.removeAll(keepingCapacity: true)
            var total = 0
            for (b, off, n) in batch {
                _ = tls.send(b.base + off, n)
                total += n
            }
            if let out = tls.takeOutput() { rawWrite([(out, 0, out.count)], accounted: total) }
            else { queuedBytes -= total }
            return
        }
        // Swap in the spare list (empty, with capacity) so that queuing and flushing
        // allocate nothing in the steady state.
        var batch: [(OutBuffer, Int, Int)] = []
        swap(&batch, &spare)
        swap(&batch, &pending)
        var total = 0
        for (_, _, n) in batch { total += n }
        rawWrite(batch, accounted: total)
        batch.removeAll(keepingCapacity: true)
        spare = batch
    }

    /// The other half of `pending`'s double buffer (see `flushTurn`).
    private var spare: [(OutBuffer, Int, Int)] = []

    /// One uv_write of `batch`; `accounted` bytes of queuedBytes are released when done.
    private func rawWrite(_ batch: [(OutBuffer, Int, Int)], accounted: Int) {
        // Most writes fit in the kernel's buffer: try them now (iovecs on the stack), and
        // queue a uv_write (which costs an epoll re-registration and a request object) only
        // for what is left.
        var skip = 0        // entries written completely
        var partial = 0     // bytes written of entry `skip`
        if writesInFlight == 0 {
            let n = withUnsafeTemporaryAllocation(of: uv_buf_t.self, capacity: batch.count) { bufs -> Int32 in
                for (i, (b, off, len)) in batch.enumerated() {
                    bufs[i] = uv_buf_init((b.base + off).assumingMemoryBound(to: CChar.self), UInt32(len))
                }
                return uv_try_write(rawStream(handle), bufs.baseAddress, UInt32(batch.count))
            }
            if n > 0 {
                var written = Int(n)
                while skip < batch.count && written >= batch[skip].2 {
                    written -= batch[skip].2
                    skip += 1
                }
                if skip == batch.count {
                    writesInFlight += 1
                    writeDone(accounted, status: 0)
                    return
                }
                partial = written
            } else if n != Int32(UV_EAGAIN.rawValue) && n < 0 {
                writesInFlight += 1
                writeDone(accounted, status: n)
                return
            }
        }
        var rest = Array(batch[skip...])
        if partial > 0 { rest[0] = (rest[0].0, rest[0].1 + partial, rest[0].2 - partial) }
        let req = UnsafeMutablePointer<uv_write_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passRetained(WriteReq(rest, self, accounted)).toOpaque()
        writesInFlight += 1
        // libuv copies the iovec array into the request.
        let rc = withUnsafeTemporaryAllocation(of: uv_buf_t.self, capacity: rest.count) { bufs -> Int32 in
            for (i, (b, off, len)) in rest.enumerated() {
                bufs[i] = uv_buf_init((b.base + off).assumingMemoryBound(to: CChar.self), UInt32(len))
            }
            return uv_write(req, rawStream(handle), bufs.baseAddress, UInt32(rest.count)) { r, status in
                guard let r, let d = r.pointee.data else { return }
                let wr = Unmanaged<WriteReq>.fromOpaque(d).takeRetainedValue()
                r.deallocate()
                wr.stream.writeDone(wr.bytes, status: status)
            }
        }
        if rc != 0 {
            Unmanaged<WriteReq>.fromOpaque(req.pointee.data!).release()
            req.deallocate()
            writeDone(accounted, status: rc)
        }
    }

    private func writeDone(_ n: Int, status: Int32) {
        writesInFlight -= 1
        queuedBytes -= n
        if status != 0 && !isClosing {
            delegate?.streamDidEnd(self, error: status)
            close()
            return
        }
        if wantDrain && queuedBytes <= lowWater && !isClosing {
            wantDrain = false
            delegate?.streamDidDrain(self)
        }
        if closeWhenFlushed && writesInFlight == 0 && pending.isEmpty { shutdownAndLinger() }
    }

    /// Sends everything queued, then FIN, then discards input until the peer's EOF (the
    /// owner closes the stream at its deadline if the peer never sends it).
    func closeAfterWrites() {
        guard !isClosing, !closeWhenFlushed else { return }
        closeWhenFlushed = true
        discarding = true
        if !reading { startReading() }
        if pending.isEmpty && writesInFlight == 0 { shutdownAndLinger() }
    }

    private var shutdownSent = false
    private func shutdownAndLinger() {
        guard !shutdownSent, !isClosing else { return }
        shutdownSent = true
        if let tls, tls.handshakeDone, !tls.failed {
            tls.closeNotify()
            writeTLSOutput()
        }
        let req = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        let rc = uv_shutdown(req, rawStream(handle)) { r, _ in r?.deallocate() }
        if rc != 0 {
            req.deallocate()
            close()
        }
    }

    /// Closes now; queued bytes are dropped.
    func close() {
        guard !isClosing else { return }
        isClosing = true
        pending.removeAll()
        uv_close(rawHandle(handle)) { h in
            guard let h, let d = h.pointee.data else { return }
            let me = Unmanaged<TCPStream>.fromOpaque(d).takeRetainedValue()
            h.pointee.data = nil
            let delegate = me.delegate
            me.delegate = nil
            delegate?.streamDidClose(me)
            h.deallocate()
        }
    }
}

/// The loop-wide read buffer: libuv hands it to one read callback at a time.
final class ReadPool {
    let size = 65536
    let base = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 16)
    /// Decrypted bytes of a TLS read (the ciphertext is still in `base`).
    let plain = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 16)
    deinit {
        base.deallocate()
        plain.deallocate()
    }
}

struct UVError: Error, CustomStringConvertible {
    let code: Int32
    init(_ c: Int32) { code = c }
    var description: String { String(cString: uv_strerror(code)) }
}

func formatAddress(_ sa: UnsafePointer<sockaddr>) -> String {
    var buf = [CChar](repeating: 0, count: 64)
    if sa.pointee.sa_family == sa_family_t(AF_INET) {
        return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
            uv_ip4_name(p, &buf, buf.count)
            return String(cString: buf) + ":" + String(UInt16(bigEndian: p.pointee.sin_port))
        }
    } else if sa.pointee.sa_family == sa_family_t(AF_INET6) {
        return sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
            uv_ip6_name(p, &buf, buf.count)
            return "[" + String(cString: buf) + "]:" + String(UInt16(bigEndian: p.pointee.sin6_port))
        }
    }
    return "?"
}

/// A listening TCP socket. Loop thread only.
final class TCPListener {
    let loop: EventLoop
    let handle: UnsafeMutablePointer<uv_tcp_t>
    private var onConnection: ((TCPListener) -> Void)?
    private(set) var boundAddress = ""
    private(set) var port: Int = 0

    init(loop: EventLoop, host: String, port: Int, reusePort: Bool, backlog: Int32 = 1024,
         onConnection: @escaping (TCPListener) -> Void) throws {
        self.loop = loop
        self.onConnection = onConnection
        handle = .allocate(capacity: 1)
        uv_tcp_init_ex(loop.uv, handle, UInt32(host.contains(":") ? AF_INET6 : AF_INET))
        var ss = sockaddr_storage()
        var rc: Int32 = withUnsafeMutablePointer(to: &ss) { p in
            if host.contains(":") {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { uv_ip6_addr(host, Int32(port), $0) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { uv_ip4_addr(host, Int32(port), $0) }
        }
        if rc == 0 && reusePort {
            var fd: uv_os_fd_t = -1
            uv_fileno(rawHandle(handle), &fd)
            _ = cshim_set_reuseport(fd)
        }
        if rc == 0 {
            rc = withUnsafePointer(to: &ss) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_tcp_bind(handle, $0, 0) }
            }
        }
        handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        if rc == 0 {
            rc = uv_listen(rawStream(handle), backlog) { s, status in
                guard let s, status == 0, let d = s.pointee.data else { return }
                let me = Unmanaged<TCPListener>.fromOpaque(d).takeUnretainedValue()
                me.onConnection?(me)
            }
        }
        if rc != 0 {
            handle.pointee.data = nil
            uv_close(rawHandle(handle)) { h in h?.deallocate() }
            throw UVError(rc)
        }
        var bound = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &bound) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp in
                if uv_tcp_getsockname(handle, sp, &len) == 0 {
                    boundAddress = formatAddress(sp)
                    if sp.pointee.sa_family == sa_family_t(AF_INET) {
                        self.port = Int(sp.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) })
                    } else {
                        self.port = Int(sp.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) })
                    }
                }
            }
        }
    }

    func close() {
        onConnection = nil
        handle.pointee.data = nil
        uv_close(rawHandle(handle)) { h in h?.deallocate() }
    }
}

/// Resolves a host name and connects, on the loop. Calls `done` exactly once, unless
/// `cancel` was called first. Loop thread only.
final class TCPConnector {
    private let loop: EventLoop
    private var done: ((Result<TCPStream, UVError>) -> Void)?
    private var handle: UnsafeMutablePointer<uv_tcp_t>?
    private var peer = ""

    init(loop: EventLoop) { self.loop = loop }

    func connect(host: String, port: Int, _ done: @escaping (Result<TCPStream, UVError>) -> Void) {
        self.done = done
        let req = UnsafeMutablePointer<uv_getaddrinfo_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passRetained(self).toOpaque()
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        let h = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        let rc = uv_getaddrinfo(loop.uv, req, { req, status, res in
            guard let req, let d = req.pointee.data else { return }
            let me = Unmanaged<TCPConnector>.fromOpaque(d).takeRetainedValue()
            req.deallocate()
            defer { if let res { uv_freeaddrinfo(res) } }
            guard status == 0, let res, let addr = res.pointee.ai_addr else {
                me.finish(.failure(UVError(status == 0 ? -EINVAL : status)))
                return
            }
            me.connectResolved(addr)
        }, h, String(port), &hints)
        if rc != 0 {
            Unmanaged<TCPConnector>.fromOpaque(req.pointee.data!).release()
            req.deallocate()
            loop.post { [self] in self.finish(.failure(UVError(rc))) }
        }
    }

    private func connectResolved(_ addr: UnsafeMutablePointer<sockaddr>) {
        guard done != nil else { return }
        peer = formatAddress(addr)
        let h = UnsafeMutablePointer<uv_tcp_t>.allocate(capacity: 1)
        uv_tcp_init(loop.uv, h)
        handle = h
        let req = UnsafeMutablePointer<uv_connect_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passRetained(self).toOpaque()
        let rc = uv_tcp_connect(req, h, addr) { req, status in
            guard let req, let d = req.pointee.data else { return }
            let me = Unmanaged<TCPConnector>.fromOpaque(d).takeRetainedValue()
            req.deallocate()
            guard let h = me.handle else { return }
            me.handle = nil
            if status == 0, me.done != nil {
                me.finish(.success(TCPStream(loop: me.loop, connected: h, peer: me.peer)))
            } else {
                uv_close(rawHandle(h)) { $0?.deallocate() }
                me.finish(.failure(UVError(status == 0 ? -ECANCELED : status)))
            }
        }
        if rc != 0 {
            Unmanaged<TCPConnector>.fromOpaque(req.pointee.data!).release()
            req.deallocate()
            handle = nil
            uv_close(rawHandle(h)) { $0?.deallocate() }
            finish(.failure(UVError(rc)))
        }
    }

    private func finish(_ r: Result<TCPStream, UVError>) {
        guard let d = done else {
            if case .success(let s) = r { s.close() }
            return
        }
        done = nil
        d(r)
    }

    /// No callback runs after this; a connection still in progress is closed.
    func cancel() {
        done = nil
        if let h = handle {
            handle = nil
            uv_close(rawHandle(h)) { $0?.deallocate() }
        }
    }
}
