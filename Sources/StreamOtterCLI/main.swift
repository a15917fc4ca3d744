import Glibc
import StreamOtter

let usage = """
usage: streamotter serve [--config FILE] [--listen HOST:PORT] [--brokers LIST]
                         [--kafka KEY=VALUE ...] [--set KEY=VALUE ...] [--topic NAME:PARTITIONS ...]
       streamotter dev-kafka [--brokers N] [--topic NAME:PARTITIONS ...]
       streamotter version

serve      runs the WebSocket <-> Kafka gateway. With no brokers it starts the embedded
           Kafka (librdkafka's mock cluster) and prints its bootstrap address.
dev-kafka  runs only the embedded Kafka, for tests and other programs.
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
    let engine = Engine(config: config)
    do { try engine.start() } catch { fail("\(error)") }
    say("kafka: \(engine.isEmbeddedKafka ? "embedded " : "")bootstrap.servers=\(engine.bootstrapServers)")
    say("listening: ws://\(engine.listenAddress)/")
    engine.wait()
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
