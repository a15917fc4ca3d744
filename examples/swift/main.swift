// Connects a client to a gateway, subscribes to a channel, publishes a few messages and
// prints what comes back.
//
//   swift run streamotter-example ws://127.0.0.1:8080/ orders
import StreamOtter

let args = CommandLine.arguments
let url = args.count > 1 ? args[1] : "ws://127.0.0.1:8080/"
let channel = args.count > 2 ? args[2] : "orders"

var config = EngineConfig()
try config.set("mode", "client")   // a loop for clients only: no listener, no Kafka
let engine = Engine(config: config)
try engine.start()

let client = try StreamClient(engine: engine, url: url)
client.onError = { print("client: \($0)") }
client.start()

let messages = try await client.messages(channel: channel, from: .latest)
for i in 0..<3 {
    let ack = try await client.publish(channel: channel, key: "swift-example", json: "{\"greeting\":\"hello from Swift\",\"n\":\(i)}")
    print("ack partition \(ack.partition) offset \(ack.offset)")
}
var received = 0
for try await m in messages {
    print("message \(m.channel)/\(m.partition)@\(m.offset): \(m.data.map { String(decoding: $0, as: UTF8.self) } ?? "(not JSON)")")
    received += 1
    if received == 3 { break }
}
client.close()
engine.stop()
engine.wait()
