import Glibc

/// The library's version.
public enum StreamOtterVersion {
    public static let major = 0
    public static let minor = 1
    public static let patch = 0
    public static var string: String { "\(major).\(minor).\(patch)" }
}

/// Only the embedded Kafka (librdkafka's mock cluster), for tests and other programs.
public final class DevKafka {
    private let kafka: EmbeddedKafka
    public var bootstrapServers: String { kafka.bootstrapServers }

    /// `topics` are "NAME[:PARTITIONS]" specs.
    public init(brokers: Int, topics: [String]) throws {
        kafka = try EmbeddedKafka(brokers: brokers)
        for spec in topics {
            for part in spec.split(separator: ",") {
                let (name, n) = try EngineConfig.parseTopicSpec(String(part))
                try kafka.createTopic(name, partitions: n)
            }
        }
    }

    /// Blocks until SIGINT or SIGTERM.
    public func runUntilSignal() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        var sig: Int32 = 0
        sigwait(&set, &sig)
    }

    deinit { kafka.close() }
}
