/// A request the server refuses before it reaches any handler.
///
/// `status` is the HTTP status to answer with (400, 431, 505); `reason` is a short
/// human-readable detail ("obs-fold in header") for logs and the response body. The status
/// line phrase comes from `HTTPStatus.reasonPhrase(_:)`.
public struct HTTPError: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: Int
    public let reason: String

    public init(status: Int, reason: String) {
        self.status = status
        self.reason = reason
    }

    public var description: String { "HTTP \(status) \(HTTPStatus.reasonPhrase(status)): \(reason)" }

    static func badRequest(_ reason: String) -> HTTPError { HTTPError(status: 400, reason: reason) }
    static func tooLarge(_ reason: String) -> HTTPError { HTTPError(status: 431, reason: reason) }
}
