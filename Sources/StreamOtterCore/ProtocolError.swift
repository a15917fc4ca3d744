/// A client request the server rejects; sent back as an `error` frame.
///
/// `code` is one of the stable, documented codes (`bad_request`, `unknown_op`,
/// `invalid_channel`, `invalid_from`, and the server's own such as `forbidden`);
/// `message` is human-readable; `id` is the request's id when it had a valid one.
public struct ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    public let code: String
    public let message: String
    public let id: String?

    public init(code: String, message: String, id: String?) {
        self.code = code
        self.message = message
        self.id = id
    }

    public var description: String { "\(code): \(message)" + (id.map { " (id \($0))" } ?? "") }
}
