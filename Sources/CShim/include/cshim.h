/* Internal helpers for C APIs that Swift cannot call directly (variadic functions,
 * unions). Not part of the public ABI: the linker version script keeps these local. */
#ifndef STREAMOTTER_CSHIM_H
#define STREAMOTTER_CSHIM_H
#include <stddef.h>
#include <stdint.h>
#include <librdkafka/rdkafka.h>
#include <uv.h>

/* Produces one record (copied). On success librdkafka owns `headers` (may be NULL); on
 * failure the caller still owns them. Returns the librdkafka error code. */
rd_kafka_resp_err_t cshim_produce(rd_kafka_t *rk, const char *topic, int32_t partition,
                                  const void *key, size_t keylen,
                                  const void *value, size_t valuelen,
                                  rd_kafka_headers_t *headers, void *opaque);

/* Creates a non-blocking, close-on-exec pipe; fds[0] read end, fds[1] write end. */
int cshim_pipe(int fds[2]);

/* Drains a non-blocking fd. */
void cshim_drain_fd(int fd);

/* Sets SO_REUSEPORT on a socket fd (before bind). Returns 0 or -errno. */
int cshim_set_reuseport(int fd);

/* Blocks SIGPIPE on the calling thread and ignores it process-wide. */
void cshim_ignore_sigpipe(void);
#endif
