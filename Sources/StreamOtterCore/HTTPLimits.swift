/// Limits on a request head enforced by `HTTPRequestParser` (both answered with 431).
public struct HTTPLimits: Sendable {
    /// Largest request head in bytes, request line and final CRLFCRLF included.
    public var maxHeaderBytes: Int = 8192
    /// Most header fields accepted.
    public var maxHeaderCount: Int = 64

    public init(maxHeaderBytes: Int = 8192, maxHeaderCount: Int = 64) {
        self.maxHeaderBytes = maxHeaderBytes
        self.maxHeaderCount = maxHeaderCount
    }
}
