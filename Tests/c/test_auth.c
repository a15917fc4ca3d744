/* Custom authentication and audit through the C ABI: allow with an identity, deny with a
 * status, an expiring credential closed with 4001, audit events for each. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <streamotter.h>

#include "check.h"


static long long wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static sot_engine *gw;
static atomic_int auth_calls, audit_ok, audit_denied, audit_open, audit_close, opened, closed_4001, errors;
static char last_peer[64];

static void on_auth(void *o, uint64_t req, const char *path, const sot_header *h, size_t n, const char *peer, const char *tls) {
    (void)o; (void)path; (void)tls;
    atomic_fetch_add(&auth_calls, 1);
    snprintf(last_peer, sizeof last_peer, "%s", peer);
    const char *user = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(h[i].name, "X-User") == 0) user = h[i].value;
    if (!user) { CHECK(sot_auth_deny(gw, req, 403, "no user") == SOT_OK); return; }
    long long exp = strcmp(user, "shortlived") == 0 ? wall_ms() + 1500 : 0;
    CHECK(sot_auth_allow(gw, req, user, "reader,writer", exp) == SOT_OK);
    CHECK(sot_auth_allow(gw, req, user, NULL, 0) == SOT_ERR_NOT_FOUND); /* answered already */
}

static void on_audit(void *o, const char *json) {
    (void)o;
    CHECK(json[0] == '{');
    if (strstr(json, "\"event\":\"auth_success\"")) atomic_fetch_add(&audit_ok, 1);
    if (strstr(json, "\"event\":\"auth_failure\"")) atomic_fetch_add(&audit_denied, 1);
    if (strstr(json, "\"event\":\"connection_open\"")) atomic_fetch_add(&audit_open, 1);
    if (strstr(json, "\"event\":\"connection_close\"") || strstr(json, "\"event\":\"token_expired\"")) atomic_fetch_add(&audit_close, 1);
}

static void on_open(void *o, const char *p) { (void)o; (void)p; atomic_fetch_add(&opened, 1); }
static void on_close(void *o, int code, const char *r) { (void)o; (void)r; if (code == 4001) atomic_fetch_add(&closed_4001, 1); }
static void on_error(void *o, const char *code, const char *msg) { (void)o; (void)msg; if (strcmp(code, "handshake_failed") == 0) atomic_fetch_add(&errors, 1); }

static sot_client *client(sot_engine *ce, const char *user) {
    char url[128], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/", sot_engine_port(gw));
    sot_conf *c = sot_conf_new();
    if (user) sot_conf_set(c, "client.header.X-User", user, err, sizeof err);
    sot_conf_set(c, "reconnect.enabled", "false", err, sizeof err);
    sot_client_callbacks cb = {sizeof cb, on_open, NULL, on_close, on_error};
    sot_client *cl = sot_client_new(ce, url, c, &cb, NULL, err, sizeof err);
    sot_conf_destroy(c);
    sot_client_start(cl);
    return cl;
}

/* Key provider: one fixed key "kp1" for every channel. */
static atomic_int key_calls;
static int key_cb(void *o, const char *key_id, const char *channel, unsigned char out[32], char *out_id, size_t n) {
    (void)o; (void)channel;
    atomic_fetch_add(&key_calls, 1);
    if (key_id && strcmp(key_id, "kp1") != 0) return 1;
    for (int i = 0; i < 32; i++) out[i] = (unsigned char)(i * 7 + 3);
    if (!key_id) snprintf(out_id, n, "kp1");
    return 0;
}
static atomic_int plain_msgs, raw_records, raw_cipher;
static void enc_on_msg(void *o, const sot_message *m) {
    (void)o;
    if (m->data && strstr(m->data, "top secret")) atomic_fetch_add(&plain_msgs, 1);
}
static void enc_on_sub(void *o, int st, const char *c, const char *m) { (void)o; (void)c; (void)m; if (st == SOT_OK) atomic_fetch_add(&opened, 100); }
static void enc_on_record(void *o, const sot_record *r) {
    (void)o;
    atomic_fetch_add(&raw_records, 1);
    int has_kid = 0;
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcmp(r->headers[i].name, "streamotter-key-id") == 0 && r->headers[i].value_len == 3) has_kid = 1;
    if (has_kid && r->value && !memmem(r->value, r->value_len, "top secret", 10)) atomic_fetch_add(&raw_cipher, 1);
}

