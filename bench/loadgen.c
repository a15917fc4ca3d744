/*
 * StreamOtter load generator: a WebSocket client on libuv, written to stay out of the way
 * of the server it measures (no allocation on the message path, one write per connection
 * per loop turn, frames parsed in place).
 *
 * Modes
 *   ingest       N connections publish streamotter.v1 messages (value of S bytes) with a
 *                window of W unacknowledged publishes each: acked msgs/s, ack latency.
 *   echo         N connections send S-byte messages and wait for them back (window W):
 *                round trips/s and round-trip latency. --proto raw (any WebSocket echo
 *                server) or tcp (plain TCP echo: unmasked frames, no handshake).
 *   fanout       --subs N subscribers, --pubs P publishers. sot: subscribe to --channel,
 *                publish through the gateway. raw: subscribers connect to --sub-path,
 *                publishers send to --pub-path (a pub/sub server such as uWebSockets).
 *                Each record carries its send time: deliveries/s, produce-to-delivery
 *                latency. --rate R publishes R records/s (open loop, send times are the
 *                scheduled times, so queueing delay counts); without it, publishers keep
 *                at most W records not yet delivered to every subscriber.
 *   connections  opens N connections (several --src addresses if ports run short), reports
 *                the connect rate and the servers' RSS (--pids), holds them until stdin
 *                closes (--hold-stdin) or --hold seconds.
 *
 * Every result carries the generator's own CPU use (getrusage over the measured window)
 * and the CPU use of the processes named by --pids. A summary line goes to stdout, one
 * JSON object per run is appended to --results.
 */
#define _GNU_SOURCE
#include <uv.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#include "hist.h"

/* ------------------------------------------------------------------ options */
enum { M_INGEST, M_ECHO, M_FANOUT, M_CONNECTIONS };
enum { P_SOT, P_RAW, P_TCP };

static struct {
    int mode, proto;
    char host[64];
    int ports[16], nports;
    char path[256], sub_path[256], pub_path[256];
    char subprotocol[64];
    char channel[128];
    int conns, subs, pubs;
    int size, window;
    double rate;
    double duration, warmup, drain;
    char *srcs[32];
    int nsrcs;
    int concurrency;
    int threads;
    int pids[16], npids;
    char system[128], label[256], results[512];
    double hold;
    int hold_stdin;
    double connect_timeout;
    int quiet;
} opt;

/* ------------------------------------------------------------------ shared state */
static atomic_int g_phase;            /* 0 connecting, 1 running, 2 stop sending */
static uint64_t g_t0, g_meas_start, g_meas_end;
static atomic_int g_ready, g_failed, g_closed_early;
static atomic_uint_fast64_t g_pub_sent;   /* fanout: records published (all time) */
static atomic_uint_fast64_t g_deliv_all;  /* fanout: deliveries (all time) */
static atomic_uint_fast64_t g_acks_all;
static int g_total_conns, g_nsubs;

static inline uint64_t now_ns(void) { return uv_hrtime(); }

/* ------------------------------------------------------------------ buffers */
typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t n = b->cap ? b->cap : 4096;
    while (n < b->len + extra) n *= 2;
    b->p = realloc(b->p, n);
    if (!b->p) { perror("realloc"); exit(1); }
    b->cap = n;
}

/* ------------------------------------------------------------------ connections */
enum { R_LOAD, R_SUB, R_PUB, R_IDLE };
enum { S_INIT, S_CONNECTING, S_HANDSHAKE, S_SUBSCRIBING, S_OPEN, S_CLOSED };

struct worker;

typedef struct conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    struct worker *w;
    int idx, role, state, port;
    buf_t in;                 /* unparsed bytes carried between reads */
    buf_t out, outw;          /* queued this turn / being written */
    int writing, dirty;
    uint32_t mask;
    uint64_t seq;
    int inflight;
    int frag_op;              /* opcode of a fragmented message in progress */
    uint64_t frag_t;          /* timestamp found in its first fragment */
} conn_t;

typedef struct worker {
    int id;
    uv_loop_t loop;
    pthread_t th;
    conn_t **conns;
    int nconns, next_connect, connecting;
    conn_t **senders;         /* connections that send (load or pub) */
    int nsenders, rr;
    uv_timer_t tick;
    uv_check_t check;
    uv_async_t wake;
    char *rbuf;
    size_t rbuf_size;
    hist_t lat, lat2;         /* lat: the main latency; lat2: publish acks in fanout */
    uint64_t msgs, msgs2;     /* within the measured window */
    uint64_t errors, sent;
    double rate_share;
    uint64_t rate_sent;
    int started;
    int dirty_n;
    conn_t **dirty;
    char errsample[256];
} worker_t;

static worker_t *workers;
static char *g_pad;           /* 'x' * size */

static void conn_flush(conn_t *c);
static void start_connect(worker_t *w);
static void fill_window(conn_t *c);

static void mark_dirty(conn_t *c) {
    if (c->dirty) return;
    c->dirty = 1;
    c->w->dirty[c->w->dirty_n++] = c;
}

static void flush_dirty(worker_t *w) {
    for (int i = 0; i < w->dirty_n; i++) {
        conn_t *c = w->dirty[i];
        c->dirty = 0;
        conn_flush(c);
    }
    w->dirty_n = 0;
}

static void on_write(uv_write_t *req, int status) {
    conn_t *c = req->data;
    c->writing = 0;
    c->outw.len = 0;
    if (status < 0) {
        if (c->state != S_CLOSED) {
            c->state = S_CLOSED;
            if (atomic_load(&g_phase) < 2) atomic_fetch_add(&g_closed_early, 1);
        }
        return;
    }
    if (c->out.len) conn_flush(c);
}

