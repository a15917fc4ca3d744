import COpenSSL
import Glibc
import StreamOtterCore

/// Why encryption or decryption failed. `reason` is a short stable code.
public enum MessageCipherError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No key with this id (decrypt), or no active key (encrypt).
    case unknownKey
    /// Too short, or an unknown format version.
    case malformed
    /// The tag did not verify: tampered ciphertext, nonce, tag, channel or wrong key.
    case authenticationFailed
    /// OpenSSL failed unexpectedly.
    case cryptoFailure

    public var reason: String {
        switch self {
        case .unknownKey: return "unknown_key"
        case .malformed: return "malformed"
        case .authenticationFailed: return "authentication_failed"
        case .cryptoFailure: return "crypto_failure"
        }
    }

    public var description: String { "message cipher: \(reason)" }
}

/// AES-256 keys by id, with one active key for encryption.
///
/// ## Key file format
///
/// One key per line: `KEYID BASE64KEY [active]`; `#` comments and blank lines ignored.
/// KEYID is `[A-Za-z0-9._-]{1,64}`; BASE64KEY is standard padded Base64 of exactly 32
/// random bytes (`openssl rand -base64 32`); exactly one line carries `active`.
///
///     # rotated 2026-03-01: k2 encrypts, k1 still decrypts older records
///     k1 q83vEjRWeJASNFZ4kBI0VniQEjRWeJASNFZ4kBI0Vng= 
///     k2 3q2+796tvu/erb7v3q2+796tvu/erb7v3q2+796tvu8= active
///
/// Rotation: add a new line marked `active`, move the marker, keep the old lines as long as
/// records encrypted with them must stay readable, then `reload()`.
public final class MessageKeyRing: @unchecked Sendable {
    private let lock = Lock()
    private var keys: [String: [UInt8]]
    private var active: String
    private let path: String?

    /// Keys given directly; `activeKeyID` must be one of them.
    public init(keys: [String: [UInt8]], activeKeyID: String) throws {
        try MessageKeyRing.check(keys, activeKeyID)
        self.keys = keys
        self.active = activeKeyID
        self.path = nil
    }

    /// Loads a key file (format above); `reload()` reads it again.
    public init(contentsOfFile path: String) throws {
        (keys, active) = try MessageKeyRing.parse(try readFileText(path))
        self.path = path
    }

    /// Parses key file text.
    public convenience init(parsing text: String) throws {
        let (k, a) = try MessageKeyRing.parse(text)
        try self.init(keys: k, activeKeyID: a)
    }

    /// Reads the key file again and swaps atomically; on error the old keys stay.
    public func reload() throws {
        guard let path = path else { return }
        let (k, a) = try MessageKeyRing.parse(try readFileText(path))
        lock.withLock { keys = k; active = a }
    }

    /// Replaces the keys atomically.
    public func replace(keys newKeys: [String: [UInt8]], activeKeyID: String) throws {
        try MessageKeyRing.check(newKeys, activeKeyID)
        lock.withLock { keys = newKeys; active = activeKeyID }
    }

    /// The active key id.
    public var activeKeyID: String { lock.withLock { active } }
    /// All key ids.
    public var keyIDs: [String] { lock.withLock { Array(keys.keys).sorted() } }

    func activeKey() -> (String, [UInt8])? { lock.withLock { keys[active].map { (active, $0) } } }
    func key(id: String) -> [UInt8]? { lock.withLock { keys[id] } }

