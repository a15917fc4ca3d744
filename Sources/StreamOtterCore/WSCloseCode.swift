/// Close code rules (RFC 6455 section 7.4 and the IANA registry).
public enum WSCloseCode {
    /// True when a peer may send `code` in a close frame: 1000-1003, 1007-1014 and
    /// 3000-4999. 1004 (reserved), 1005/1006/1015 (never on the wire), anything below 1000,
    /// 1016-2999 and 5000+ are invalid.
    public static func isValidOnWire(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: return true
        default: return false
        }
    }
}
