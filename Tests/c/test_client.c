/* End-to-end through the C ABI: a gateway engine, a client engine, publish 1,000
 * messages, 1,000 acks, 1,000 messages back through a subscription; server callbacks;
 * engine-side publish; a Kafka consumer; poll mode. */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <streamotter.h>

#include "check.h"





#define N 1000

static atomic_int opened, closed_count, acks, ack_errors, msgs, subscribed, server_connects,
    server_closes, server_msgs, delivered, records;
static atomic_long offsets_seen[3];
static int order_ok = 1;
static long last_offset[64];

static void on_open(void *o, const char *proto) {
    (void)o;
    if (proto && strcmp(proto, "streamotter.v1") == 0) atomic_fetch_add(&opened, 1);
}
static void on_close(void *o, int code, const char *reason) { (void)o; (void)code; (void)reason; atomic_fetch_add(&closed_count, 1); }
static void on_error(void *o, const char *code, const char *msg) { (void)o; fprintf(stderr, "client error %s: %s\n", code, msg); }
static void on_ack(void *o, int status, const char *code, const char *msg, int32_t p, int64_t off) {
    (void)o; (void)p; (void)off;
    if (status == SOT_OK) atomic_fetch_add(&acks, 1);
    else { atomic_fetch_add(&ack_errors, 1); fprintf(stderr, "ack error %s %s\n", code, msg); }
}
static void on_msg(void *o, const sot_message *m) {
    (void)o;
    if (m->size >= sizeof(sot_message) && strcmp(m->channel, "ctest") == 0 && m->data && m->frame) {
        if (m->partition >= 0 && m->partition < 64) {
            if (m->offset <= last_offset[m->partition]) order_ok = 0;
            last_offset[m->partition] = m->offset;
        }
        atomic_fetch_add(&msgs, 1);
    }
}
static void on_sub(void *o, int status, const char *code, const char *msg) {
    (void)o; (void)code; (void)msg;
    if (status == SOT_OK) atomic_fetch_add(&subscribed, 1);
}
static void srv_connect(void *o, uint64_t conn, const char *path, const sot_header *h, size_t n) {
    (void)o; (void)conn; (void)h;
    if (path && path[0] == '/' && n > 0) atomic_fetch_add(&server_connects, 1);
}
static void srv_message(void *o, uint64_t conn, int is_text, const void *d, size_t len) {
    (void)o; (void)conn; (void)is_text; (void)d; (void)len;
    atomic_fetch_add(&server_msgs, 1);
}
static void srv_close(void *o, uint64_t conn, int code, const char *r) { (void)o; (void)conn; (void)code; (void)r; atomic_fetch_add(&server_closes, 1); }
static void on_delivery(void *o, int status, const char *err, const char *topic, int32_t p, int64_t off) {
    (void)o; (void)err; (void)p; (void)off;
    if (status == SOT_OK && strcmp(topic, "ctest") == 0) atomic_fetch_add(&delivered, 1);
}
static void on_record(void *o, const sot_record *r) {
    (void)o;
    if (r->size >= sizeof(sot_record) && r->partition >= 0 && r->partition < 3 && r->value) {
        atomic_fetch_add(&records, 1);
        atomic_fetch_add(&offsets_seen[r->partition], 1);
    }
}

static sot_engine *start_engine(const char *mode, const char *extra_key, const char *extra_val) {
    char err[256];
    sot_conf *c = sot_conf_new();
    sot_conf_set(c, "listen", "127.0.0.1:0", err, sizeof err);
    sot_conf_set(c, "embedded.brokers", "3", err, sizeof err);
    sot_conf_set(c, "embedded.topics", "ctest:3", err, sizeof err);
    sot_conf_set(c, "mode", mode, err, sizeof err);
    if (extra_key) sot_conf_set(c, extra_key, extra_val, err, sizeof err);
    sot_engine *e = sot_engine_new(c, err, sizeof err);
    sot_conf_destroy(c);
    return e;
}