    static func isValidID(_ id: String) -> Bool {
        let b = Array(id.utf8)
        return !b.isEmpty && b.count <= 64 && b.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        }
    }

    static func check(_ keys: [String: [UInt8]], _ active: String) throws {
        for (id, key) in keys {
            guard isValidID(id) else { throw SecurityConfigError("bad key id '\(id)' ([A-Za-z0-9._-]{1,64})") }
            guard key.count == 32 else { throw SecurityConfigError("key \(id) must be 32 bytes") }
        }
        guard keys[active] != nil else { throw SecurityConfigError("active key '\(active)' is not in the key set") }
    }

    static func parse(_ text: String) throws -> ([String: [UInt8]], String) {
        var keys: [String: [UInt8]] = [:]
        var active: String? = nil
        var n = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            n += 1
            var line = Substring(raw)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            if words.isEmpty { continue }
            guard words.count == 2 || (words.count == 3 && words[2] == "active") else {
                throw SecurityConfigError("key file line \(n): expected 'KEYID BASE64KEY [active]'")
            }
            guard isValidID(words[0]) else { throw SecurityConfigError("key file line \(n): bad key id") }
            guard let key = Base64.decode(words[1]), key.count == 32 else {
                throw SecurityConfigError("key file line \(n): key must be Base64 of 32 bytes")
            }
            guard keys[words[0]] == nil else { throw SecurityConfigError("key file line \(n): duplicate key id \(words[0])") }
            keys[words[0]] = key
            if words.count == 3 {
                guard active == nil else { throw SecurityConfigError("key file line \(n): more than one active key") }
                active = words[0]
            }
        }
        guard let a = active else { throw SecurityConfigError("key file: no key marked 'active'") }
        return (keys, a)
    }
}

/// The result of `MessageCipher.seal`.
public struct SealedMessage: Sendable, Equatable {
    /// Goes in the Kafka header `streamotter-key-id` (`MessageCipher.keyIDHeader`).
    public let keyID: String
    /// The record value (format on `MessageCipher`).
    public let bytes: [UInt8]
}

/// AES-256-GCM encryption of record values, bound to the channel.
///
/// ## Format (version 1)
///
///     byte 0        0x01 (format version)
///     bytes 1..12   random 96-bit nonce (RAND_bytes)
///     bytes 13..    ciphertext (same length as the plaintext)
///     last 16       GCM tag
///
/// Overhead: 29 bytes. The key id travels separately (Kafka header `streamotter-key-id`).
/// Additional authenticated data: the version byte, the key id, a 0 byte, then the channel
/// name (UTF-8). So a record cannot be moved to another channel, or relabelled with another
/// key id, without failing authentication. Decryption returns data only when the tag
/// verifies; otherwise it throws and nothing is returned.
///
/// Random nonces: keep each key under about 2^32 messages (NIST SP 800-38D); rotate
/// before that.
///
/// Keys come from a `MessageKeyRing` (key file) or from provider closures. Thread-safe.
public final class MessageCipher: @unchecked Sendable {
    /// The Kafka header carrying the key id.
    public static let keyIDHeader = "streamotter-key-id"
    /// Format version byte.
    public static let version: UInt8 = 1
    /// Bytes added to each value.
    public static let overhead = 1 + 12 + 16

    private let active: @Sendable (String) -> (String, [UInt8])?
    private let lookup: @Sendable (String) -> [UInt8]?
    private let cipher: OpaquePointer

    /// Keys from a key ring (the active key encrypts; every key decrypts).
    public convenience init(keyRing: MessageKeyRing) {
        self.init(activeKey: { _ in keyRing.activeKey() }, key: { keyRing.key(id: $0) })
    }

