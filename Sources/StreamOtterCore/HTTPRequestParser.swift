/// Parses an HTTP/1.x request head (RFC 9112) from the bytes read so far.
///
/// Rules:
/// - Returns nil while the head (through CRLFCRLF) is incomplete and within limits; then the
///   request and the number of bytes consumed (the head; any body or WebSocket bytes after
///   it are the caller's).
/// - Lines end in CRLF only: a bare LF or a CR not followed by LF is 400, detected as soon
///   as it is buffered.
/// - 431 as soon as more than `maxHeaderBytes` are buffered without the end of the head,
///   or when there are more than `maxHeaderCount` header fields.
/// - 400: request line not `token SP target SP HTTP/d.d`, empty or non-printable target,
///   header without a colon, whitespace before the colon, empty or non-token name,
///   obs-fold (a line starting with SP or HTAB), control characters in a value.
/// - 505 for any version other than HTTP/1.1 and HTTP/1.0.
public enum HTTPRequestParser {
    /// Parses the head at the start of `bytes`; see the type's rules.
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: HTTPLimits) throws -> (HTTPRequest, Int)? {
        let count = bytes.count
        let scanLimit = min(count, limits.maxHeaderBytes)
        // Find the end of the head, checking line endings on the way.
        var headEnd = -1
        var i = 0
        while i < scanLimit {
            let c = bytes[i]
            if c == 0x0A {
                if i == 0 || bytes[i - 1] != 0x0D { throw HTTPError.badRequest("bare LF") }
                if i >= 3 && bytes[i - 2] == 0x0A && bytes[i - 3] == 0x0D {
                    headEnd = i + 1
                    break
                }
            } else if c == 0x0D {
                if i + 1 < count && bytes[i + 1] != 0x0A { throw HTTPError.badRequest("CR without LF") }
            }
            i += 1
        }
        if headEnd < 0 {
            if count >= limits.maxHeaderBytes { throw HTTPError.tooLarge("request head too large") }
            return nil
        }
        let request = try parseHead(UnsafeRawBufferPointer(rebasing: bytes[0..<headEnd]), limits: limits)
        return (request, headEnd)
    }

    /// Parses the array form; see `parse(_:limits:)`.
    public static func parse(_ bytes: [UInt8], limits: HTTPLimits = HTTPLimits()) throws -> (HTTPRequest, Int)? {
        try bytes.withUnsafeBytes { try parse($0, limits: limits) }
    }

    /// RFC 9110 tchar.
    @inline(__always)
    static func isTokenChar(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    private static func string(_ head: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: head[range]), as: UTF8.self)
    }

    /// `head` ends with CRLFCRLF and contains only CRLF line endings.
    private static func parseHead(_ head: UnsafeRawBufferPointer, limits: HTTPLimits) throws -> HTTPRequest {
        // Request line.
        var lineEnd = 0
        while head[lineEnd] != 0x0D { lineEnd += 1 }
        var p = 0
        while p < lineEnd && isTokenChar(head[p]) { p += 1 }
        if p == 0 || p >= lineEnd || head[p] != 0x20 { throw HTTPError.badRequest("malformed request line") }
        let method = string(head, 0..<p)
        let targetStart = p + 1
        p = targetStart
        while p < lineEnd && head[p] > 0x20 && head[p] < 0x7F { p += 1 }
        if p == targetStart || p >= lineEnd || head[p] != 0x20 { throw HTTPError.badRequest("malformed request target") }
        let target = string(head, targetStart..<p)
        let versionStart = p + 1
        let versionBytes = UnsafeRawBufferPointer(rebasing: head[versionStart..<lineEnd])
        guard versionBytes.count == 8,
              versionBytes.starts(with: "HTTP/".utf8),
              (0x30...0x39).contains(versionBytes[5]), versionBytes[6] == UInt8(ascii: "."), (0x30...0x39).contains(versionBytes[7])
        else { throw HTTPError.badRequest("malformed HTTP version") }
        let version = string(head, versionStart..<lineEnd)
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            throw HTTPError(status: 505, reason: "unsupported HTTP version")
        }

        // Header fields, until the empty line.
        var headers: [(name: String, value: String)] = []
        var lineStart = lineEnd + 2
        while true {
            var end = lineStart
            while head[end] != 0x0D { end += 1 }
            if end == lineStart { break }  // empty line: end of head
            let first = head[lineStart]
            if first == 0x20 || first == 0x09 { throw HTTPError.badRequest("obs-fold in header") }
            var colon = lineStart
            while colon < end && isTokenChar(head[colon]) { colon += 1 }
            if colon == lineStart || colon >= end || head[colon] != UInt8(ascii: ":") {
                throw HTTPError.badRequest("malformed header field")
            }
            var valueStart = colon + 1
            var valueEnd = end
            while valueStart < valueEnd && (head[valueStart] == 0x20 || head[valueStart] == 0x09) { valueStart += 1 }
            while valueEnd > valueStart && (head[valueEnd - 1] == 0x20 || head[valueEnd - 1] == 0x09) { valueEnd -= 1 }
            for k in valueStart..<valueEnd {
                let c = head[k]
                if (c < 0x20 && c != 0x09) || c == 0x7F { throw HTTPError.badRequest("control character in header value") }
            }
            if headers.count >= limits.maxHeaderCount { throw HTTPError.tooLarge("too many header fields") }
            headers.append((name: string(head, lineStart..<colon), value: string(head, valueStart..<valueEnd)))
            lineStart = end + 2
        }
        return HTTPRequest(method: method, target: target, version: version, headers: headers)
    }
}
