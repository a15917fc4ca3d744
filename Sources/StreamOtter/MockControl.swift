import CRdKafka
import Glibc

/// Fault injection on the embedded Kafka (librdkafka's mock cluster), driven by text lines.
/// `streamotter dev-kafka` reads them on stdin, so tests running the real binaries can take
/// brokers down, add latency, make requests fail and move partition leaders.
///
/// | command | effect (rdkafka_mock.h) |
/// |---|---|
/// | `broker-down ID` | disconnects broker ID and refuses new connections (`-1`: all); no leader change |
/// | `broker-up ID` | accepts connections again (`-1`: all) |
/// | `rtt ID MS` | adds MS milliseconds of round-trip time to broker ID (`-1`: all; 0 removes it) |
/// | `request-errors APIKEY CODE COUNT` | the next COUNT requests of APIKEY (0 Produce, 1 Fetch, 2 ListOffsets, 3 Metadata, ...) fail with CODE (a number or a name such as `NOT_LEADER_FOR_PARTITION`) |
/// | `clear-request-errors APIKEY` | forgets errors pushed for APIKEY |
/// | `leader TOPIC PARTITION BROKER` | makes BROKER the partition's leader (`-1`: leaderless) |
/// | `topic NAME PARTITIONS` | creates a topic |
/// | `ping` | answers `ok pong` (a synchronisation point) |
///
/// Every command is answered with one line: `ok <command>` or `error <message>`. Blank
/// lines and lines starting with `#` are ignored (no answer).
enum DevKafkaControl {
    static func run(_ raw: String, _ kafka: EmbeddedKafka) -> String {
        let line = raw.trimmingSpaces.replacingNewlines
        if line.isEmpty || line.hasPrefix("#") { return "" }
        let w = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let mc = kafka.cluster
        func int(_ i: Int) -> Int? { i < w.count ? Int(w[i]) : nil }
        func check(_ rc: rd_kafka_resp_err_t) -> String {
            rc == RD_KAFKA_RESP_ERR_NO_ERROR ? "ok \(line)" : "error \(line): \(KafkaError(rc))"
        }
        switch (w[0], w.count) {
        case ("ping", 1):
            return "ok pong"
        case ("broker-down", 2):
            guard let id = int(1) else { break }
            return check(rd_kafka_mock_broker_set_down(mc, Int32(id)))
        case ("broker-up", 2):
            guard let id = int(1) else { break }
            return check(rd_kafka_mock_broker_set_up(mc, Int32(id)))
        case ("rtt", 3):
            guard let id = int(1), let ms = int(2), ms >= 0 else { break }
            return check(rd_kafka_mock_broker_set_rtt(mc, Int32(id), Int32(ms)))
        case ("request-errors", 4):
            guard let api = int(1), api >= 0, api <= Int(Int16.max), let count = int(3), count >= 0, count <= 1_000_000,
                  let code = errorCode(w[2]) else { break }
            let errs = [rd_kafka_resp_err_t](repeating: code, count: count)
            errs.withUnsafeBufferPointer { rd_kafka_mock_push_request_errors_array(mc, Int16(api), count, $0.baseAddress) }
            return "ok \(line)"
        case ("clear-request-errors", 2):
            guard let api = int(1), api >= 0, api <= Int(Int16.max) else { break }
            rd_kafka_mock_clear_request_errors(mc, Int16(api))
            return "ok \(line)"
        case ("leader", 4):
            guard let p = int(2), let b = int(3) else { break }
            return check(rd_kafka_mock_partition_set_leader(mc, w[1], Int32(p), Int32(b)))
        case ("topic", 3):
            guard let n = int(2), n > 0, n <= 10_000 else { break }
            return check(rd_kafka_mock_topic_create(mc, w[1], Int32(n), 1))
        default:
            break
        }
        return "error bad command '\(line)': expected broker-down ID | broker-up ID | rtt ID MS | request-errors APIKEY CODE COUNT | clear-request-errors APIKEY | leader TOPIC PARTITION BROKER | topic NAME PARTITIONS | ping"
    }

    /// A librdkafka error code given as a number or a name (`NOT_LEADER_FOR_PARTITION`,
    /// `_TRANSPORT`, with or without the `RD_KAFKA_RESP_ERR_` prefix).
    static func errorCode(_ s: String) -> rd_kafka_resp_err_t? {
        if let n = Int32(s) { return rd_kafka_resp_err_t(rawValue: n) }
        var name = s.uppercased()
        if name.hasPrefix("RD_KAFKA_RESP_ERR_") { name = String(name.dropFirst(18)) }
        var descs: UnsafePointer<rd_kafka_err_desc>?
        var count = 0
        rd_kafka_get_err_descs(&descs, &count)
        guard let descs else { return nil }
        for i in 0..<count {
            if let n = descs[i].name, String(cString: n) == name { return descs[i].code }
        }
        return nil
    }
}

private extension String {
    var replacingNewlines: String {
        String(self.filter { $0 != "\n" && $0 != "\r" })
    }
}
