import Foundation
import Glibc

/// A tiny HTTP/1.1 server on 127.0.0.1 for tests: one thread, one request per connection,
/// counts requests and records them.
final class TestHTTPServer: @unchecked Sendable {
    struct Request { var requestLine: String; var headers: [String: String]; var body: String }
    struct Reply { var status: Int = 200; var body: String; var chunked = false; var delaySeconds: Double = 0 }

    let port: UInt16
    private let fd: Int32
    private let lock = NSLock()
    private var recorded: [Request] = []
    private let handler: @Sendable (Request) -> Reply
    private var stopped = false

    init(handler: @escaping @Sendable (Request) -> Reply) {
        self.handler = handler
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 64)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) } }
        port = UInt16(bigEndian: addr.sin_port)
        self.fd = fd
        let t = Thread { [self] in self.run() }
        t.start()
    }

    var requests: [Request] { lock.lock(); defer { lock.unlock() }; return recorded }
    var count: Int { requests.count }

    func stop() {
        lock.lock(); stopped = true; lock.unlock()
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    private func run() {
        while true {
            let c = accept(fd, nil, nil)
            if c < 0 {
                lock.lock(); let s = stopped; lock.unlock()
                if s { return }
                continue
            }
            let conn = c
            Thread.detachNewThread { [self] in self.serve(conn) }
        }
    }

    private func serve(_ c: Int32) {
        defer { close(c) }
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        var request: Request? = nil
        while request == nil {
            let n = recv(c, &buf, buf.count, 0)
            if n <= 0 { return }
            data += buf[0..<n]
            guard let range = Data(data).range(of: Data([13, 10, 13, 10])) else { continue }
            let head = String(decoding: data[0..<range.lowerBound], as: UTF8.self)
            var lines = head.components(separatedBy: "\r\n")
            let requestLine = lines.removeFirst()
            var headers: [String: String] = [:]
            for l in lines {
                if let i = l.firstIndex(of: ":") { headers[l[..<i].lowercased()] = l[l.index(after: i)...].trimmingCharacters(in: .whitespaces) }
            }
            let len = Int(headers["content-length"] ?? "0") ?? 0
            let bodyStart = range.upperBound
            if data.count >= bodyStart + len {
                request = Request(requestLine: requestLine, headers: headers, body: String(decoding: data[bodyStart..<(bodyStart + len)], as: UTF8.self))
            }
        }
        lock.lock(); recorded.append(request!); lock.unlock()
        let reply = handler(request!)
        if reply.delaySeconds > 0 { usleep(UInt32(reply.delaySeconds * 1e6)) }
        var out = "HTTP/1.1 \(reply.status) X\r\nContent-Type: application/json\r\nConnection: close\r\n"
        if reply.chunked {
            let b = Array(reply.body.utf8)
            let mid = b.count / 2
            out += "Transfer-Encoding: chunked\r\n\r\n"
            out += String(mid, radix: 16) + "\r\n" + String(decoding: b[0..<mid], as: UTF8.self) + "\r\n"
            out += String(b.count - mid, radix: 16) + ";ext=1\r\n" + String(decoding: b[mid...], as: UTF8.self) + "\r\n0\r\n\r\n"
        } else {
            out += "Content-Length: \(reply.body.utf8.count)\r\n\r\n" + reply.body
        }
        let bytes = Array(out.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            off += n
        }
    }
}
