/*
 * The transport ceiling: a plain TCP echo server on libuv, one loop thread. Every byte
 * read is written back (one write per read, no framing, no copying beyond libuv's own).
 * usage: tcp_echo [PORT]   (0 = ephemeral; prints "listening: tcp://127.0.0.1:PORT/")
 */
#include <uv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} wreq_t;

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    (void)h;
    (void)suggested;
    b->base = malloc(65536);
    b->len = 65536;
}

static void on_close(uv_handle_t *h) { free(h); }

static void on_write(uv_write_t *r, int status) {
    wreq_t *w = (wreq_t *)r;
    free(w->buf.base);
    free(w);
    (void)status;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    if (n > 0) {
        uv_buf_t out = uv_buf_init(b->base, (unsigned)n);
        int done = uv_try_write(s, &out, 1);
        if (done == n) {
            free(b->base);
            return;
        }
        if (done < 0 && done != UV_EAGAIN) {
            free(b->base);
            uv_close((uv_handle_t *)s, on_close);
            return;
        }
        if (done < 0) done = 0;
        wreq_t *w = malloc(sizeof *w);
        w->buf = uv_buf_init(b->base, (unsigned)n);
        uv_buf_t rest = uv_buf_init(b->base + done, (unsigned)(n - done));
        uv_write(&w->req, s, &rest, 1, on_write);
        return;
    }
    free(b->base);
    if (n < 0) uv_close((uv_handle_t *)s, on_close);
}

static void on_conn(uv_stream_t *server, int status) {
    if (status < 0) return;
    uv_tcp_t *c = malloc(sizeof *c);
    uv_tcp_init(server->loop, c);
    if (uv_accept(server, (uv_stream_t *)c) == 0) {
        uv_tcp_nodelay(c, 1);
        uv_read_start((uv_stream_t *)c, on_alloc, on_read);
    } else {
        uv_close((uv_handle_t *)c, on_close);
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(loop, &server);
    uv_ip4_addr("127.0.0.1", port, &addr);
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (!rc) rc = uv_listen((uv_stream_t *)&server, 4096, on_conn);
    if (rc) {
        fprintf(stderr, "tcp_echo: %s\n", uv_strerror(rc));
        return 1;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_getsockname(&server, (struct sockaddr *)&ss, &len);
    printf("listening: tcp://127.0.0.1:%d/\n", ntohs(((struct sockaddr_in *)&ss)->sin_port));
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);
}
