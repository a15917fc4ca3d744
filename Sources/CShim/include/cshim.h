/* Internal helpers for C APIs that Swift cannot call directly (variadic functions,
 * unions). Not part of the public ABI: the linker version script keeps these local. */
#ifndef STREAMOTTER_CSHIM_H
#define STREAMOTTER_CSHIM_H
#include <stddef.h>
#include <stdint.h>
#include <librdkafka/rdkafka.h>
#include <uv.h>

/* Produces one record (copied) with CreateTime `timestamp` (ms since the epoch; 0: now).
 * On success librdkafka owns `headers` (may be NULL); on failure the caller still owns
 * them. Returns the librdkafka error code. */
rd_kafka_resp_err_t cshim_produce(rd_kafka_t *rk, const char *topic, int32_t partition,
                                  const void *key, size_t keylen,
                                  const void *value, size_t valuelen,
                                  rd_kafka_headers_t *headers, void *opaque, int64_t timestamp);

/* Creates a non-blocking, close-on-exec pipe; fds[0] read end, fds[1] write end. */
int cshim_pipe(int fds[2]);

/* Drains a non-blocking fd. */
void cshim_drain_fd(int fd);

/* Sets SO_REUSEPORT on a socket fd (before bind). Returns 0 or -errno. */
int cshim_set_reuseport(int fd);

/* Blocks SIGPIPE on the calling thread and ignores it process-wide. */
void cshim_ignore_sigpipe(void);

/* ---- TLS over memory BIOs (OpenSSL), driven by the loop: no blocking socket I/O. ---- */
#include <openssl/ssl.h>

/* A server context: certificate chain and key files, optional CA file for client
 * certificates (verify_mode 0 none, 1 request, 2 require), minimum version 12 or 13.
 * NULL on error with a message in err. */
SSL_CTX *cshim_tls_server_ctx(const char *cert_file, const char *key_file, const char *ca_file,
                              int verify_mode, int min_version, char *err, size_t errlen);
/* A client context that verifies the server (ca_file NULL: the system's trust store).
 * verify 0 disables verification (tests only). */
SSL_CTX *cshim_tls_client_ctx(const char *ca_file, int verify, int min_version, char *err, size_t errlen);
/* SNI: serve `ctxs[i]` to clients asking for `names[i]` (copied), default ctx otherwise. */
void cshim_tls_set_sni(SSL_CTX *default_ctx, int n, const char *const *names, SSL_CTX *const *ctxs);
/* A session with memory BIOs. For clients, `hostname` is sent as SNI and verified. */
SSL *cshim_tls_new(SSL_CTX *ctx, int server, const char *hostname);
/* 1 handshake done, 0 needs more input, -1 failed. */
int cshim_tls_handshake(SSL *ssl);
/* Ciphertext from the socket into the session. */
int cshim_tls_feed(SSL *ssl, const void *data, size_t len);
/* Plaintext out: >0 bytes, 0 needs more input, -1 error, -2 the peer closed (close_notify). */
int cshim_tls_read(SSL *ssl, void *buf, int len);
/* Plaintext in: bytes consumed or -1. */
int cshim_tls_write(SSL *ssl, const void *data, int len);
/* Ciphertext waiting to go to the socket, and taking it. */
size_t cshim_tls_pending_out(SSL *ssl);
int cshim_tls_take_out(SSL *ssl, void *buf, int len);
/* Queues a close_notify alert. */
void cshim_tls_shutdown(SSL *ssl);
/* The last OpenSSL error of this thread as text (static per thread). */
const char *cshim_tls_error(void);
/* The peer certificate's subject ("" without one). */
int cshim_tls_peer_subject(SSL *ssl, char *buf, size_t len);

/* Streaming 128-bit XXH3 with one state per thread: begin(seed), add fields, end. `add`
 * hashes the length before the bytes, so field boundaries count. */
void cshim_hash_begin(uint64_t seed);
void cshim_hash_add(const void *data, size_t len);
void cshim_hash_add_u64(uint64_t value);
void cshim_hash_end(uint64_t *lo, uint64_t *hi);
#endif