static void conn_flush(conn_t *c) {
    if (c->writing || c->out.len == 0 || c->state == S_CLOSED) return;
    buf_t t = c->outw;
    c->outw = c->out;
    c->out = t;
    c->out.len = 0;
    uv_buf_t b = uv_buf_init(c->outw.p, (unsigned)c->outw.len);
    /* Most writes complete at once: skip the request when they do. */
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)c->outw.len) {
        c->outw.len = 0;
        return;
    }
    if (n > 0) {
        b.base += n;
        b.len -= (size_t)n;
    } else if (n != UV_EAGAIN && n < 0) {
        c->outw.len = 0;
        if (c->state != S_CLOSED) {
            c->state = S_CLOSED;
            if (atomic_load(&g_phase) < 2) atomic_fetch_add(&g_closed_early, 1);
        }
        return;
    }
    c->writing = 1;
    c->wreq.data = c;
    uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
}

/* Appends one client frame (masked unless plain TCP) carrying `len` payload bytes written
 * by the caller at the returned pointer; call frame_finish after writing them. */
static char *frame_begin(conn_t *c, int opcode, size_t len, size_t *hdr_out) {
    buf_reserve(&c->out, len + 14);
    unsigned char *h = (unsigned char *)c->out.p + c->out.len;
    int masked = opt.proto != P_TCP;
    size_t hl = 2;
    h[0] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        h[1] = (unsigned char)len;
    } else if (len < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        hl = 10;
    }
    if (masked) {
        h[1] |= 0x80;
        memcpy(h + hl, &c->mask, 4);
        hl += 4;
    }
    *hdr_out = hl;
    return (char *)h + hl;
}

static void frame_finish(conn_t *c, char *payload, size_t len, size_t hl) {
    if (opt.proto != P_TCP) {
        uint32_t m = c->mask;
        uint64_t m8 = ((uint64_t)m << 32) | m;
        size_t i = 0;
        for (; i + 8 <= len; i += 8) {
            uint64_t v;
            memcpy(&v, payload + i, 8);
            v ^= m8;
            memcpy(payload + i, &v, 8);
        }
        const unsigned char *mk = (const unsigned char *)&m;
        for (; i < len; i++) payload[i] ^= (char)mk[i & 3];
    }
    c->out.len += hl + len;
    mark_dirty(c);
}

/* The record value: {"t":<send ns>,"p":"xxx..."} of exactly opt.size bytes (at least the
 * minimum that holds the timestamp). */
static size_t write_value(char *dst, uint64_t t) {
    int n = sprintf(dst, "{\"t\":%" PRIu64 ",\"p\":\"", t);
    int pad = opt.size - n - 2;
    if (pad < 0) pad = 0;
    memcpy(dst + n, g_pad, (size_t)pad);
    n += pad;
    dst[n++] = '"';
    dst[n++] = '}';
    return (size_t)n;
}

static void send_message(conn_t *c, uint64_t t) {
    char tmp[256];
    size_t hl;
    worker_t *w = c->w;
    size_t vmax = (size_t)opt.size + 64;
    if (opt.proto == P_SOT) {
        /* {"op":"publish","id":"<t>","channel":"<ch>","key":"kNN","data":<value>} */
        int n = snprintf(tmp, sizeof tmp, "{\"op\":\"publish\",\"id\":\"%" PRIu64 "\",\"channel\":\"%s\",\"key\":\"k%02d\",\"data\":",
                         t, opt.channel, (int)((c->seq * 7 + (uint64_t)c->idx) % 100));
        size_t cap = (size_t)n + vmax + 1;
        static __thread char *side = NULL;
        static __thread size_t side_cap = 0;
        if (side_cap < cap + 8) {
            side_cap = cap + 64;
            side = realloc(side, side_cap);
        }
        memcpy(side, tmp, (size_t)n);
        size_t len = (size_t)n + write_value(side + n, t);
        side[len++] = '}';
        char *p = frame_begin(c, 1, len, &hl);
        memcpy(p, side, len);
        frame_finish(c, p, len, hl);
    } else {
        static __thread char *side = NULL;
        static __thread size_t side_cap = 0;
        if (side_cap < vmax + 8) {
            side_cap = vmax + 64;
            side = realloc(side, side_cap);
        }
        size_t len = write_value(side, t);
        char *p = frame_begin(c, 1, len, &hl);
        memcpy(p, side, len);
        frame_finish(c, p, len, hl);
    }
    c->seq++;
    c->inflight++;
    w->sent++;
    if (c->role == R_PUB) atomic_fetch_add_explicit(&g_pub_sent, 1, memory_order_relaxed);
}

static void send_subscribe(conn_t *c) {
    char tmp[512];
    size_t hl;
    int n = snprintf(tmp, sizeof tmp, "{\"op\":\"subscribe\",\"id\":\"s%d\",\"channel\":\"%s\",\"from\":\"latest\"}", c->idx, opt.channel);
    char *p = frame_begin(c, 1, (size_t)n, &hl);
    memcpy(p, tmp, (size_t)n);
    frame_finish(c, p, (size_t)n, hl);
}

static void send_pong(conn_t *c, const char *data, size_t len) {
    size_t hl;
    char *p = frame_begin(c, 10, len, &hl);
    memcpy(p, data, len);
    frame_finish(c, p, len, hl);
}

/* Throughput counts what completes inside the measured window; latency only counts what was
 * also sent inside it (a record sent during the warm-up, e.g. while the producer was still
 * looking up metadata, says nothing about the steady state). */
