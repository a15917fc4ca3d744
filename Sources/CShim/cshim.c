#define _GNU_SOURCE
#include "cshim.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

rd_kafka_resp_err_t cshim_produce(rd_kafka_t *rk, const char *topic, int32_t partition,
                                  const void *key, size_t keylen,
                                  const void *value, size_t valuelen,
                                  rd_kafka_headers_t *headers, void *opaque, int64_t timestamp) {
    if (headers)
        return rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_TIMESTAMP(timestamp),
                                 RD_KAFKA_V_VALUE((void *)value, valuelen),
                                 RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_HEADERS(headers),
                                 RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    return rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_TIMESTAMP(timestamp),
                             RD_KAFKA_V_VALUE((void *)value, valuelen),
                             RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_OPAQUE(opaque),
                             RD_KAFKA_V_END);
}

int cshim_pipe(int fds[2]) {
    return pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0 ? 0 : -errno;
}

void cshim_drain_fd(int fd) {
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0) {
    }
}

int cshim_set_reuseport(int fd) {
    int one = 1;
    return setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0 ? 0 : -errno;
}

void cshim_ignore_sigpipe(void) {
    signal(SIGPIPE, SIG_IGN);
}
