import StreamOtterCore

/// What an operation needs on a channel.
public enum ChannelPermission: String, CaseIterable, Sendable, Hashable {
    case subscribe, publish, replay
}

/// Who is asking: the subject and roles of an authenticated connection.
public struct SecurityIdentity: Sendable, Equatable {
    /// The stable user id (`sub`), bound into `{sub}` patterns.
    public var subject: String
    /// Role names.
    public var roles: [String]

    public init(subject: String, roles: [String]) {
        self.subject = subject
        self.roles = roles
    }
}

/// Role-based channel permissions.
///
/// ## Text format
///
/// One statement per line; `#` starts a comment; blank lines are ignored.
///
///     # where roles come from in the token claims (dot path; default "roles")
///     claim realm_access.roles
///     # role NAME: PERMS on PATTERNS
///     role admin: publish, subscribe, replay on *
///     role reader: subscribe on orders.*, prices
///     role user: subscribe, publish on user.{sub}.inbox
///     role *: subscribe on public.*
///
/// - PERMS: a comma-separated subset of `subscribe`, `publish`, `replay`, or `all`.
/// - PATTERNS: comma-separated; `*` matches every channel; `prefix.*` matches every
///   channel that starts with `prefix.` followed by at least one character (not `prefix`
///   itself); anything else matches exactly. `*` may appear only in those two forms.
/// - `{sub}` anywhere in a pattern is replaced by the identity's subject before matching.
///   It matches only when the subject is non-empty and made of `[A-Za-z0-9_-]` (no `.`,
///   so one user cannot reach into another user's sub-tree); substituted text is always
///   literal, never a wildcard.
/// - `role *` grants to every authenticated identity. Several lines for one role add up.
/// - There are no deny rules: what is not granted is refused.
public struct ChannelPermissions: Sendable {
    /// One grant.
    public struct Rule: Sendable, Equatable {
        public var permissions: Set<ChannelPermission>
        public var pattern: String
    }

    /// Dot path of the roles claim (e.g. `realm_access.roles`).
    public var claimPath: [String]
    /// Grants by role name (`*` for everyone).
    public private(set) var rules: [String: [Rule]]

    /// An empty policy (refuses everything) reading roles from `claimPath`.
    public init(claimPath: String = "roles") {
        self.claimPath = claimPath.split(separator: ".").map(String.init)
        self.rules = [:]
    }