static void test_roundtrip(void) {
    sot_engine *gw = start_engine("gateway", NULL, NULL);
    sot_server_callbacks scb = {sizeof scb, srv_connect, srv_message, srv_close};
    CHECK(sot_engine_set_server_callbacks(gw, &scb, NULL) == SOT_OK);
    CHECK(sot_engine_start(gw) == SOT_OK);
    CHECK(sot_engine_set_server_callbacks(gw, &scb, NULL) == SOT_ERR_STATE);
    sot_engine *ce = start_engine("client", NULL, NULL);
    CHECK(sot_engine_start(ce) == SOT_OK);

    char url[128], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/ctest", sot_engine_port(gw));
    sot_client_callbacks cb = {sizeof cb, on_open, NULL, on_close, on_error};
    sot_conf *cc = sot_conf_new();
    CHECK(sot_conf_set(cc, "client.ping_interval_ms", "100", err, sizeof err) == SOT_OK);
    CHECK(sot_conf_set(cc, "reconnect.max_delay_ms", "nope", err, sizeof err) == SOT_ERR_CONFIG);
    sot_client *cl = sot_client_new(ce, url, cc, &cb, NULL, err, sizeof err);
    sot_conf_destroy(cc);
    CHECK(cl != NULL);
    CHECK(sot_client_new(ce, "http://x", NULL, &cb, NULL, err, sizeof err) == NULL);
    CHECK(strstr(err, "url") != NULL);
    CHECK(sot_client_start(cl) == SOT_OK);
    CHECK(sot_client_start(cl) == SOT_ERR_STATE);
    CHECK(sot_client_subscribe(cl, "ctest", "\"latest\"", on_msg, on_sub, NULL) == SOT_OK);
    CHECK(sot_client_subscribe(cl, "x", "{bad", on_msg, on_sub, NULL) == SOT_ERR_INVALID_ARG);
    WAIT_FOR(atomic_load(&subscribed) == 1, 10);
    CHECK(atomic_load(&opened) == 1);
    CHECK(atomic_load(&subscribed) == 1);
    CHECK(atomic_load(&server_connects) == 1);
    for (int i = 0; i < 64; i++) last_offset[i] = -1;

    double t0 = now_s();
    char json[64], key[16];
    for (int i = 0; i < N; i++) {
        snprintf(json, sizeof json, "{\"n\":%d}", i);
        snprintf(key, sizeof key, "k%d", i % 7);
        CHECK(sot_client_publish(cl, "ctest", key, json, on_ack, NULL) == SOT_OK);
    }
    CHECK(sot_client_publish(cl, "ctest", NULL, "{not json", on_ack, NULL) == SOT_ERR_INVALID_ARG);
    WAIT_FOR(atomic_load(&acks) == N, 20);
    printf("C client: %d acks after %.3f s\n", atomic_load(&acks), now_s() - t0);
    WAIT_FOR(atomic_load(&acks) == N && atomic_load(&msgs) == N, 20);
    printf("C client: %d acks, %d messages back in %.3f s\n", atomic_load(&acks), atomic_load(&msgs), now_s() - t0);
    CHECK(atomic_load(&acks) == N);
    CHECK(atomic_load(&ack_errors) == 0);
    CHECK(atomic_load(&msgs) == N);
    CHECK(order_ok);
    WAIT_FOR(atomic_load(&server_msgs) >= N + 1, 5);
    CHECK(atomic_load(&server_msgs) >= N + 1);

    sot_client_health h = {.size = sizeof h};
    WAIT_FOR((sot_client_get_health(cl, &h), h.rtt_ms > 0), 3);
    CHECK(sot_client_get_health(cl, &h) == SOT_OK);
    CHECK(h.state == SOT_CLIENT_OPEN);
    CHECK(h.score > 0 && h.score <= 100);
    CHECK(h.rtt_ms > 0);

    /* Engine-side publish reaches the subscriber and reports delivery. */
    CHECK(sot_engine_publish(gw, "ctest", -1, "k", 1, "{\"from\":\"engine\"}", 17, NULL, 0, on_delivery, NULL) == SOT_OK);
    CHECK(sot_engine_publish(gw, NULL, -1, NULL, 0, "x", 1, NULL, 0, NULL, NULL) == SOT_ERR_INVALID_ARG);
    CHECK(sot_engine_publish(ce, "ctest", -1, NULL, 0, "x", 1, NULL, 0, NULL, NULL) == SOT_ERR_STATE);
    /* A size_t beyond SSIZE_MAX describes no buffer: refused with a message, never read
     * (a header's value_len trapped). */
    sot_header huge = {"h", "v", SIZE_MAX};
    CHECK(sot_engine_publish(gw, "ctest", -1, NULL, 0, "x", 1, &huge, 1, NULL, NULL) == SOT_ERR_INVALID_ARG);
    CHECK(strstr(sot_last_error(), "value_len") != NULL);
    CHECK(sot_engine_publish(gw, "ctest", -1, NULL, 0, "x", 1, &huge, SIZE_MAX, NULL, NULL) == SOT_ERR_INVALID_ARG);
    CHECK(sot_engine_publish(gw, "ctest", -1, NULL, 0, "x", SIZE_MAX, NULL, 0, NULL, NULL) == SOT_ERR_INVALID_ARG);
    CHECK(sot_engine_publish(gw, "ctest", -1, "k", SIZE_MAX, "x", 1, NULL, 0, NULL, NULL) == SOT_ERR_INVALID_ARG);
    CHECK(sot_client_send(cl, "x", SIZE_MAX, 1) == SOT_ERR_INVALID_ARG);
    CHECK(sot_conn_send(gw, 1, "x", SIZE_MAX, 1) == SOT_ERR_INVALID_ARG);
    WAIT_FOR(atomic_load(&delivered) == 1 && atomic_load(&msgs) == N + 1, 10);
    CHECK(atomic_load(&delivered) == 1);
    CHECK(atomic_load(&msgs) == N + 1);

    /* A Kafka consumer reads the 1,001 records from the beginning of the 3 partitions. */
    sot_consumer *kc = sot_consumer_new(gw, NULL, on_record, NULL, err, sizeof err);
    CHECK(kc != NULL);
    for (int p = 0; p < 3; p++) CHECK(sot_consumer_assign(kc, "ctest", p, SOT_OFFSET_BEGINNING) == SOT_OK);
    WAIT_FOR(atomic_load(&records) == N + 1, 15);
    CHECK(atomic_load(&records) == N + 1);
    /* Replay partition 0 from its beginning: its records arrive again. */
    long p0 = atomic_load(&offsets_seen[0]);
    CHECK(sot_consumer_seek(kc, "ctest", 0, 0) == SOT_OK);
    WAIT_FOR(atomic_load(&offsets_seen[0]) == 2 * p0, 10);
    CHECK(atomic_load(&offsets_seen[0]) == 2 * p0);
    sot_consumer_destroy(kc);
    sot_consumer_destroy(kc); /* twice: ignored */

    /* Server-side send and close by connection id. */
    CHECK(sot_conn_send(gw, 999999, "x", 1, 1) == SOT_ERR_NOT_FOUND);
    CHECK(sot_conn_close(gw, 1, 1005, NULL) == SOT_ERR_INVALID_ARG);

    CHECK(sot_client_close(cl, 1000, "bye") == SOT_OK);
    WAIT_FOR(atomic_load(&closed_count) == 1 && atomic_load(&server_closes) == 1, 5);
    CHECK(atomic_load(&closed_count) == 1);
    CHECK(atomic_load(&server_closes) == 1);
    sot_client_destroy(cl);
    sot_client_destroy(cl); /* twice: ignored */
    sot_engine_destroy(ce);
    sot_engine_destroy(gw);
    sot_engine_destroy(gw); /* twice: ignored, no crash */
}