static inline int in_window(uint64_t t) { return t >= g_meas_start && t < g_meas_end; }
static inline int sent_in_window(uint64_t t) { return t >= g_meas_start && t < g_meas_end; }

static uint64_t parse_u64(const char *p, const char *end) {
    uint64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
    return v;
}

static uint64_t find_t(const char *p, size_t len) {
    const char *q = memmem(p, len, "{\"t\":", 5);
    if (!q) return 0;
    return parse_u64(q + 5, p + len);
}

static void mark_ready(conn_t *c) {
    worker_t *w = c->w;
    c->state = S_OPEN;
    w->connecting--;
    atomic_fetch_add(&g_ready, 1);
    start_connect(w);
}

/* One complete text/binary message (or the first fragment's payload for t). */
static void on_message(conn_t *c, const char *p, size_t len, uint64_t t_hint) {
    worker_t *w = c->w;
    uint64_t now = now_ns();
    if (c->state == S_SUBSCRIBING) {
        if (len >= 11 && memcmp(p, "{\"op\":\"ok\"", 10) == 0) {
            mark_ready(c);
        } else if (len >= 13 && memcmp(p, "{\"op\":\"error\"", 13) == 0) {
            snprintf(w->errsample, sizeof w->errsample, "%.*s", (int)(len > 200 ? 200 : len), p);
            w->errors++;
            c->state = S_CLOSED;
            w->connecting--;
            atomic_fetch_add(&g_failed, 1);
            start_connect(w);
        }
        return;
    }
    switch (c->role) {
    case R_LOAD:
        if (opt.mode == M_INGEST) {
            if (len > 10 && memcmp(p, "{\"op\":\"ack\"", 11) == 0) {
                const char *q = memmem(p, len, "\"id\":\"", 6);
                uint64_t t = q ? parse_u64(q + 6, p + len) : 0;
                if (in_window(now)) {
                    w->msgs++;
                    if (sent_in_window(t)) h_record(&w->lat, now - t);
                }
            } else {
                if (!w->errsample[0]) snprintf(w->errsample, sizeof w->errsample, "%.*s", (int)(len > 200 ? 200 : len), p);
                w->errors++;
            }
        } else {
            uint64_t t = t_hint ? t_hint : find_t(p, len);
            if (in_window(now)) {
                w->msgs++;
                if (sent_in_window(t)) h_record(&w->lat, now - t);
            }
        }
        if (c->inflight > 0) c->inflight--;
        if (opt.rate <= 0) fill_window(c);
        break;
    case R_SUB: {
        if (opt.proto == P_SOT && !(len > 14 && memcmp(p, "{\"op\":\"message\"", 15) == 0)) {
            if (!w->errsample[0]) snprintf(w->errsample, sizeof w->errsample, "%.*s", (int)(len > 200 ? 200 : len), p);
            w->errors++;
            break;
        }
        const char *d = p;
        size_t dl = len;
        if (opt.proto == P_SOT) {
            const char *q = memmem(p, len, "\"data\":", 7);
            if (q) { dl = len - (size_t)(q - p); d = q; }
        }
        uint64_t t = t_hint ? t_hint : find_t(d, dl);
        atomic_fetch_add_explicit(&g_deliv_all, 1, memory_order_relaxed);
        if (in_window(now)) {
            w->msgs++;
            if (sent_in_window(t)) h_record(&w->lat, now - t);
        }
        break;
    }
    case R_PUB:
        if (opt.proto == P_SOT) {
            if (len > 10 && memcmp(p, "{\"op\":\"ack\"", 11) == 0) {
                const char *q = memmem(p, len, "\"id\":\"", 6);
                uint64_t t = q ? parse_u64(q + 6, p + len) : 0;
                atomic_fetch_add_explicit(&g_acks_all, 1, memory_order_relaxed);
                if (in_window(now)) {
                    w->msgs2++;
                    if (sent_in_window(t)) h_record(&w->lat2, now - t);
                }
            } else {
                if (!w->errsample[0]) snprintf(w->errsample, sizeof w->errsample, "%.*s", (int)(len > 200 ? 200 : len), p);
                w->errors++;
            }
        }
        if (c->inflight > 0) c->inflight--;
        break;
    default:
        break;
    }
}

/* Parses server frames from p[0..len); returns bytes consumed. */
static size_t parse_frames(conn_t *c, const char *p, size_t len) {
    size_t off = 0;
    while (len - off >= 2) {
        const unsigned char *h = (const unsigned char *)p + off;
        int fin = h[0] & 0x80, op = h[0] & 0x0f;
        uint64_t pl = h[1] & 0x7f;
        size_t hl = 2;
        if (pl == 126) {
            if (len - off < 4) break;
            pl = ((uint64_t)h[2] << 8) | h[3];
            hl = 4;
        } else if (pl == 127) {
            if (len - off < 10) break;
            pl = 0;
            for (int i = 0; i < 8; i++) pl = (pl << 8) | h[2 + i];
            hl = 10;
        }
        int masked = h[1] & 0x80;
        if (masked) hl += 4;
        if (len - off < hl + pl) break;
        char *d = (char *)p + off + hl;
        if (masked) {
            unsigned char mk[4];
            memcpy(mk, h + hl - 4, 4);
            for (uint64_t i = 0; i < pl; i++) d[i] ^= (char)mk[i & 3];
        }
        switch (op) {
        case 0: /* continuation */
            if (c->frag_op && fin) {
                c->frag_op = 0;
                on_message(c, d, (size_t)pl, c->frag_t ? c->frag_t : 1);
            }
            break;
        case 1:
        case 2:
            if (!fin) {
                c->frag_op = op;
                c->frag_t = find_t(d, (size_t)pl);
            } else {
                on_message(c, d, (size_t)pl, 0);
            }
            break;
        case 8:
            if (c->state != S_CLOSED) {
                if (!c->w->errsample[0])
                    snprintf(c->w->errsample, sizeof c->w->errsample, "close frame code %d %.*s",
                             pl >= 2 ? ((unsigned char)d[0] << 8 | (unsigned char)d[1]) : 0,
                             (int)(pl > 2 ? (pl - 2 > 100 ? 100 : pl - 2) : 0), d + 2);
                if (atomic_load(&g_phase) < 2) atomic_fetch_add(&g_closed_early, 1);
                c->state = S_CLOSED;
            }
            return len;
        case 9:
            send_pong(c, d, (size_t)pl);
            break;
        default:
            break;
        }
        off += hl + (size_t)pl;
    }
    return off;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    (void)suggested;
    conn_t *c = h->data;
    b->base = c->w->rbuf;
    b->len = c->w->rbuf_size;
}