static void test_key_provider(void) {
    char err[256];
    sot_conf *c = sot_conf_new();
    sot_conf_set(c, "listen", "127.0.0.1:0", err, sizeof err);
    sot_conf_set(c, "embedded.brokers", "1", err, sizeof err);
    sot_conf_set(c, "embedded.topics", "vault:1", err, sizeof err);
    sot_conf_set(c, "encryption.channels", "vault", err, sizeof err);
    sot_engine *e = sot_engine_new(c, err, sizeof err);
    sot_conf_destroy(c);
    CHECK(sot_engine_set_key_provider(e, key_cb, NULL) == SOT_OK);
    CHECK(sot_engine_start(e) == SOT_OK);
    CHECK(sot_engine_set_key_provider(e, key_cb, NULL) == SOT_ERR_STATE);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/", sot_engine_port(e));
    atomic_store(&opened, 0);
    sot_client *cl = sot_client_new(e, url, NULL, NULL, NULL, err, sizeof err);
    sot_client_start(cl);
    sot_client_subscribe(cl, "vault", NULL, enc_on_msg, enc_on_sub, NULL);
    WAIT_FOR(atomic_load(&opened) >= 100, 5);
    for (int i = 0; i < 5; i++) sot_client_publish(cl, "vault", NULL, "{\"note\":\"top secret\"}", NULL, NULL);
    WAIT_FOR(atomic_load(&plain_msgs) == 5, 10);
    CHECK(atomic_load(&plain_msgs) == 5);           /* subscribers read plaintext */
    sot_consumer *kc = sot_consumer_new(e, NULL, enc_on_record, NULL, err, sizeof err);
    CHECK(sot_consumer_assign(kc, "vault", 0, SOT_OFFSET_BEGINNING) == SOT_OK);
    WAIT_FOR(atomic_load(&raw_records) == 5, 10);
    CHECK(atomic_load(&raw_cipher) == 5);           /* Kafka holds only ciphertext */
    CHECK(atomic_load(&key_calls) >= 10);           /* 5 seals + 5 opens */
    sot_consumer_destroy(kc);
    sot_client_destroy(cl);
    sot_engine_destroy(e);
}

/* A key provider that fills the whole id buffer without a NUL: the engine cuts the id at
 * out_key_id_size - 1 bytes (64 'k') instead of reading past the buffer (it trapped). */
static atomic_int long_msgs, long_subs;
static int long_id_key_cb(void *o, const char *key_id, const char *channel, unsigned char out[32], char *out_id, size_t n) {
    (void)o; (void)channel;
    char want[65];
    memset(want, 'k', 64);
    want[64] = 0;
    if (key_id && strcmp(key_id, want) != 0) return 1;
    for (int i = 0; i < 32; i++) out[i] = (unsigned char)(i * 5 + 1);
    if (!key_id) memset(out_id, 'k', n);
    return 0;
}
static void long_on_msg(void *o, const sot_message *m) {
    (void)o;
    if (m->data && strstr(m->data, "sealed")) atomic_fetch_add(&long_msgs, 1);
}
static void long_on_sub(void *o, int st, const char *c, const char *m) { (void)o; (void)c; (void)m; if (st == SOT_OK) atomic_fetch_add(&long_subs, 1); }