    /// Keys from closures: `activeKey(channel)` returns (key id, 32-byte key) to encrypt
    /// records of that channel; `key(id)` returns the 32-byte key for an id, or nil.
    /// Called on the encrypting/decrypting thread; must not block for long.
    public init(activeKey: @escaping @Sendable (String) -> (String, [UInt8])?, key: @escaping @Sendable (String) -> [UInt8]?) {
        self.active = activeKey
        self.lookup = key
        self.cipher = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil)
    }

    deinit { EVP_CIPHER_free(cipher) }

    static func aad(keyID: String, channel: String) -> [UInt8] {
        [version] + Array(keyID.utf8) + [0] + Array(channel.utf8)
    }

    /// Encrypts `plaintext` for `channel` with the active key.
    public func seal(_ plaintext: [UInt8], channel: String) throws -> SealedMessage {
        guard let (keyID, key) = active(channel), key.count == 32, MessageKeyRing.isValidID(keyID) else { throw MessageCipherError.unknownKey }
        var nonce = [UInt8](repeating: 0, count: 12)
        guard RAND_bytes(&nonce, 12) == 1 else { throw MessageCipherError.cryptoFailure }
        guard let ctx = EVP_CIPHER_CTX_new() else { throw MessageCipherError.cryptoFailure }
        defer { EVP_CIPHER_CTX_free(ctx) }
        guard EVP_EncryptInit_ex2(ctx, cipher, key, nonce, nil) == 1 else { throw MessageCipherError.cryptoFailure }
        var out = [UInt8](repeating: 0, count: MessageCipher.overhead + plaintext.count)
        out[0] = MessageCipher.version
        out.replaceSubrange(1..<13, with: nonce)
        let aad = MessageCipher.aad(keyID: keyID, channel: channel)
        var len: Int32 = 0
        let ok: Bool = out.withUnsafeMutableBufferPointer { o in
            var aadLen: Int32 = 0
            guard aad.withUnsafeBufferPointer({ EVP_EncryptUpdate(ctx, nil, &aadLen, $0.baseAddress, Int32($0.count)) == 1 }) else { return false }
            if !plaintext.isEmpty {
                guard plaintext.withUnsafeBufferPointer({ p in
                    EVP_EncryptUpdate(ctx, o.baseAddress! + 13, &len, p.baseAddress, Int32(p.count)) == 1
                }), Int(len) == plaintext.count else { return false }
            }
            var fin: Int32 = 0
            guard EVP_EncryptFinal_ex(ctx, o.baseAddress! + 13 + plaintext.count, &fin) == 1, fin == 0 else { return false }
            return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, o.baseAddress! + 13 + plaintext.count) == 1
        }
        guard ok else { OpenSSLError.clear(); throw MessageCipherError.cryptoFailure }
        return SealedMessage(keyID: keyID, bytes: out)
    }

    /// Decrypts a value sealed for `channel` with key `keyID`; throws on any mismatch.
    public func open(_ sealed: [UInt8], keyID: String, channel: String) throws -> [UInt8] {
        guard sealed.count >= MessageCipher.overhead, sealed[0] == MessageCipher.version else { throw MessageCipherError.malformed }
        guard let key = lookup(keyID), key.count == 32 else { throw MessageCipherError.unknownKey }
        guard let ctx = EVP_CIPHER_CTX_new() else { throw MessageCipherError.cryptoFailure }
        defer { EVP_CIPHER_CTX_free(ctx) }
        let n = sealed.count - MessageCipher.overhead
        var plain = [UInt8](repeating: 0, count: n)
        let aad = MessageCipher.aad(keyID: keyID, channel: channel)
        let ok: Bool = sealed.withUnsafeBufferPointer { s in
            plain.withUnsafeMutableBufferPointer { p in
                guard EVP_DecryptInit_ex2(ctx, cipher, key, s.baseAddress! + 1, nil) == 1 else { return false }
                var len: Int32 = 0
                guard aad.withUnsafeBufferPointer({ a in EVP_DecryptUpdate(ctx, nil, &len, a.baseAddress, Int32(a.count)) == 1 }) else { return false }
                if n > 0 {
                    guard EVP_DecryptUpdate(ctx, p.baseAddress, &len, s.baseAddress! + 13, Int32(n)) == 1 else { return false }
                }
                var tag = Array(s[(13 + n)...])
                guard EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, &tag) == 1 else { return false }
                var fin: Int32 = 0
                var scratch = [UInt8](repeating: 0, count: 16)
                return EVP_DecryptFinal_ex(ctx, &scratch, &fin) == 1
            }
        }
        OpenSSLError.clear()
        guard ok else {
            for i in plain.indices { plain[i] = 0 }
            throw MessageCipherError.authenticationFailed
        }
        return plain
    }
}
