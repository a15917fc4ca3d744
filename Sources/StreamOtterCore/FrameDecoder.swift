/// Incremental RFC 6455 frame decoder and message assembler, fed with bytes as read from
/// TCP at any split point.
///
/// Rules (violations throw `WSProtocolError`; after a throw the decoder stays failed and
/// every later `next()` throws the same error):
/// - RSV1-3 set (no extension is negotiated) -> 1002. Reserved opcode -> 1002.
/// - Masking: with `requireMasked` every frame must be masked, otherwise none may be -> 1002.
/// - Control frame with FIN=0 or payload > 125 -> 1002. Control frames may arrive between
///   the fragments of a message and are delivered at once.
/// - Continuation without an open message, or text/binary while one is open -> 1002.
/// - 64-bit length with the top bit set -> 1002; length > `maxFrameSize` -> 1009. Both are
///   decided from the header alone: no payload is waited for or allocated.
/// - Message larger than `maxMessageSize`, summed over fragments -> 1009, checked at each
///   fragment header.
/// - Text is validated as UTF-8 as its bytes arrive, across fragments and `append` calls
///   (invalid text fails before the rest of the frame or message arrives); an invalid
///   sequence, or one left unfinished by the final fragment -> 1007.
/// - Close body of 1 byte -> 1002; invalid close code -> 1002 (see `WSCloseCode`);
///   reason not UTF-8 -> 1007.
///
/// Memory: one growable buffer with a read index; consumed bytes are dropped when the
/// buffer empties or the dead prefix dominates, and a capacity above 64 KiB is released
/// once the buffer is empty. Payloads are unmasked in place as they arrive; the only
/// per-frame allocation is the delivered message array.
///
/// Threading: a value type with no shared state; use from one thread at a time.
public struct FrameDecoder: Sendable {
    /// The parsed fixed part of a frame.
    struct FrameHeader: Sendable {
        var fin: Bool
        var opcode: WSOpcode
        var maskKey: UInt32?
        var payloadLength: Int
        var headerLength: Int
    }

    /// Where the decoder is in the byte stream.
    enum ReadState: Sendable {
        /// Waiting for (the rest of) a frame header.
        case awaitingHeader
        /// Header validated; waiting until the whole payload is buffered. The first
        /// `processed` payload bytes are already unmasked (and, for text, UTF-8 validated).
        case awaitingPayload(FrameHeader, processed: Int)
        /// A protocol violation was seen; terminal.
        case failed(WSProtocolError)
    }

    /// Reassembly of a fragmented data message.
    enum MessageState: Sendable {
        /// No fragmented message open.
        case idle
        /// A fragmented text message is open; bytes so far in `message`.
        case text
        /// A fragmented binary message is open; bytes so far in `message`.
        case binary
    }

    public let limits: WSLimits
    private var buffer: [UInt8] = []
    private var readIndex = 0
    private var readState: ReadState = .awaitingHeader
    private var messageState: MessageState = .idle
    private var message: [UInt8] = []
    private var utf8 = UTF8Validator()

    /// Once this many consumed bytes sit before the read index (and they are at least half
    /// of the buffer) they are moved out on the next append.
    private static let compactThreshold = 4096
    /// Buffer capacity kept after the buffer empties; a larger one is released.
    private static let retainedCapacity = 1 << 16

    public init(limits: WSLimits) {
        self.limits = limits
    }

    /// Bytes currently buffered and not yet consumed (for memory accounting), plus the part
    /// of a fragmented message assembled so far.
    public var bufferedBytes: Int { buffer.count - readIndex + message.count }