    /// Parses the text format above; errors name the line.
    public init(parsing text: String) throws {
        self.init()
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Substring(rawLine)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let trimmed = line.trimmingSpaces
            if trimmed.isEmpty { continue }
            func fail(_ why: String) -> SecurityConfigError { SecurityConfigError("permissions line \(lineNumber): \(why)") }
            if trimmed.hasPrefix("claim ") {
                let path = trimmed.dropFirst(6).trimmingSpaces
                guard !path.isEmpty, !path.contains(" ") else { throw fail("claim needs one dot path") }
                claimPath = path.split(separator: ".").map(String.init)
                continue
            }
            guard trimmed.hasPrefix("role ") else { throw fail("expected 'role NAME: PERMS on PATTERNS' or 'claim PATH'") }
            let body = trimmed.dropFirst(5)
            guard let colon = body.firstIndex(of: ":") else { throw fail("missing ':' after the role name") }
            let role = body[..<colon].trimmingSpaces
            guard !role.isEmpty, !role.contains(" ") else { throw fail("bad role name") }
            let rest = body[body.index(after: colon)...]
            let words = rest.split(separator: " ", omittingEmptySubsequences: true)
            guard let onIndex = words.firstIndex(of: "on") else { throw fail("missing 'on'") }
            let permText = words[..<onIndex].joined(separator: " ")
            let patternText = words[(onIndex + 1)...].joined(separator: " ")
            var perms = Set<ChannelPermission>()
            for p in permText.split(separator: ",") {
                let name = p.trimmingSpaces
                if name == "all" { perms.formUnion(ChannelPermission.allCases); continue }
                guard let perm = ChannelPermission(rawValue: name) else { throw fail("unknown permission '\(name)'") }
                perms.insert(perm)
            }
            guard !perms.isEmpty else { throw fail("no permissions") }
            let patterns = patternText.split(separator: ",").map { $0.trimmingSpaces }
            guard !patterns.isEmpty, !patterns.contains(where: { $0.isEmpty }) else { throw fail("no channel pattern") }
            for pattern in patterns {
                if let why = ChannelPermissions.validate(pattern: pattern) { throw fail(why) }
                add(role: role, permissions: perms, pattern: pattern)
            }
        }
    }

    /// Reads the text format from a file.
    public init(contentsOfFile path: String) throws {
        try self.init(parsing: try readFileText(path))
    }

    /// Adds one grant (the pattern is not validated; prefer the text format).
    public mutating func add(role: String, permissions: Set<ChannelPermission>, pattern: String) {
        rules[role, default: []].append(Rule(permissions: permissions, pattern: pattern))
    }

    /// Role names from token claims at `claimPath`: a string (split at spaces and commas)
    /// or an array of strings (non-strings ignored). Missing: no roles.
    public func roles(from claims: JSONValue) -> [String] {
        var v: JSONValue? = claims
        for part in claimPath { v = v?[part] }
        switch v {
        case .string(let s)?:
            return s.split(whereSeparator: { $0 == " " || $0 == "," }).map(String.init)
        case .array(let items)?:
            return items.compactMap { $0.stringValue }
        default:
            return []
        }
    }

    /// An identity from verified claims: `sub` and the roles at `claimPath`.
    public func identity(from claims: JSONValue) -> SecurityIdentity {
        SecurityIdentity(subject: claims["sub"]?.stringValue ?? "", roles: roles(from: claims))
    }

    /// True when one of the identity's roles (or `*`) grants `permission` on `channel`.
    public func allows(_ permission: ChannelPermission, channel: String, identity: SecurityIdentity) -> Bool {
        func check(_ role: String) -> Bool {
            guard let list = rules[role] else { return false }
            for rule in list where rule.permissions.contains(permission) {
                if ChannelPermissions.matches(pattern: rule.pattern, channel: channel, subject: identity.subject) { return true }
            }
            return false
        }
        if check("*") { return true }
        for role in identity.roles where role != "*" && check(role) { return true }
        return false
    }

    /// Pattern matching as documented on the type.
    public static func matches(pattern: String, channel: String, subject: String) -> Bool {
        if channel.isEmpty { return false }
        if pattern == "*" { return true }
        var literal = pattern
        var prefixMatch = false
        if literal.hasSuffix(".*") {
            literal.removeLast(1)  // keep the dot
            prefixMatch = true
        }
        if literal.contains("{sub}") {
            guard isSafeSubject(subject) else { return false }
            literal = literal.replacingAll("{sub}", with: subject)
        }
        if prefixMatch {
            return channel.utf8.count > literal.utf8.count && channel.hasPrefix(literal)
        }
        return channel == literal
    }

    static func isSafeSubject(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 200 && s.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
        }
    }

    static func validate(pattern: String) -> String? {
        if pattern == "*" { return nil }
        let body = pattern.hasSuffix(".*") ? String(pattern.dropLast(2)) : pattern
        if body.isEmpty { return "empty pattern prefix in '\(pattern)'" }
        if body.contains("*") { return "'*' is allowed only as the whole pattern or as a final '.*' in '\(pattern)'" }
        let withoutSub = body.replacingAll("{sub}", with: "x")
        if withoutSub.contains("{") || withoutSub.contains("}") { return "unknown placeholder in '\(pattern)' (only {sub})" }
        if withoutSub.contains(" ") { return "space in pattern '\(pattern)'" }
        return nil
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        let t = Array(target.utf8), s = Array(self.utf8)
        guard !t.isEmpty, s.count >= t.count else { return self }
        var out: [UInt8] = []
        var i = 0
        while i < s.count {
            if i + t.count <= s.count, s[i..<(i + t.count)].elementsEqual(t) {
                out += replacement.utf8
                i += t.count
            } else {
                out.append(s[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