static void conn_fail(conn_t *c, const char *why) {
    worker_t *w = c->w;
    if (c->state == S_CONNECTING || c->state == S_HANDSHAKE || c->state == S_SUBSCRIBING) {
        w->connecting--;
        atomic_fetch_add(&g_failed, 1);
        if (!w->errsample[0]) snprintf(w->errsample, sizeof w->errsample, "connect: %s", why);
        c->state = S_CLOSED;
        if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, NULL);
        start_connect(w);
        return;
    }
    if (c->state != S_CLOSED) {
        c->state = S_CLOSED;
        if (atomic_load(&g_phase) < 2) {
            atomic_fetch_add(&g_closed_early, 1);
            if (!w->errsample[0]) snprintf(w->errsample, sizeof w->errsample, "connection lost: %s", why);
        }
    }
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, NULL);
}

static void handle_bytes(conn_t *c, const char *p, size_t n) {
    if (c->state == S_HANDSHAKE) {
        buf_reserve(&c->in, n);
        memcpy(c->in.p + c->in.len, p, n);
        c->in.len += n;
        char *e = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
        if (!e) {
            if (c->in.len > 16384) conn_fail(c, "handshake response too long");
            return;
        }
        if (c->in.len < 12 || memcmp(c->in.p + 9, "101", 3) != 0) {
            char why[128];
            snprintf(why, sizeof why, "handshake refused: %.60s", c->in.p);
            for (char *q = why; *q; q++) if (*q == '\r' || *q == '\n') *q = ' ';
            conn_fail(c, why);
            return;
        }
        size_t hlen = (size_t)(e + 4 - c->in.p);
        size_t rest = c->in.len - hlen;
        memmove(c->in.p, c->in.p + hlen, rest);
        c->in.len = rest;
        if (c->role == R_SUB && opt.proto == P_SOT) {
            c->state = S_SUBSCRIBING;
            send_subscribe(c);
        } else {
            mark_ready(c);
        }
        if (c->in.len) {
            size_t used = parse_frames(c, c->in.p, c->in.len);
            memmove(c->in.p, c->in.p + used, c->in.len - used);
            c->in.len -= used;
        }
        return;
    }
    if (c->in.len == 0) {
        size_t used = parse_frames(c, p, n);
        if (used < n) {
            buf_reserve(&c->in, n - used);
            memcpy(c->in.p, p + used, n - used);
            c->in.len = n - used;
        }
    } else {
        buf_reserve(&c->in, n);
        memcpy(c->in.p + c->in.len, p, n);
        c->in.len += n;
        size_t used = parse_frames(c, c->in.p, c->in.len);
        memmove(c->in.p, c->in.p + used, c->in.len - used);
        c->in.len -= used;
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    conn_t *c = s->data;
    if (n > 0) {
        if (c->state == S_CLOSED) return;
        handle_bytes(c, b->base, (size_t)n);
        flush_dirty(c->w);
    } else if (n < 0) {
        conn_fail(c, uv_strerror((int)n));
    }
}

static void on_connect(uv_connect_t *req, int status) {
    conn_t *c = req->data;
    if (status < 0) {
        conn_fail(c, uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (opt.proto == P_TCP) {
        mark_ready(c);
        return;
    }
    c->state = S_HANDSHAKE;
    const char *path = c->role == R_SUB && opt.sub_path[0] ? opt.sub_path
                     : c->role == R_PUB && opt.pub_path[0] ? opt.pub_path : opt.path;
    char req_s[1024];
    int n = snprintf(req_s, sizeof req_s,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     path, opt.host, c->port,
                     opt.subprotocol[0] ? "Sec-WebSocket-Protocol: " : "", opt.subprotocol,
                     opt.subprotocol[0] ? "\r\n" : "");
    buf_reserve(&c->out, (size_t)n);
    memcpy(c->out.p + c->out.len, req_s, (size_t)n);
    c->out.len += (size_t)n;
    conn_flush(c);
}

static void start_connect(worker_t *w) {
    int limit = opt.concurrency / opt.threads;
    if (limit < 1) limit = 1;
    while (w->next_connect < w->nconns && w->connecting < limit) {
        conn_t *c = w->conns[w->next_connect++];
        w->connecting++;
        c->state = S_CONNECTING;
        uv_tcp_init_ex(&w->loop, &c->tcp, AF_INET);
        c->tcp.data = c;
        if (opt.nsrcs > 0) {
            uv_os_fd_t fd;
            uv_fileno((uv_handle_t *)&c->tcp, &fd);
            int one = 1;
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            struct sockaddr_in sa;
            uv_ip4_addr(opt.srcs[c->idx % opt.nsrcs], 0, &sa);
            int rc = uv_tcp_bind(&c->tcp, (struct sockaddr *)&sa, 0);
            if (rc) { conn_fail(c, uv_strerror(rc)); continue; }
        }
        struct sockaddr_in dst;
        c->port = opt.ports[c->idx % opt.nports];
        uv_ip4_addr(opt.host, c->port, &dst);
        c->creq.data = c;
        int rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&dst, on_connect);
        if (rc) conn_fail(c, uv_strerror(rc));
    }
}

/* Closed loop: keep W messages in flight on a load connection. */
static void fill_window(conn_t *c) {
    if (atomic_load_explicit(&g_phase, memory_order_relaxed) != 1 || c->state != S_OPEN) return;
    while (c->inflight < opt.window) send_message(c, now_ns());
}

/* Fan-out closed loop: at most W records not yet delivered to every subscriber. */
static void fanout_pump(worker_t *w) {
    if (w->nsenders == 0 || g_nsubs == 0) return;
    for (int guard = 0; guard < 4096; guard++) {
        uint64_t sent = atomic_load_explicit(&g_pub_sent, memory_order_relaxed);
        uint64_t done = atomic_load_explicit(&g_deliv_all, memory_order_relaxed) / (uint64_t)g_nsubs;
        if (sent >= done + (uint64_t)opt.window) break;
        conn_t *c = w->senders[w->rr++ % w->nsenders];
        if (c->state != S_OPEN) continue;
        send_message(c, now_ns());
    }
    flush_dirty(w);
}

static void on_check(uv_check_t *h) {
    worker_t *w = h->data;
    if (atomic_load_explicit(&g_phase, memory_order_relaxed) == 1 && opt.mode == M_FANOUT && opt.rate <= 0)
        fanout_pump(w);
}

static void on_tick(uv_timer_t *t) {
    worker_t *w = t->data;
    int phase = atomic_load_explicit(&g_phase, memory_order_relaxed);
    if (phase != 1 || w->nsenders == 0) return;
    if (!w->started) {
        w->started = 1;
        if (opt.rate <= 0 && opt.mode != M_FANOUT)
            for (int i = 0; i < w->nsenders; i++) fill_window(w->senders[i]);
    }
    if (opt.rate > 0) {
        /* Open loop: the records due by now, stamped with their scheduled time. */
        uint64_t now = now_ns();
        double per_ns = w->rate_share / 1e9;
        /* Record k is due at g_t0 + k / rate: records 0..due-1 are due by now. */
        uint64_t due = (uint64_t)((double)(now - g_t0) * per_ns) + 1;
        int budget = 100000;
        while (w->rate_sent < due && budget-- > 0) {
            uint64_t sched = g_t0 + (uint64_t)((double)w->rate_sent / per_ns);
            conn_t *c = w->senders[w->rr++ % w->nsenders];
            w->rate_sent++;
            if (c->state != S_OPEN) continue;
            send_message(c, sched);
        }
    } else if (opt.mode == M_FANOUT) {
        fanout_pump(w);
    }
    flush_dirty(w);
}

static void on_wake(uv_async_t *a) {
    worker_t *w = a->data;
    if (atomic_load(&g_phase) >= 3) uv_stop(&w->loop);
    else if (atomic_load(&g_phase) == 1) uv_timer_start(&w->tick, on_tick, 0, 1);
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    start_connect(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ------------------------------------------------------------------ process stats */
static double proc_cpu_s(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* fields after ')': state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(int pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) { v = strtol(line + 6, NULL, 10); break; }
    fclose(f);
    return v;
}

static double self_cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + (double)r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static void sleep_until(uint64_t t) {
    for (;;) {
        uint64_t n = now_ns();
        if (n >= t) return;
        uint64_t d = t - n;
        if (d > 50000000) d = 50000000;
        struct timespec ts = {(time_t)(d / 1000000000ull), (long)(d % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
}

static void wake_all(void) {
    for (int i = 0; i < opt.threads; i++) uv_async_send(&workers[i].wake);
}

/* ------------------------------------------------------------------ main */
static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --mode ingest|echo|fanout|connections [--proto sot|raw|tcp] --port P[,P...]\n"
            "  [--host 127.0.0.1] [--path /] [--sub-path P] [--pub-path P] [--subprotocol S] [--channel NAME]\n"
            "  [--conns N] [--subs N] [--pubs N] [--size BYTES] [--window W] [--rate MSGS_PER_S]\n"
            "  [--duration S] [--warmup S] [--drain S] [--src 127.0.0.1,127.0.0.2] [--concurrency C]\n"
            "  [--threads T] [--pids PID,...] [--system NAME] [--label TEXT] [--results FILE]\n"
            "  [--hold S] [--hold-stdin] [--connect-timeout S] [--quiet]\n");
    exit(2);
}

static int split_ints(char *s, int *out, int max) {
    int n = 0;
    for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ",")) out[n++] = atoi(t);
    return n;
}

int main(int argc, char **argv) {
    opt.mode = M_INGEST;
    opt.proto = P_SOT;
    strcpy(opt.host, "127.0.0.1");
    strcpy(opt.path, "/");
    strcpy(opt.channel, "bench");
    opt.conns = 1;
    opt.pubs = 1;
    opt.size = 64;
    opt.window = 1;
    opt.duration = 5;
    opt.warmup = 1;
    opt.drain = 2;
    opt.concurrency = 256;
    opt.threads = 1;
    opt.connect_timeout = 60;
    int subprotocol_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define NEXT() (i + 1 < argc ? argv[++i] : (usage(), ""))
        if (!strcmp(a, "--mode")) {
            const char *m = NEXT();
            opt.mode = !strcmp(m, "ingest") ? M_INGEST : !strcmp(m, "echo") ? M_ECHO : !strcmp(m, "fanout") ? M_FANOUT
                     : !strcmp(m, "connections") ? M_CONNECTIONS : (usage(), 0);
        } else if (!strcmp(a, "--proto")) {
            const char *m = NEXT();
            opt.proto = !strcmp(m, "sot") ? P_SOT : !strcmp(m, "raw") ? P_RAW : !strcmp(m, "tcp") ? P_TCP : (usage(), 0);
        } else if (!strcmp(a, "--host")) snprintf(opt.host, sizeof opt.host, "%s", NEXT());
        else if (!strcmp(a, "--port")) opt.nports = split_ints(strdup(NEXT()), opt.ports, 16);
        else if (!strcmp(a, "--path")) snprintf(opt.path, sizeof opt.path, "%s", NEXT());
        else if (!strcmp(a, "--sub-path")) snprintf(opt.sub_path, sizeof opt.sub_path, "%s", NEXT());
        else if (!strcmp(a, "--pub-path")) snprintf(opt.pub_path, sizeof opt.pub_path, "%s", NEXT());
        else if (!strcmp(a, "--subprotocol")) { snprintf(opt.subprotocol, sizeof opt.subprotocol, "%s", NEXT()); subprotocol_set = 1; }
        else if (!strcmp(a, "--channel")) snprintf(opt.channel, sizeof opt.channel, "%s", NEXT());
        else if (!strcmp(a, "--conns")) opt.conns = atoi(NEXT());
        else if (!strcmp(a, "--subs")) opt.subs = atoi(NEXT());
        else if (!strcmp(a, "--pubs")) opt.pubs = atoi(NEXT());
        else if (!strcmp(a, "--size")) opt.size = atoi(NEXT());
        else if (!strcmp(a, "--window")) opt.window = atoi(NEXT());
        else if (!strcmp(a, "--rate")) opt.rate = atof(NEXT());
        else if (!strcmp(a, "--duration")) opt.duration = atof(NEXT());
        else if (!strcmp(a, "--warmup")) opt.warmup = atof(NEXT());
        else if (!strcmp(a, "--drain")) opt.drain = atof(NEXT());
        else if (!strcmp(a, "--src")) {
            char *s = strdup(NEXT());
            for (char *t = strtok(s, ","); t && opt.nsrcs < 32; t = strtok(NULL, ",")) opt.srcs[opt.nsrcs++] = t;
        } else if (!strcmp(a, "--concurrency")) opt.concurrency = atoi(NEXT());
        else if (!strcmp(a, "--threads")) opt.threads = atoi(NEXT());
        else if (!strcmp(a, "--pids")) opt.npids = split_ints(strdup(NEXT()), opt.pids, 16);
        else if (!strcmp(a, "--system")) snprintf(opt.system, sizeof opt.system, "%s", NEXT());
        else if (!strcmp(a, "--label")) snprintf(opt.label, sizeof opt.label, "%s", NEXT());
        else if (!strcmp(a, "--results")) snprintf(opt.results, sizeof opt.results, "%s", NEXT());
        else if (!strcmp(a, "--hold")) opt.hold = atof(NEXT());
        else if (!strcmp(a, "--hold-stdin")) opt.hold_stdin = 1;
        else if (!strcmp(a, "--connect-timeout")) opt.connect_timeout = atof(NEXT());
        else if (!strcmp(a, "--quiet")) opt.quiet = 1;
        else usage();
    }
    if (opt.nports == 0) usage();
    if (!subprotocol_set && opt.proto == P_SOT) strcpy(opt.subprotocol, "streamotter.v1");
    if (opt.threads < 1) opt.threads = 1;
    if (opt.window < 1) opt.window = 1;
    if (opt.size < 24) opt.size = 24;
    g_pad = malloc((size_t)opt.size + 1);
    memset(g_pad, 'x', (size_t)opt.size);

    /* Roles: fanout = subs then pubs; others = conns of one role. */
    int nsubs = 0, nsend = 0;
    if (opt.mode == M_FANOUT) {
        nsubs = opt.subs;
        nsend = opt.pubs;
    } else if (opt.mode == M_CONNECTIONS) {
        nsubs = 0;
        nsend = 0;
    } else {
        nsend = opt.conns;
    }
    int total = opt.mode == M_FANOUT ? nsubs + nsend : opt.conns;
    g_total_conns = total;
    g_nsubs = nsubs;

    workers = calloc((size_t)opt.threads, sizeof(worker_t));
    conn_t *all = calloc((size_t)total, sizeof(conn_t));
    srand((unsigned)(now_ns() ^ (uint64_t)getpid()));
    for (int t = 0; t < opt.threads; t++) {
        worker_t *w = &workers[t];
        w->id = t;
        uv_loop_init(&w->loop);
        w->conns = calloc((size_t)total / (size_t)opt.threads + 2, sizeof(conn_t *));
        w->senders = calloc((size_t)nsend / (size_t)opt.threads + 2, sizeof(conn_t *));
        w->dirty = calloc((size_t)total / (size_t)opt.threads + 2, sizeof(conn_t *));
        w->rbuf_size = 256 * 1024;
        w->rbuf = malloc(w->rbuf_size);
        uv_timer_init(&w->loop, &w->tick);
        w->tick.data = w;
        uv_check_init(&w->loop, &w->check);
        w->check.data = w;
        uv_check_start(&w->check, on_check);
        uv_async_init(&w->loop, &w->wake, on_wake);
        w->wake.data = w;
    }
    /* Subscribers first (they must be subscribed before anything is published), spread
     * over the threads; senders spread too. */
    for (int i = 0; i < total; i++) {
        conn_t *c = &all[i];
        c->idx = i;
        c->mask = (uint32_t)rand() ^ ((uint32_t)rand() << 16);
        if (c->mask == 0) c->mask = 0x5a5a5a5a;
        if (opt.mode == M_FANOUT) c->role = i < nsubs ? R_SUB : R_PUB;
        else if (opt.mode == M_CONNECTIONS) c->role = R_IDLE;
        else c->role = R_LOAD;
        worker_t *w = &workers[i % opt.threads];
        c->w = w;
        w->conns[w->nconns++] = c;
        if (c->role == R_LOAD || c->role == R_PUB) w->senders[w->nsenders++] = c;
    }
    int nthreads_sending = 0;
    for (int t = 0; t < opt.threads; t++) if (workers[t].nsenders) nthreads_sending++;
    for (int t = 0; t < opt.threads; t++) {
        worker_t *w = &workers[t];
        w->rate_share = opt.rate > 0 && nsend > 0 ? opt.rate * (double)w->nsenders / (double)nsend : 0;
    }

    double cpu_connect0 = self_cpu_s();
    uint64_t t_conn0 = now_ns();
    for (int t = 0; t < opt.threads; t++) pthread_create(&workers[t].th, NULL, worker_main, &workers[t]);
    /* Wait for every connection to be open (and subscribed). */
    uint64_t deadline = t_conn0 + (uint64_t)(opt.connect_timeout * 1e9);
    while (atomic_load(&g_ready) + atomic_load(&g_failed) < total && now_ns() < deadline) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    uint64_t t_conn1 = now_ns();
    double cpu_connect1 = self_cpu_s();
    int ready = atomic_load(&g_ready), failed = atomic_load(&g_failed);
    double connect_s = (double)(t_conn1 - t_conn0) / 1e9;
    double connect_rate = connect_s > 0 ? ready / connect_s : 0;
    if (!opt.quiet)
        fprintf(stderr, "loadgen: %d/%d connections open (%d failed) in %.2fs (%.0f/s)\n", ready, total, failed, connect_s, connect_rate);

    long rss_kb[16] = {0};
    double cpu_a[16] = {0}, cpu_b[16] = {0};
    double self_a = 0, self_b = 0, meas_s = 0;
    uint64_t sent_before = 0;
    hist_t *lat = calloc(1, sizeof(hist_t)), *lat2 = calloc(1, sizeof(hist_t));
    uint64_t msgs = 0, msgs2 = 0, errors = 0, sent = 0;
    char errsample[256] = "";
    uint64_t lost = 0;

    if (opt.mode == M_CONNECTIONS) {
        /* Let the servers settle, then read their memory. */
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
        for (int i = 0; i < opt.npids; i++) rss_kb[i] = proc_rss_kb(opt.pids[i]);
        FILE *o = stdout;
        fprintf(o, "READY {\"ready\":%d,\"failed\":%d,\"connect_s\":%.3f,\"connect_rate\":%.1f,\"loadgen_cpu_s\":%.3f}\n",
                ready, failed, connect_s, connect_rate, cpu_connect1 - cpu_connect0);
        fflush(o);
        if (opt.hold_stdin) {
            char b[256];
            while (fgets(b, sizeof b, stdin)) {}
        } else if (opt.hold > 0) {
            sleep_until(now_ns() + (uint64_t)(opt.hold * 1e9));
        }
        self_a = cpu_connect0;
        self_b = cpu_connect1;
        meas_s = connect_s;
    } else {
        /* Run: warm-up, then the measured window. */
        uint64_t t0 = now_ns();
        g_t0 = t0;
        g_meas_start = t0 + (uint64_t)(opt.warmup * 1e9);
        g_meas_end = g_meas_start + (uint64_t)(opt.duration * 1e9);
        atomic_store(&g_phase, 1);
        /* Each worker arms its own tick on this wake-up (libuv handles are not thread-safe). */
        wake_all();
        sleep_until(g_meas_start);
        for (int i = 0; i < opt.npids; i++) cpu_a[i] = proc_cpu_s(opt.pids[i]);
        self_a = self_cpu_s();
        sent_before = 0;
        sleep_until(g_meas_end);
        self_b = self_cpu_s();
        for (int i = 0; i < opt.npids; i++) { cpu_b[i] = proc_cpu_s(opt.pids[i]); rss_kb[i] = proc_rss_kb(opt.pids[i]); }
        meas_s = (double)(g_meas_end - g_meas_start) / 1e9;
        atomic_store(&g_phase, 2);
        if (opt.mode == M_FANOUT && nsubs > 0) {
            /* Give in-flight records time to arrive, to count what never did. */
            uint64_t dl = now_ns() + (uint64_t)(opt.drain * 1e9);
            while (now_ns() < dl) {
                if (atomic_load(&g_deliv_all) >= atomic_load(&g_pub_sent) * (uint64_t)nsubs) break;
                struct timespec ts = {0, 10000000};
                nanosleep(&ts, NULL);
            }
            uint64_t want = atomic_load(&g_pub_sent) * (uint64_t)nsubs, got = atomic_load(&g_deliv_all);
            lost = want > got ? want - got : 0;
        }
    }
    atomic_store(&g_phase, 3);
    wake_all();
    for (int t = 0; t < opt.threads; t++) pthread_join(workers[t].th, NULL);
    for (int t = 0; t < opt.threads; t++) {
        worker_t *w = &workers[t];
        h_merge(lat, &w->lat);
        h_merge(lat2, &w->lat2);
        msgs += w->msgs;
        msgs2 += w->msgs2;
        errors += w->errors;
        sent += w->sent;
        if (!errsample[0] && w->errsample[0]) snprintf(errsample, sizeof errsample, "%s", w->errsample);
    }
    (void)sent_before;
    (void)nthreads_sending;

    double rate = meas_s > 0 ? (double)msgs / meas_s : 0;
    double self_cpu_pct = meas_s > 0 ? 100.0 * (self_b - self_a) / meas_s : 0;
    const char *mname = opt.mode == M_INGEST ? "ingest" : opt.mode == M_ECHO ? "echo" : opt.mode == M_FANOUT ? "fanout" : "connections";
    const char *pname = opt.proto == P_SOT ? "sot" : opt.proto == P_RAW ? "raw" : "tcp";
    const char *latkind = opt.mode == M_INGEST ? "ack" : opt.mode == M_ECHO ? "rtt" : "delivery";

    /* Summary line. */
    if (opt.mode == M_CONNECTIONS) {
        long rss_total = 0;
        for (int i = 0; i < opt.npids; i++) rss_total += rss_kb[i] > 0 ? rss_kb[i] : 0;
        printf("%-28s %-11s conns=%d ok=%d failed=%d connect=%.2fs rate=%.0f/s server_rss=%ldKiB loadgen_cpu=%.0f%%\n",
               opt.system, mname, total, ready, failed, connect_s, connect_rate, rss_total, self_cpu_pct);
    } else {
        printf("%-28s %-8s conns=%d subs=%d size=%d win=%d rate=%s%.0f => %.0f %s/s  %s p50=%.0fus p99=%.0fus p99.9=%.0fus  loadgen_cpu=%.0f%%",
               opt.system, mname, opt.mode == M_FANOUT ? opt.pubs : opt.conns, nsubs, opt.size, opt.window,
               opt.rate > 0 ? "" : "max/", opt.rate, rate, opt.mode == M_FANOUT ? "deliveries" : "msgs", latkind,
               h_pct_us(lat, .5), h_pct_us(lat, .99), h_pct_us(lat, .999), self_cpu_pct);
        for (int i = 0; i < opt.npids; i++) printf(" pid%d_cpu=%.0f%%", opt.pids[i], 100.0 * (cpu_b[i] - cpu_a[i]) / meas_s);
        if (errors || failed || atomic_load(&g_closed_early) || lost)
            printf("  errors=%" PRIu64 " failed=%d closed=%d lost=%" PRIu64 " [%s]", errors, failed, atomic_load(&g_closed_early), lost, errsample);
        printf("\n");
    }
    fflush(stdout);

    if (opt.results[0]) {
        FILE *f = fopen(opt.results, "a");
        if (!f) { perror(opt.results); return 1; }
        fprintf(f, "{\"mode\":\"%s\",\"system\":\"%s\",\"label\":\"%s\",\"proto\":\"%s\",\"conns\":%d,\"subs\":%d,\"pubs\":%d,"
                   "\"size\":%d,\"window\":%d,\"rate_target\":%.1f,\"duration_s\":%.3f,\"threads\":%d,",
                mname, opt.system, opt.label, pname, opt.mode == M_FANOUT ? nsubs + opt.pubs : opt.conns, nsubs,
                opt.mode == M_FANOUT ? opt.pubs : 0, opt.size, opt.window, opt.rate, meas_s, opt.threads);
        fprintf(f, "\"ready\":%d,\"failed\":%d,\"closed_early\":%d,\"connect_s\":%.3f,\"connect_rate\":%.1f,",
                ready, failed, atomic_load(&g_closed_early), connect_s, connect_rate);
        fprintf(f, "\"msgs\":%" PRIu64 ",\"rate\":%.1f,\"sent\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"lost\":%" PRIu64 ",",
                msgs, rate, sent, errors, lost);
        fprintf(f, "\"lat_kind\":\"%s\",\"lat_n\":%" PRIu64 ",\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f,",
                latkind, lat->n, h_pct_us(lat, .5), h_pct_us(lat, .9), h_pct_us(lat, .99), h_pct_us(lat, .999),
                (double)lat->max / 1000.0, lat->n ? (double)lat->sum / (double)lat->n / 1000.0 : 0);
        fprintf(f, "\"acks\":%" PRIu64 ",\"ack_rate\":%.1f,\"ack_p50_us\":%.1f,\"ack_p99_us\":%.1f,\"ack_p999_us\":%.1f,",
                msgs2, meas_s > 0 ? (double)msgs2 / meas_s : 0, h_pct_us(lat2, .5), h_pct_us(lat2, .99), h_pct_us(lat2, .999));
        fprintf(f, "\"loadgen_cpu_pct\":%.1f,\"server\":[", self_cpu_pct);
        for (int i = 0; i < opt.npids; i++)
            fprintf(f, "%s{\"pid\":%d,\"cpu_pct\":%.1f,\"rss_kb\":%ld}", i ? "," : "", opt.pids[i],
                    meas_s > 0 && opt.mode != M_CONNECTIONS ? 100.0 * (cpu_b[i] - cpu_a[i]) / meas_s : -1.0, rss_kb[i]);
        fprintf(f, "],\"error_sample\":\"");
        for (char *q = errsample; *q; q++) {
            if (*q == '"' || *q == '\\') fputc('\\', f);
            if ((unsigned char)*q >= 0x20) fputc(*q, f);
        }
        fprintf(f, "\"}\n");
        fclose(f);
    }
    _exit(0);
}
