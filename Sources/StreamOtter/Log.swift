import Glibc
import StreamOtterCore

/// Structured log events: one JSON object per line on stderr.
public enum Log {
    /// Minimum level printed: "debug", "info", "warn", "error", or "off". Process-wide
    /// (config key `log.level`); set before starting engines.
    nonisolated(unsafe) public static var level = "info"
    private static let order = ["debug": 0, "info": 1, "warn": 2, "error": 3, "off": 4]

    public static func event(_ level: String, _ name: String, _ fields: [String: String] = [:]) {
        guard (order[level] ?? 1) >= (order[Log.level] ?? 1) else { return }
        var out: [UInt8] = []
        out.reserveCapacity(128)
        out += Array("{\"ts\":\(wallClockMs()),\"level\":".utf8)
        JSON.appendString(level, to: &out)
        out += Array(",\"event\":".utf8)
        JSON.appendString(name, to: &out)
        for (k, v) in fields.sorted(by: { $0.key < $1.key }) {
            out.append(UInt8(ascii: ","))
            JSON.appendString(k, to: &out)
            out.append(UInt8(ascii: ":"))
            JSON.appendString(v, to: &out)
        }
        out += Array("}\n".utf8)
        out.withUnsafeBytes { b in _ = fwrite(b.baseAddress, 1, b.count, stderr) }
        fflush(stderr)
    }
}
