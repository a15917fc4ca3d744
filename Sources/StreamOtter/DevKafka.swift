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

    /// Runs one fault-injection command on the mock cluster (see `DevKafkaControl`).
    /// Returns the reply line: `ok ...` or `error ...`. Any thread.
    public func control(_ line: String) -> String {
        DevKafkaControl.run(line, kafka)
    }

    /// Reads control commands from stdin, one per line, on a background thread, and
    /// answers each with one line on stdout. Stops at end of input.
    public func serveControlOnStdin() {
        // The reader thread must not take SIGINT/SIGTERM (runUntilSignal waits for them):
        // block them here, before the thread inherits this thread's mask.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let me = Unmanaged.passRetained(self).toOpaque()
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            let dev = Unmanaged<DevKafka>.fromOpaque(arg!).takeRetainedValue()
            var line: UnsafeMutablePointer<CChar>? = nil
            var cap = 0
            while getline(&line, &cap, stdin) >= 0 {
                let text = String(cString: line!)
                let reply = dev.control(text)
                if reply.isEmpty { continue }
                fputs(reply + "\n", stdout)
                fflush(stdout)
            }
            free(line)
            return nil
        }, me)
        pthread_detach(t)
    }

    deinit { kafka.close() }
}