/* Poll mode: callbacks run only inside sot_engine_poll, on this thread. */
static pthread_t main_thread;
static atomic_int poll_wrong_thread, poll_msgs;
static void poll_on_msg(void *o, const sot_message *m) {
    (void)o; (void)m;
    if (!pthread_equal(pthread_self(), main_thread)) atomic_fetch_add(&poll_wrong_thread, 1);
    atomic_fetch_add(&poll_msgs, 1);
}
static void poll_on_ack(void *o, int status, const char *c, const char *m, int32_t p, int64_t off) {
    (void)o; (void)c; (void)m; (void)p; (void)off;
    if (!pthread_equal(pthread_self(), main_thread)) atomic_fetch_add(&poll_wrong_thread, 1);
    if (status == SOT_OK) atomic_fetch_add(&acks, 1);
}
static sot_engine *destroy_me;
static atomic_int destroyed_in_cb;
static void destroying_cb(void *o, const sot_message *m) {
    (void)o; (void)m;
    if (destroy_me && !atomic_load(&destroyed_in_cb)) {
        CHECK(sot_engine_stop(destroy_me) == SOT_ERR_IN_CALLBACK);
        sot_engine_destroy(destroy_me); /* deferred until this callback returns */
        atomic_store(&destroyed_in_cb, 1);
    }
}

