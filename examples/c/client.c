/* Connects a client to a gateway, subscribes to a channel, publishes a few messages and
 * prints what comes back.
 *
 *   client ws://127.0.0.1:8080/ orders
 */
#define _DEFAULT_SOURCE /* usleep under -std=c11 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <streamotter.h>

static atomic_int acked, received, subscribed;

static void on_result(void *opaque, int status, const char *code, const char *message) {
    (void)opaque;
    if (status == SOT_OK) atomic_store(&subscribed, 1);
    else fprintf(stderr, "subscribe failed: %s: %s\n", code, message);
}

static void on_message(void *opaque, const sot_message *m) {
    (void)opaque;
    printf("message %s/%d@%lld: %.*s\n", m->channel, m->partition, (long long)m->offset,
           (int)m->data_len, m->data ? m->data : "(not JSON)");
    atomic_fetch_add(&received, 1);
}

static void on_ack(void *opaque, int status, const char *code, const char *message,
                   int32_t partition, int64_t offset) {
    (void)opaque;
    if (status == SOT_OK) printf("ack partition %d offset %lld\n", partition, (long long)offset);
    else fprintf(stderr, "publish failed: %s: %s\n", code, message);
    atomic_fetch_add(&acked, 1);
}

static void on_error(void *opaque, const char *code, const char *message) {
    (void)opaque;
    fprintf(stderr, "client: %s: %s\n", code, message);
}

int main(int argc, char **argv) {
    const char *url = argc > 1 ? argv[1] : "ws://127.0.0.1:8080/";
    const char *channel = argc > 2 ? argv[2] : "orders";
    char err[512];
    sot_conf *conf = sot_conf_new();
    sot_conf_set(conf, "mode", "client", err, sizeof err); /* a loop for clients only */
    sot_engine *engine = sot_engine_new(conf, err, sizeof err);
    sot_conf_destroy(conf);
    if (!engine || sot_engine_start(engine) != SOT_OK) {
        fprintf(stderr, "engine: %s\n", engine ? sot_last_error() : err);
        return 1;
    }
    sot_client_callbacks cbs = {sizeof cbs, NULL, NULL, NULL, on_error};
    sot_client *client = sot_client_new(engine, url, NULL, &cbs, NULL, err, sizeof err);
    if (!client) {
        fprintf(stderr, "client: %s\n", err);
        sot_engine_destroy(engine);
        return 1;
    }
    sot_client_start(client);
    sot_client_subscribe(client, channel, "\"latest\"", on_message, on_result, NULL);
    for (int i = 0; i < 100 && !atomic_load(&subscribed); i++) usleep(50000);
    if (!atomic_load(&subscribed)) {
        fprintf(stderr, "no subscription after 5 s\n");
        sot_engine_destroy(engine);
        return 1;
    }
    for (int i = 0; i < 3; i++) {
        char json[64];
        snprintf(json, sizeof json, "{\"greeting\":\"hello from C\",\"n\":%d}", i);
        sot_client_publish(client, channel, "c-example", json, on_ack, NULL);
    }
    for (int i = 0; i < 100 && (atomic_load(&acked) < 3 || atomic_load(&received) < 3); i++) usleep(50000);
    sot_client_destroy(client);
    sot_engine_destroy(engine);
    return atomic_load(&received) >= 3 ? 0 : 1;
}