    /// Appends bytes as read from TCP (any split point). Ignored once the decoder failed.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if case .failed = readState { return }
        if bytes.isEmpty { return }
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        } else if readIndex >= FrameDecoder.compactThreshold && readIndex * 2 >= buffer.count {
            buffer.removeSubrange(0..<readIndex)
            readIndex = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// Appends bytes as read from TCP (any split point).
    public mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    /// The next complete event, or nil when more bytes are needed.
    public mutating func next() throws -> WSEvent? {
        do {
            return try nextEvent()
        } catch let error as WSProtocolError {
            if case .failed = readState {} else { fail(error) }
            throw error
        }
    }

    private mutating func nextEvent() throws -> WSEvent? {
        while true {
            switch readState {
            case .failed(let error):
                throw error
            case .awaitingHeader:
                guard let header = try parseHeader() else { return nil }
                if header.opcode == .text { utf8.reset() }
                readState = .awaitingPayload(header, processed: 0)
            case .awaitingPayload(let header, let processed):
                let payloadStart = readIndex + header.headerLength
                let available = min(buffer.count - payloadStart, header.payloadLength)
                if available > processed {
                    try unmaskAndValidate(header, payloadStart: payloadStart, from: processed, to: available)
                }
                if available < header.payloadLength {
                    readState = .awaitingPayload(header, processed: max(available, processed))
                    return nil
                }
                readIndex = payloadStart + header.payloadLength
                readState = .awaitingHeader
                let event = try finishFrame(header, payload: payloadStart..<readIndex)
                if readIndex == buffer.count && buffer.capacity > FrameDecoder.retainedCapacity {
                    // Do not keep a large frame's worth of memory per idle connection.
                    buffer = []
                    readIndex = 0
                }
                if let event = event { return event }
            }
        }
    }

    /// Unmasks payload bytes `from..<to` in place as they arrive; text payloads are fed to
    /// the UTF-8 validator at the same time so invalid text fails before the frame ends.
    private mutating func unmaskAndValidate(_ header: FrameHeader, payloadStart: Int, from: Int, to: Int) throws {
        let range = (payloadStart + from)..<(payloadStart + to)
        let isText = header.opcode == .text || (header.opcode == .continuation && messageState == .text)
        let valid: Bool = buffer.withUnsafeMutableBytes { raw in
            let part = UnsafeMutableRawBufferPointer(rebasing: raw[range])
            if let key = header.maskKey { FrameEncoder.applyMask(part, key: key, offset: from) }
            return isText ? utf8.feed(UnsafeRawBufferPointer(part)) : true
        }
        if !valid { throw WSProtocolError.invalidUTF8("invalid UTF-8 in text message") }
    }

    private mutating func fail(_ error: WSProtocolError) {
        readState = .failed(error)
        buffer = []
        readIndex = 0
        message = []
    }

    /// Parses and validates the header at the read index; nil if incomplete.
    private func parseHeader() throws -> FrameHeader? {
        let available = buffer.count - readIndex
        if available < 2 { return nil }
        return try buffer.withUnsafeBytes { raw -> FrameHeader? in
            let b0 = raw[readIndex]
            let b1 = raw[readIndex + 1]
            if b0 & 0x70 != 0 { throw WSProtocolError.protocolError("reserved bits set") }
            guard let opcode = WSOpcode(rawValue: b0 & 0x0F) else {
                throw WSProtocolError.protocolError("reserved opcode")
            }
            let fin = b0 & 0x80 != 0
            let masked = b1 & 0x80 != 0
            if masked != limits.requireMasked {
                throw WSProtocolError.protocolError(masked ? "masked frame from server" : "unmasked frame from client")
            }
            let length7 = Int(b1 & 0x7F)
            if opcode.isControl {
                if !fin { throw WSProtocolError.protocolError("fragmented control frame") }
                if length7 > 125 { throw WSProtocolError.protocolError("control frame too long") }
            }
            var headerLength = 2
            var payloadLength: Int
            if length7 == 126 {
                if available < 4 { return nil }
                payloadLength = Int(raw[readIndex + 2]) << 8 | Int(raw[readIndex + 3])
                headerLength = 4
            } else if length7 == 127 {
                if available < 10 { return nil }
                if raw[readIndex + 2] & 0x80 != 0 { throw WSProtocolError.protocolError("64-bit length with top bit set") }
                var length: UInt64 = 0
                for i in 0..<8 { length = length << 8 | UInt64(raw[readIndex + 2 + i]) }
                // length < 2^63, so it fits in Int on 64-bit platforms; clamp elsewhere.
                payloadLength = length > UInt64(Int.max) ? Int.max : Int(length)
                headerLength = 10
            } else {
                payloadLength = length7
            }
            if payloadLength > limits.maxFrameSize { throw WSProtocolError.tooBig("frame too big") }
            switch (opcode, messageState) {
            case (.continuation, .idle):
                throw WSProtocolError.protocolError("continuation without a message")
            case (.text, .text), (.text, .binary), (.binary, .text), (.binary, .binary):
                throw WSProtocolError.protocolError("new message inside a fragmented message")
            case (.text, .idle), (.binary, .idle):
                if payloadLength > limits.maxMessageSize { throw WSProtocolError.tooBig("message too big") }
            case (.continuation, _):
                if payloadLength > limits.maxMessageSize - message.count { throw WSProtocolError.tooBig("message too big") }
            default:
                break
            }
            var maskKey: UInt32? = nil
            if masked {
                if available < headerLength + 4 { return nil }
                var key: UInt32 = 0
                for i in 0..<4 { key = key << 8 | UInt32(raw[readIndex + headerLength + i]) }
                maskKey = key
                headerLength += 4
            }
            return FrameHeader(fin: fin, opcode: opcode, maskKey: maskKey, payloadLength: payloadLength, headerLength: headerLength)
        }
    }

    /// Turns a complete, already unmasked (and for text, validated) payload into an event,
    /// or into more of an open message (nil).
    private mutating func finishFrame(_ header: FrameHeader, payload range: Range<Int>) throws -> WSEvent? {
        switch header.opcode {
        case .ping:
            return .ping(Array(buffer[range]))
        case .pong:
            return .pong(Array(buffer[range]))
        case .close:
            return try closeEvent(range)
        case .text:
            if header.fin {
                if !utf8.isAtBoundary { throw WSProtocolError.invalidUTF8("text message ends inside a UTF-8 sequence") }
                return .text(Array(buffer[range]))
            }
            messageState = .text
            message.append(contentsOf: buffer[range])
            return nil
        case .binary:
            if header.fin { return .binary(Array(buffer[range])) }
            messageState = .binary
            message.append(contentsOf: buffer[range])
            return nil
        case .continuation:
            if header.fin && messageState == .text && !utf8.isAtBoundary {
                throw WSProtocolError.invalidUTF8("text message ends inside a UTF-8 sequence")
            }
            message.append(contentsOf: buffer[range])
            if !header.fin { return nil }
            let complete = message
            message = []
            let state = messageState
            messageState = .idle
            return state == .text ? .text(complete) : .binary(complete)
        }
    }

    private func closeEvent(_ range: Range<Int>) throws -> WSEvent {
        if range.isEmpty { return .close(code: nil, reason: []) }
        if range.count == 1 { throw WSProtocolError.protocolError("close frame with 1-byte body") }
        let code = UInt16(buffer[range.lowerBound]) << 8 | UInt16(buffer[range.lowerBound + 1])
        if !WSCloseCode.isValidOnWire(code) { throw WSProtocolError.protocolError("invalid close code \(code)") }
        let reasonRange = (range.lowerBound + 2)..<range.upperBound
        let valid = buffer.withUnsafeBytes { raw in UTF8Validator.isValid(UnsafeRawBufferPointer(rebasing: raw[reasonRange])) }
        if !valid { throw WSProtocolError.invalidUTF8("invalid UTF-8 in close reason") }
        return .close(code: code, reason: Array(buffer[reasonRange]))
    }
}
