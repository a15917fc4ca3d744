import COpenSSL
import CRdKafka
import CUV

/// Versions of the C libraries the engine is bound to at run time (inside a host that
/// exports its own libuv or OpenSSL, this shows which copies were bound).
public func runtimeLibraryInfo() -> String {
    let uv = String(cString: uv_version_string())
    let ssl = String(cString: OpenSSL_version(Int32(OPENSSL_VERSION)))
    let rk = String(cString: rd_kafka_version_str())
    return "libuv \(uv); \(ssl); librdkafka \(rk)"
}
