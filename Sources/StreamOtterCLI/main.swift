import Glibc
import StreamOtter

let usage = """
usage: streamotter serve [--config FILE] [--listen HOST:PORT] [--brokers LIST]
                         [--kafka KEY=VALUE ...] [--set KEY=VALUE ...] [--topic NAME:PARTITIONS ...]
                         [--engines N] [--echo]
       streamotter dev-kafka [--brokers N] [--topic NAME:PARTITIONS ...]
       streamotter version

serve      runs the WebSocket <-> Kafka gateway. With no brokers it starts the embedded
           Kafka (librdkafka's mock cluster) and prints its bootstrap address.
           --engines N runs N engines (one loop thread each) on one port with SO_REUSEPORT.
           --echo runs a plain WebSocket echo server (no Kafka), for transport benchmarks.
dev-kafka  runs only the embedded Kafka, for tests and other programs. Reads fault-injection
           commands on stdin, one per line, and answers each with `ok ...` or `error ...`:
           broker-down ID | broker-up ID | rtt ID MS | request-errors APIKEY CODE COUNT |
           clear-request-errors APIKEY | leader TOPIC PARTITION BROKER | topic NAME PARTITIONS | ping
           (ID -1: every broker; brokers are numbered from 1).
"""

func fail(_ msg: String) -> Never {
    fputs("streamotter: \(msg)\n", stderr)
    exit(2)
}

func splitKV(_ s: String, _ flag: String) -> (String, String) {
    guard let eq = s.firstIndex(of: "=") else { fail("\(flag) expects KEY=VALUE, got '\(s)'") }
    return (String(s[..<eq]), String(s[s.index(after: eq)...]))
}

func readFile(_ path: String) -> String {
    guard let f = fopen(path, "r") else { fail("cannot open config file '\(path)': \(String(cString: strerror(errno)))") }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

func say(_ s: String) {
    print(s)
    fflush(stdout)
}

var args = Array(CommandLine.arguments.dropFirst())
guard let command = args.first else { fail(usage) }
args.removeFirst()

switch command {
case "serve":
    var config = EngineConfig()
    config.handleSignals = true
    var settings: [(String, String)] = []
    var engines = 1
    var i = 0
    func value() -> String {
        i += 1
        guard i < args.count else { fail("\(args[i - 1]) needs a value\n\(usage)") }
        return args[i]
    }
    while i < args.count {
        let a = args[i]
        switch a {
        case "--config":
            do { settings += try EngineConfig.parseFile(readFile(value())) } catch { fail("\(error)") }
        case "--listen": settings.append(("listen", value()))
        case "--brokers": settings.append(("kafka.bootstrap.servers", value()))
        case "--kafka":
            let (k, v) = splitKV(value(), "--kafka")
            settings.append(("kafka." + k, v))
        case "--set": settings.append(splitKV(value(), "--set"))
        case "--topic": settings.append(("embedded.topics", value()))
        case "--echo": settings.append(("mode", "echo"))
        case "--engines":
            guard let n = Int(value()), n >= 1, n <= 64 else { fail("--engines expects 1..64") }
            engines = n
        case "-h", "--help":
            say(usage)
            exit(0)
        default: fail("unknown option '\(a)'\n\(usage)")
        }
        i += 1
    }
    do {
        for (k, v) in settings { try config.set(k, v) }
    } catch { fail("\(error)") }
    // Sockets are file descriptors: take the hard limit, as servers do.
    var nofile = rlimit()
    if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max {
        nofile.rlim_cur = nofile.rlim_max
        _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &nofile)
    }
    config.enginesInProcess = engines
    var sharedKafka: DevKafka?
    if engines > 1 {
        config.reusePort = true
        // One embedded Kafka for all engines, outliving every one of them.
        if config.usesEmbeddedKafka && config.mode == "gateway" {
            do {
                let dev = try DevKafka(brokers: config.embeddedBrokers, topics: config.embeddedTopics.map { "\($0.0):\($0.1)" })
                try config.set("kafka.bootstrap.servers", dev.bootstrapServers)
                config.sharedEmbeddedKafka = true
                sharedKafka = dev
            } catch { fail("\(error)") }
        }
    }
    let engine = Engine(config: config)
    do { try engine.start() } catch { fail("\(error)") }
    var all = [engine]
    // More engines on the same port (SO_REUSEPORT), sharing the first one's Kafka.
    for _ in 1..<engines {
        var c = config
        c.listenPort = engine.port
        let e = Engine(config: c)
        do { try e.start() } catch { fail("\(error)") }
        all.append(e)
    }
    if config.mode == "gateway" {
        say("kafka: \(engine.isEmbeddedKafka ? "embedded " : "")bootstrap.servers=\(engine.bootstrapServers)")
    }
    say("listening: \(config.usesTLS ? "wss" : "ws")://\(engine.listenAddress)/\(engines > 1 ? " (\(engines) engines)" : "")")
    for e in all { e.wait() }
    withExtendedLifetime(sharedKafka) {}
    exit(0)

case "dev-kafka":
    var brokers = 3
    var topics: [String] = []
    var i = 0
    while i < args.count {
        switch args[i] {
        case "--brokers":
            i += 1
            guard i < args.count, let n = Int(args[i]), n > 0, n <= 16 else { fail("--brokers expects 1..16") }
            brokers = n
        case "--topic":
            i += 1
            guard i < args.count else { fail("--topic expects NAME:PARTITIONS") }
            topics.append(args[i])
        default: fail("unknown option '\(args[i])'\n\(usage)")
        }
        i += 1
    }
    do {
        let dev = try DevKafka(brokers: brokers, topics: topics)
        say("kafka: embedded bootstrap.servers=\(dev.bootstrapServers)")
        dev.serveControlOnStdin()
        dev.runUntilSignal()
        exit(0)
    } catch { fail("\(error)") }

case "version", "--version":
    say("streamotter \(StreamOtterVersion.string)")
case "-h", "--help", "help":
    say(usage)
default:
    fail("unknown command '\(command)'\n\(usage)")
}
