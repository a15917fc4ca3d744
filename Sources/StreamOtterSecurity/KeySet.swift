/// A reloadable, thread-safe set of JWT verification keys.
///
/// Reads (`keys`) take a snapshot under a mutex and may happen on any thread; `reload()` and
/// `replace(with:)` swap the whole set at once, so a verification sees either the old or
/// the new set, never a mix. A failed reload keeps the old set.
public final class KeySet: @unchecked Sendable {
    /// Where keys come from; kept so `reload()` can read them again.
    public enum Source: Sendable {
        /// A PEM file (public keys and/or certificates), all with this id and algorithms
        /// (nil algorithms: every algorithm compatible with the key type).
        case pemFile(path: String, id: String?, algorithms: Set<JWTAlgorithm>?)
        /// A JWKS file (see `JWTKey.fromJWKS`).
        case jwksFile(path: String, algorithms: Set<JWTAlgorithm>?)
        /// A file whose whole content (trailing newline trimmed) is an HMAC secret.
        case hmacSecretFile(path: String, id: String?, algorithms: Set<JWTAlgorithm>)
        /// Keys given directly (kept as they are across reloads).
        case keys([JWTKey])
    }

    private let lock = Lock()
    private var current: [JWTKey]
    private var generationCounter: UInt64 = 1
    /// The configured sources.
    public let sources: [Source]

    /// Loads every source now; throws when any fails.
    public init(sources: [Source]) throws {
        self.sources = sources
        self.current = try KeySet.load(sources)
    }

    /// A fixed set of keys (reload re-applies the same keys).
    public convenience init(keys: [JWTKey]) {
        // Cannot throw: `.keys` sources do no I/O.
        try! self.init(sources: [.keys(keys)])
    }

    /// A snapshot of the current keys.
    public var keys: [JWTKey] { lock.withLock { current } }

    /// Increases by one at every successful reload or replace.
    public var generation: UInt64 { lock.withLock { generationCounter } }

    /// Reads all sources again and swaps the set atomically; on error the old set stays.
    /// Blocking file I/O: call from a worker or at a quiet moment, not per message.
    public func reload() throws {
        let fresh = try KeySet.load(sources)
        replace(with: fresh)
    }

    /// Swaps in `keys` atomically.
    public func replace(with keys: [JWTKey]) {
        lock.withLock {
            current = keys
            generationCounter += 1
        }
    }

    static func load(_ sources: [Source]) throws -> [JWTKey] {
        var out: [JWTKey] = []
        for source in sources {
            switch source {
            case .pemFile(let path, let id, let algs):
                do { out += try JWTKey.fromPEM(try readFileText(path), id: id, algorithms: algs) }
                catch let e as SecurityConfigError { throw SecurityConfigError("\(path): \(e.message)") }
            case .jwksFile(let path, let algs):
                do { out += try JWTKey.fromJWKS(try readFileText(path), algorithms: algs) }
                catch let e as SecurityConfigError { throw SecurityConfigError("\(path): \(e.message)") }
            case .hmacSecretFile(let path, let id, let algs):
                var bytes = try readFileBytes(path)
                while let last = bytes.last, last == 10 || last == 13 { bytes.removeLast() }
                do { out.append(try JWTKey.hmac(id: id, secret: bytes, algorithms: algs)) }
                catch let e as SecurityConfigError { throw SecurityConfigError("\(path): \(e.message)") }
            case .keys(let keys):
                out += keys
            }
        }
        return out
    }
}