static void test_poll_mode(void) {
    main_thread = pthread_self();
    atomic_store(&acks, 0);
    sot_engine *gw = start_engine("gateway", "callbacks", "poll");
    CHECK(sot_engine_start(gw) == SOT_OK);
    int fd = sot_engine_fd(gw);
    CHECK(fd >= 0);
    char url[128], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/", sot_engine_port(gw));
    sot_client *cl = sot_client_new(gw, url, NULL, NULL, NULL, err, sizeof err);
    CHECK(sot_client_start(cl) == SOT_OK);
    atomic_store(&subscribed, 0);
    CHECK(sot_client_subscribe(cl, "ctest", NULL, poll_on_msg, on_sub, NULL) == SOT_OK);
    double deadline = now_s() + 10;
    while (atomic_load(&subscribed) == 0 && now_s() < deadline) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 100) > 0) sot_engine_poll(gw, 0);
    }
    CHECK(atomic_load(&subscribed) == 1);
    for (int i = 0; i < 200; i++) sot_client_publish(cl, "ctest", NULL, "[1,2,3]", poll_on_ack, NULL);
    deadline = now_s() + 10;
    int runs = 0;
    while ((atomic_load(&acks) < 200 || atomic_load(&poll_msgs) < 200) && now_s() < deadline) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 100) > 0) runs += sot_engine_poll(gw, 50);
    }
    printf("poll mode: %d acks, %d messages, %d callbacks run by sot_engine_poll\n", atomic_load(&acks), atomic_load(&poll_msgs), runs);
    CHECK(atomic_load(&acks) == 200);
    CHECK(atomic_load(&poll_msgs) == 200);
    CHECK(atomic_load(&poll_wrong_thread) == 0);

    /* Destroy from inside a callback is deferred, then completes. */
    CHECK(sot_client_unsubscribe(cl, "ctest", NULL, NULL) == SOT_OK);
    sot_client_callbacks cb2 = {sizeof cb2, NULL, NULL, NULL, on_error};
    sot_client *c2 = sot_client_new(gw, url, NULL, &cb2, NULL, err, sizeof err);
    sot_client_start(c2);
    atomic_store(&subscribed, 0);
    sot_client_subscribe(c2, "ctest", NULL, destroying_cb, on_sub, NULL);
    destroy_me = gw;
    deadline = now_s() + 10;
    while (atomic_load(&subscribed) == 0 && now_s() < deadline) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 100) > 0) sot_engine_poll(gw, 0);
    }
    sot_client_publish(cl, "ctest", NULL, "1", NULL, NULL);
    deadline = now_s() + 10;
    while (!atomic_load(&destroyed_in_cb) && now_s() < deadline) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 100) > 0) sot_engine_poll(gw, 0);
    }
    CHECK(atomic_load(&destroyed_in_cb) == 1);
    CHECK(sot_engine_poll(gw, 0) == SOT_ERR_BAD_HANDLE); /* gone */
}

int main(void) {
    test_roundtrip();
    test_poll_mode();
    return report();
}
