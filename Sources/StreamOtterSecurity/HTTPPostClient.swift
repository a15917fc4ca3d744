import COpenSSL
import Glibc

/// A minimal blocking HTTP/1.1 POST client over POSIX sockets, with OpenSSL for https
/// (certificate and host name verified, TLS 1.2 minimum). Every step (DNS excluded: it uses
/// the blocking getaddrinfo) honours one overall deadline. Worker threads only.
final class HTTPPostClient: @unchecked Sendable {
    struct Endpoint: Equatable {
        var tls: Bool
        var host: String
        var port: UInt16
        var path: String
    }

    struct Response {
        var status: Int
        var body: [UInt8]
    }

    enum Failure: Error, Equatable {
        case connect, timeout, tls, badResponse
    }

    let endpoint: Endpoint
    let maxResponseBytes: Int
    private let sslContext: OpaquePointer?

    init(url: String, caFile: String?, maxResponseBytes: Int) throws {
        endpoint = try HTTPPostClient.parse(url: url)
        self.maxResponseBytes = maxResponseBytes
        if endpoint.tls {
            guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw SecurityConfigError("SSL_CTX_new: \(OpenSSLError.drain())") }
            SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, Int(TLS1_2_VERSION), nil)
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            if let ca = caFile {
                guard SSL_CTX_load_verify_locations(ctx, ca, nil) == 1 else {
                    SSL_CTX_free(ctx)
                    throw SecurityConfigError("cannot load CA file \(ca): \(OpenSSLError.drain())")
                }
            } else {
                SSL_CTX_set_default_verify_paths(ctx)
            }
            sslContext = ctx
        } else {
            sslContext = nil
        }
    }

    deinit { if let c = sslContext { SSL_CTX_free(c) } }

    static func parse(url: String) throws -> Endpoint {
        var rest: Substring
        let tls: Bool
        if url.hasPrefix("https://") { tls = true; rest = url.dropFirst(8) }
        else if url.hasPrefix("http://") { tls = false; rest = url.dropFirst(7) }
        else { throw SecurityConfigError("introspection endpoint must start with http:// or https://") }
        let authority: Substring
        if let slash = rest.firstIndex(of: "/") { authority = rest[..<slash]; rest = rest[slash...] } else { authority = rest; rest = "/" }
        if authority.contains("@") { throw SecurityConfigError("put client credentials in the configuration, not in the URL") }
        var host = String(authority)
        var port: UInt16 = tls ? 443 : 80
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw SecurityConfigError("bad IPv6 host in URL") }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") { guard let p = UInt16(after.dropFirst()) else { throw SecurityConfigError("bad port in URL") }; port = p }
            else if !after.isEmpty { throw SecurityConfigError("bad host in URL") }
            host = String(host[host.index(after: host.startIndex)..<close])
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = UInt16(host[host.index(after: colon)...]), p > 0 else { throw SecurityConfigError("bad port in URL") }
            port = p
            host = String(host[..<colon])
        }
        guard !host.isEmpty else { throw SecurityConfigError("no host in URL") }
        let path = rest.contains("#") ? String(rest[..<rest.firstIndex(of: "#")!]) : String(rest)
        return Endpoint(tls: tls, host: host, port: port, path: path)
    }

    /// Sends one POST and reads the whole response (`Connection: close`).
    func post(headers: [(String, String)], body: [UInt8], timeout: Double) throws -> Response {
        // 1 ms to one day (NaN: 1 ms): the nanoseconds always fit a UInt64.
        let deadline = SecurityClock.monotonicNanos() &+ UInt64(min(max(0.001, timeout), 86_400) * 1e9)
        let fd = try connect(deadline: deadline)
        defer { close(fd) }
        var ssl: OpaquePointer? = nil
        defer { if let s = ssl { SSL_free(s) } }
        if let ctx = sslContext {
            guard let s = SSL_new(ctx) else { throw Failure.tls }
            ssl = s
            SSL_set_fd(s, fd)
            var probe = in6_addr()
            let isIP = inet_pton(AF_INET, endpoint.host, &probe) == 1 || inet_pton(AF_INET6, endpoint.host, &probe) == 1
            if isIP {
                guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), endpoint.host) == 1 else { throw Failure.tls }
            } else {
                _ = endpoint.host.withCString { SSL_ctrl(s, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name), UnsafeMutableRawPointer(mutating: $0)) }
                guard SSL_set1_host(s, endpoint.host) == 1 else { throw Failure.tls }
            }
            try tlsRetry(s, fd, deadline) { SSL_connect(s) }
            guard SSL_get_verify_result(s) == X509_V_OK else { throw Failure.tls }
        }
        var hostHeader = endpoint.host.contains(":") ? "[\(endpoint.host)]" : endpoint.host
        if endpoint.port != (endpoint.tls ? 443 : 80) { hostHeader += ":\(endpoint.port)" }
        var request = "POST \(endpoint.path) HTTP/1.1\r\nHost: \(hostHeader)\r\n"
        for (k, v) in headers { request += "\(k): \(v)\r\n" }
        request += "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        let out = Array(request.utf8) + body
        var off = 0
        while off < out.count {
            let n = try transfer(ssl, fd, deadline, write: true) { ptr, len in
                out.withUnsafeBytes { b in
                    ssl.map { Int(SSL_write($0, b.baseAddress! + off, Int32(min(len, b.count - off)))) }
                        ?? send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                }
            }
            off += n
        }
        var response: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = try transfer(ssl, fd, deadline, write: false) { _, _ in
                buf.withUnsafeMutableBytes { b in
                    ssl.map { Int(SSL_read($0, b.baseAddress, Int32(b.count))) } ?? recv(fd, b.baseAddress, b.count, 0)
                }
            }
            if n == 0 { break }
            response += buf[0..<n]
            if response.count > maxResponseBytes { throw Failure.badResponse }
            if let complete = HTTPPostClient.parseResponse(response, final: false) { return complete }
        }
        guard let r = HTTPPostClient.parseResponse(response, final: true) else { throw Failure.badResponse }
        return r
    }

    private func connect(deadline: UInt64) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(endpoint.host, String(endpoint.port), &hints, &list) == 0, let first = list else { throw Failure.connect }
        defer { freeaddrinfo(list) }
        var ai: UnsafeMutablePointer<addrinfo>? = first
        var timedOut = false
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            if fd < 0 { continue }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
            if errno == EINPROGRESS {
                do {
                    try wait(fd, events: Int16(POLLOUT), deadline: deadline)
                    var err: Int32 = 0
                    var len = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
                    if err == 0 { return fd }
                } catch Failure.timeout {
                    timedOut = true
                }
            }
            close(fd)
            if timedOut { break }
        }
        throw timedOut ? Failure.timeout : Failure.connect
    }

    private func wait(_ fd: Int32, events: Int16, deadline: UInt64) throws {
        while true {
            let now = SecurityClock.monotonicNanos()
            if now >= deadline { throw Failure.timeout }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let ms = Int32(min(UInt64(Int32.max), (deadline - now) / 1_000_000 + 1))
            let rc = poll(&p, 1, ms)
            if rc > 0 { return }
            if rc < 0 && errno != EINTR { throw Failure.connect }
        }
    }

    private func tlsRetry(_ ssl: OpaquePointer, _ fd: Int32, _ deadline: UInt64, _ op: () -> Int32) throws {
        while true {
            let rc = op()
            if rc == 1 { return }
            let e = SSL_get_error(ssl, rc)
            if e == SSL_ERROR_WANT_READ { try wait(fd, events: Int16(POLLIN), deadline: deadline) }
            else if e == SSL_ERROR_WANT_WRITE { try wait(fd, events: Int16(POLLOUT), deadline: deadline) }
            else { OpenSSLError.clear(); throw Failure.tls }
        }
    }

    /// Runs a read or write until it makes progress; returns bytes moved (0 = EOF on read).
    private func transfer(_ ssl: OpaquePointer?, _ fd: Int32, _ deadline: UInt64, write: Bool, _ op: (Int, Int) -> Int) throws -> Int {
        while true {
            if SecurityClock.monotonicNanos() >= deadline { throw Failure.timeout }
            let n = op(0, 1 << 20)
            if n > 0 { return n }
            if let s = ssl {
                let e = SSL_get_error(s, Int32(n))
                if e == SSL_ERROR_WANT_READ { try wait(fd, events: Int16(POLLIN), deadline: deadline); continue }
                if e == SSL_ERROR_WANT_WRITE { try wait(fd, events: Int16(POLLOUT), deadline: deadline); continue }
                if e == SSL_ERROR_ZERO_RETURN && !write { return 0 }
                OpenSSLError.clear()
                // An unclean close after a complete response is handled by the caller's parse.
                if !write && e == SSL_ERROR_SYSCALL { return 0 }
                throw write ? Failure.connect : Failure.tls
            }
            if n == 0 { if write { throw Failure.connect }; return 0 }
            if errno == EAGAIN || errno == EWOULDBLOCK { try wait(fd, events: Int16(write ? POLLOUT : POLLIN), deadline: deadline); continue }
            if errno == EINTR { continue }
            throw Failure.connect
        }
    }

    /// Parses a response when it is complete: Content-Length, chunked, or (when `final`)
    /// up to EOF. Nil when more bytes are needed (or, with `final`, when malformed).
    static func parseResponse(_ data: [UInt8], final: Bool) -> Response? {
        guard let headEnd = find(data, [13, 10, 13, 10], from: 0) else { return nil }
        let head = String(decoding: data[0..<headEnd], as: UTF8.self)
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).makeIterator()
        guard let statusLine = lines.next() else { return nil }
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...599).contains(status) else {
            return final ? nil : (data.count > 0 ? nil : nil)
        }
        var contentLength: Int? = nil
        var chunked = false
        while let line = lines.next() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingSpaces
            if name == "content-length" { contentLength = Int(value) }
            if name == "transfer-encoding" && value.lowercased().contains("chunked") { chunked = true }
        }
        let bodyStart = headEnd + 4
        if chunked {
            var body: [UInt8] = []
            var pos = bodyStart
            while true {
                guard let lineEnd = find(data, [13, 10], from: pos) else { return nil }
                let sizeText = String(decoding: data[pos..<lineEnd], as: UTF8.self).split(separator: ";").first.map { $0.trimmingSpaces } ?? ""
                guard let size = Int(sizeText, radix: 16), size >= 0 else { return nil }
                pos = lineEnd + 2
                if size == 0 { return Response(status: status, body: body) }
                // Compared without adding to `size` (up to Int.max, from the server).
                guard data.count - pos >= 2, size <= data.count - pos - 2 else { return nil }
                body += data[pos..<(pos + size)]
                pos += size + 2
            }
        }
        if let len = contentLength {
            guard len >= 0 else { return nil }
            // Compared without adding to `len` (up to Int.max, from the server).
            guard len <= data.count - bodyStart else { return nil }
            return Response(status: status, body: Array(data[bodyStart..<(bodyStart + len)]))
        }
        return final ? Response(status: status, body: Array(data[bodyStart...])) : nil
    }

    static func find(_ data: [UInt8], _ needle: [UInt8], from: Int) -> Int? {
        guard data.count >= needle.count else { return nil }
        var i = from
        while i + needle.count <= data.count {
            if data[i] == needle[0] && data[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}
