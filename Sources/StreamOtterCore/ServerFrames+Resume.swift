extension ServerFrames {
    /// The frame sent to a subscriber that is closed for falling behind (right before
    /// Close 1008): the next offset of every partition of every subscription, in the shape
    /// `subscribe` accepts as `from`:
    ///
    /// `{"op":"error","code":"slow_consumer","message":"...","positions":{"orders":{"0":43,"1":8}}}`
    ///
    /// Messages queued before this frame are still delivered ahead of it, so the positions
    /// continue exactly after the last message the client receives.
    public static func slowConsumer(positions: [(String, [(Int32, Int64)])], limit: Int) -> [UInt8] {
        var out = Array(#"{"op":"error","code":"slow_consumer","message":"#.utf8)
        JSON.appendString("outbound buffer over \(limit) bytes: resubscribe with from={\"offsets\":positions[channel]}", to: &out)
        out.append(contentsOf: #","positions":{"#.utf8)
        for (i, (channel, offsets)) in positions.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            JSON.appendString(channel, to: &out)
            out.append(contentsOf: ":{".utf8)
            for (j, (p, o)) in offsets.enumerated() {
                if j > 0 { out.append(UInt8(ascii: ",")) }
                out.append(contentsOf: "\"\(p)\":\(o)".utf8)
            }
            out.append(UInt8(ascii: "}"))
        }
        out.append(contentsOf: "}}".utf8)
        return out
    }
}
