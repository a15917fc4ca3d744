/// A violation of RFC 6455 by the peer. `closeCode` is the code to send in our close frame
/// (1002 protocol error, 1007 invalid UTF-8, 1009 too big); `reason` is a short English
/// description suitable for the close frame's reason (at most 123 bytes).
public struct WSProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    public let closeCode: UInt16
    public let reason: String

    public init(closeCode: UInt16, reason: String) {
        self.closeCode = closeCode
        self.reason = reason
    }

    public var description: String { "WebSocket protocol error \(closeCode): \(reason)" }

    static func protocolError(_ reason: String) -> WSProtocolError { WSProtocolError(closeCode: 1002, reason: reason) }
    static func invalidUTF8(_ reason: String) -> WSProtocolError { WSProtocolError(closeCode: 1007, reason: reason) }
    static func tooBig(_ reason: String) -> WSProtocolError { WSProtocolError(closeCode: 1009, reason: reason) }
}