static void test_key_provider_unterminated_id(void) {
    char err[256];
    sot_conf *c = sot_conf_new();
    sot_conf_set(c, "listen", "127.0.0.1:0", err, sizeof err);
    sot_conf_set(c, "embedded.brokers", "1", err, sizeof err);
    sot_conf_set(c, "embedded.topics", "vault2:1", err, sizeof err);
    sot_conf_set(c, "encryption.channels", "vault2", err, sizeof err);
    sot_engine *e = sot_engine_new(c, err, sizeof err);
    sot_conf_destroy(c);
    CHECK(sot_engine_set_key_provider(e, long_id_key_cb, NULL) == SOT_OK);
    CHECK(sot_engine_start(e) == SOT_OK);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/", sot_engine_port(e));
    sot_client *cl = sot_client_new(e, url, NULL, NULL, NULL, err, sizeof err);
    sot_client_start(cl);
    sot_client_subscribe(cl, "vault2", NULL, long_on_msg, long_on_sub, NULL);
    WAIT_FOR(atomic_load(&long_subs) == 1, 5);
    for (int i = 0; i < 3; i++) sot_client_publish(cl, "vault2", NULL, "{\"note\":\"sealed\"}", NULL, NULL);
    WAIT_FOR(atomic_load(&long_msgs) == 3, 10);
    CHECK(atomic_load(&long_msgs) == 3);   /* sealed with the cut id, opened with it */
    sot_client_destroy(cl);
    sot_engine_destroy(e);
}

int main(void) {
    char err[256];
    sot_conf *c = sot_conf_new();
    sot_conf_set(c, "listen", "127.0.0.1:0", err, sizeof err);
    sot_conf_set(c, "embedded.brokers", "1", err, sizeof err);
    gw = sot_engine_new(c, err, sizeof err);
    sot_conf_destroy(c);
    CHECK(sot_engine_set_auth_callback(gw, NULL, NULL) == SOT_ERR_INVALID_ARG);
    CHECK(sot_engine_set_auth_callback(gw, on_auth, NULL) == SOT_OK);
    CHECK(sot_engine_set_audit_callback(gw, on_audit, NULL) == SOT_OK);
    CHECK(sot_engine_start(gw) == SOT_OK);
    CHECK(sot_engine_set_auth_callback(gw, on_auth, NULL) == SOT_ERR_STATE);
    CHECK(sot_auth_deny(gw, 12345, 403, "x") == SOT_ERR_NOT_FOUND);
    CHECK(sot_auth_deny(gw, 1, 200, "x") == SOT_ERR_INVALID_ARG);

    c = sot_conf_new();
    sot_conf_set(c, "mode", "client", err, sizeof err);
    sot_engine *ce = sot_engine_new(c, err, sizeof err);
    sot_conf_destroy(c);
    sot_engine_start(ce);

    sot_client *alice = client(ce, "alice");
    WAIT_FOR(atomic_load(&opened) == 1, 5);
    CHECK(atomic_load(&opened) == 1);
    CHECK(strcmp(last_peer, "127.0.0.1") == 0);

    sot_client *nobody = client(ce, NULL);
    WAIT_FOR(atomic_load(&errors) == 1, 5);
    CHECK(atomic_load(&errors) == 1);       /* 403 at the handshake */
    CHECK(atomic_load(&opened) == 1);

    double t0 = now_s();
    sot_client *brief = client(ce, "shortlived");
    WAIT_FOR(atomic_load(&closed_4001) == 1, 5);
    CHECK(atomic_load(&closed_4001) == 1);  /* closed before its expiry */
    CHECK(now_s() - t0 < 1.5);
    printf("expiring credential closed with 4001 after %.2f s (expiry at 1.5 s)\n", now_s() - t0);

    WAIT_FOR(atomic_load(&audit_close) >= 1, 3);
    CHECK(atomic_load(&auth_calls) == 3);
    CHECK(atomic_load(&audit_ok) == 2);
    CHECK(atomic_load(&audit_denied) == 1);
    CHECK(atomic_load(&audit_open) == 2);
    CHECK(atomic_load(&audit_close) >= 1);

    sot_client_destroy(alice);
    sot_client_destroy(nobody);
    sot_client_destroy(brief);
    sot_engine_destroy(ce);
    sot_engine_destroy(gw);
    test_key_provider();
    test_key_provider_unterminated_id();
    return report();
}
