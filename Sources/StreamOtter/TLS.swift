import COpenSSL
import CShim
import Glibc

/// An OpenSSL context (certificates, verification, versions) that can be replaced while
/// the engine runs (certificate reload): new connections take the current one.
final class TLSContext {
    private(set) var ctx: OpaquePointer
    init(_ ctx: OpaquePointer) { self.ctx = ctx }
    func replace(_ new: OpaquePointer) {
        SSL_CTX_free(ctx)
        ctx = new
    }
    deinit { SSL_CTX_free(ctx) }
}

struct TLSServerSettings {
    var certFile: String
    var keyFile: String
    var caFile: String?
    /// 0 none, 1 request a client certificate, 2 require one.
    var clientAuth: Int32 = 0
    var minVersion: Int32 = 12
    /// hostname -> (cert, key) for SNI.
    var sni: [(String, String, String)] = []
    var reloadIntervalMs: UInt64 = 5_000

    /// Builds the context (and SNI contexts). Throws ConfigError with OpenSSL's reason.
    func makeContext() throws -> OpaquePointer {
        var err = [CChar](repeating: 0, count: 512)
        guard let ctx = cshim_tls_server_ctx(certFile, keyFile, caFile, clientAuth, minVersion, &err, err.count) else {
            throw ConfigError("tls: \(String(cString: err)) (\(certFile), \(keyFile))")
        }
        if !sni.isEmpty {
            var ctxs: [OpaquePointer?] = []
            for (host, cert, key) in sni {
                guard let c = cshim_tls_server_ctx(cert, key, caFile, clientAuth, minVersion, &err, err.count) else {
                    for c in ctxs { SSL_CTX_free(c) }
                    SSL_CTX_free(ctx)
                    throw ConfigError("tls.sni.\(host): \(String(cString: err))")
                }
                ctxs.append(c)
            }
            var names = sni.map { strdup($0.0) }
            defer { for n in names { free(n) } }
            names.withUnsafeMutableBufferPointer { np in
                np.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: np.count) { npc in
                    ctxs.withUnsafeBufferPointer { cp in
                        cshim_tls_set_sni(ctx, Int32(sni.count), npc, cp.baseAddress)
                    }
                }
            }
            for c in ctxs { SSL_CTX_free(c) }   // the SNI table holds its own references
        }
        return ctx
    }

    /// Modification times of the files, to notice a renewed certificate.
    func fileStamp() -> [Int] {
        ([certFile, keyFile] + sni.flatMap { [$0.1, $0.2] }).map { path in
            var st = stat()
            return stat(path, &st) == 0 ? Int(st.st_mtim.tv_sec) * 1_000_000_000 + Int(st.st_mtim.tv_nsec) : -1
        }
    }
}

/// One TLS session over a TCP stream, on memory BIOs: ciphertext moves between the socket
/// and OpenSSL on the loop, never blocking. Loop thread only.
final class TLSChannel {
    let ssl: OpaquePointer
    private(set) var handshakeDone = false
    private(set) var failed = false
    private(set) var peerClosed = false
    private(set) var failure = ""

    init?(context: OpaquePointer, server: Bool, hostname: String? = nil) {
        guard let s = cshim_tls_new(context, server ? 1 : 0, hostname) else { return nil }
        ssl = s
    }

    deinit { SSL_free(ssl) }

    /// Feeds ciphertext; returns plaintext chunks through `deliver`. After it, `takeOutput`
    /// has the ciphertext to send (handshake messages, alerts).
    func receive(_ bytes: UnsafeRawBufferPointer, scratch: UnsafeMutableRawPointer, scratchSize: Int,
                 deliver: (UnsafeRawBufferPointer) -> Void) {
        guard !failed else { return }
        var off = 0
        while off < bytes.count {
            let n = cshim_tls_feed(ssl, bytes.baseAddress! + off, bytes.count - off)
            if n <= 0 { fail(); return }
            off += Int(n)
        }
        if !handshakeDone {
            let rc = cshim_tls_handshake(ssl)
            if rc < 0 { fail(); return }
            if rc == 0 { return }
            handshakeDone = true
        }
        while true {
            let n = cshim_tls_read(ssl, scratch, Int32(scratchSize))
            if n > 0 {
                deliver(UnsafeRawBufferPointer(start: scratch, count: Int(n)))
            } else if n == -2 {
                peerClosed = true
                return
            } else if n < 0 {
                fail()
                return
            } else {
                return
            }
        }
    }

    /// Client side: starts the handshake (ClientHello).
    func startHandshake() {
        if cshim_tls_handshake(ssl) < 0 { fail() }
    }

    private func fail() {
        failed = true
        failure = String(cString: cshim_tls_error())
    }

    /// Encrypts plaintext (memory BIO: always consumed whole unless the session failed).
    func send(_ p: UnsafeRawPointer, _ n: Int) -> Bool {
        var off = 0
        while off < n {
            let w = cshim_tls_write(ssl, p + off, Int32(min(n - off, 1 << 30)))
            if w <= 0 { fail(); return false }
            off += Int(w)
        }
        return true
    }

    /// Ciphertext waiting for the socket, as one buffer (nil when none).
    func takeOutput() -> OutBuffer? {
        let pending = cshim_tls_pending_out(ssl)
        guard pending > 0 else { return nil }
        let buf = OutBuffer(capacity: pending)
        var got = 0
        while got < pending {
            let n = cshim_tls_take_out(ssl, buf.base + got, Int32(pending - got))
            if n <= 0 { break }
            got += Int(n)
        }
        return buf
    }

    func closeNotify() { cshim_tls_shutdown(ssl) }

    var peerSubject: String? {
        var buf = [CChar](repeating: 0, count: 512)
        return cshim_tls_peer_subject(ssl, &buf, buf.count) == 1 ? String(cString: buf) : nil
    }
}
