// The C ABI: @_cdecl thunks only. Handles are Unmanaged references; errors become codes
// with a thread-local message. No behaviour lives here.
import Glibc
import StreamOtter
import CStreamOtterHeader

/// The one table of status codes: enum values, names, descriptions. Never renumber.
let statusTable: [(Int32, String, String)] = [
    (0, "SOT_OK", "success"),
    (-1, "SOT_ERR_INVALID_ARG", "invalid argument"),
    (-2, "SOT_ERR_CONFIG", "invalid configuration"),
    (-3, "SOT_ERR_STATE", "operation not valid in the object's current state"),
    (-4, "SOT_ERR_KAFKA", "Kafka error"),
    (-5, "SOT_ERR_IO", "I/O or system error"),
    (-6, "SOT_ERR_NOMEM", "out of memory"),
    (-7, "SOT_ERR_INTERNAL", "internal error"),
    (-8, "SOT_ERR_NOT_FOUND", "no such connection or object (unknown or closed)"),
    (-9, "SOT_ERR_IN_CALLBACK", "not allowed from inside one of the engine's callbacks"),
    (-10, "SOT_ERR_BAD_HANDLE", "not a live handle (already destroyed)"),
    (-11, "SOT_ERR_REFUSED", "the gateway or Kafka refused the request (see its code)"),
]

/// C strings for the table, allocated once and never freed (static storage for C).
let statusNames: [Int32: UnsafeMutablePointer<CChar>] = Dictionary(uniqueKeysWithValues: statusTable.map { ($0.0, strdup($0.1)!) })
let statusTexts: [Int32: UnsafeMutablePointer<CChar>] = Dictionary(uniqueKeysWithValues: statusTable.map { ($0.0, strdup($0.2)!) })
let unknownName = strdup("SOT_ERR_UNKNOWN")!
let unknownText = strdup("unknown status code")!
let versionString = strdup(StreamOtterVersion.string)!

// MARK: thread-local last error

let lastErrorKey: pthread_key_t = {
    var k = pthread_key_t()
    pthread_key_create(&k) { p in free(p) }
    return k
}()
let emptyString = strdup("")!

let lastStatusKey: pthread_key_t = {
    var k = pthread_key_t()
    pthread_key_create(&k, nil)
    return k
}()

func setLastError(_ msg: String, status: Int32 = -7) {
    free(pthread_getspecific(lastErrorKey))
    pthread_setspecific(lastErrorKey, strdup(msg))
    pthread_setspecific(lastStatusKey, UnsafeMutableRawPointer(bitPattern: Int(status) & 0xffff_ffff))
}

func fail(_ code: Int32, _ msg: String) -> Int32 {
    setLastError(msg, status: code)
    return code
}

@_cdecl("sot_last_status")
public func sot_last_status() -> Int32 {
    guard let p = pthread_getspecific(lastStatusKey) else { return 0 }
    return Int32(truncatingIfNeeded: Int(bitPattern: p))
}

func copyOut(_ s: String, _ dest: UnsafeMutablePointer<CChar>?, _ size: Int) {
    guard let dest, size > 0 else { return }
    let bytes = Array(s.utf8.prefix(size - 1))
    for (i, b) in bytes.enumerated() { dest[i] = CChar(bitPattern: b) }
    dest[bytes.count] = 0
}

func code(for e: Error) -> Int32 {
    guard let e = e as? StreamOtterError else { return -7 }
    switch e.kind {
    case .config: return -2
    case .state: return -3
    case .kafka: return -4
    case .io: return -5
    case .internalError: return -7
    }
}

@_cdecl("sot_version")
public func sot_version() -> UnsafePointer<CChar> { UnsafePointer(versionString) }

@_cdecl("sot_version_number")
public func sot_version_number() -> Int32 {
    Int32((StreamOtterVersion.major << 16) | (StreamOtterVersion.minor << 8) | StreamOtterVersion.patch)
}

@_cdecl("sot_err_name")
public func sot_err_name(_ status: Int32) -> UnsafePointer<CChar> { UnsafePointer(statusNames[status] ?? unknownName) }

@_cdecl("sot_strerror")
public func sot_strerror(_ status: Int32) -> UnsafePointer<CChar> { UnsafePointer(statusTexts[status] ?? unknownText) }

@_cdecl("sot_err_count")
public func sot_err_count() -> Int32 { Int32(statusTable.count) }

@_cdecl("sot_err_code_at")
public func sot_err_code_at(_ i: Int32) -> Int32 {
    guard i >= 0, Int(i) < statusTable.count else { return Int32.min }
    return statusTable[Int(i)].0
}

@_cdecl("sot_last_error")
public func sot_last_error() -> UnsafePointer<CChar> {
    if let p = pthread_getspecific(lastErrorKey) { return UnsafePointer(p.assumingMemoryBound(to: CChar.self)) }
    return UnsafePointer(emptyString)
}

// MARK: conf

final class ConfHandle {
    var entries: [(String, String)] = []
}

@_cdecl("sot_conf_new")
public func sot_conf_new() -> OpaquePointer? {
    OpaquePointer(Unmanaged.passRetained(ConfHandle()).toOpaque())
}

@_cdecl("sot_conf_set")
public func sot_conf_set(_ conf: OpaquePointer?, _ key: UnsafePointer<CChar>?, _ value: UnsafePointer<CChar>?,
                         _ errstr: UnsafeMutablePointer<CChar>?, _ errsize: Int) -> Int32 {
    guard let conf, let key, let value else {
        copyOut("conf, key and value must not be NULL", errstr, errsize)
        return fail(-1, "conf, key and value must not be NULL")
    }
    let h = Unmanaged<ConfHandle>.fromOpaque(UnsafeRawPointer(conf)).takeUnretainedValue()
    let k = String(cString: key), v = String(cString: value)
    // Validate against a scratch configuration so errors surface at set time.
    do {
        if ClientConfig.isClientKey(k) {
            var scratch = ClientConfig()
            try scratch.set(k, v)
        } else {
            var scratch = EngineConfig()
            try scratch.set(k, v)
        }
    } catch {
        copyOut("\(error)", errstr, errsize)
        return fail(-2, "\(error)")
    }
    h.entries.append((k, v))
    return 0
}

@_cdecl("sot_conf_get")
public func sot_conf_get(_ conf: OpaquePointer?, _ key: UnsafePointer<CChar>?, _ dest: UnsafeMutablePointer<CChar>?, _ size: Int) -> Int32 {
    guard let conf, let key, let dest, size > 0 else { return fail(-1, "conf, key and dest must not be NULL") }
    let h = Unmanaged<ConfHandle>.fromOpaque(UnsafeRawPointer(conf)).takeUnretainedValue()
    let k = String(cString: key)
    guard let v = h.entries.last(where: { $0.0 == k })?.1 else { return fail(-2, "'\(k)' is not set") }
    copyOut(v, dest, size)
    return 0
}

@_cdecl("sot_conf_destroy")
public func sot_conf_destroy(_ conf: OpaquePointer?) {
    guard let conf else { return }
    Unmanaged<ConfHandle>.fromOpaque(UnsafeRawPointer(conf)).release()
}

