/*
 * The ingest ceiling: librdkafka producing straight into the broker, with the settings the
 * gateway's producer uses (acks=all, enable.idempotence=true, linger.ms=1,
 * partitioner=murmur2_random) and the same records as the load generator's publishes
 * (key "kNN" over 100 keys, value {"t":<ns>,"p":"xxx..."} of --size bytes; with --id-header
 * also the `streamotter-id` header that the gateway adds to a publish with an id).
 *
 * It keeps at most --window records outstanding (produced, delivery report not yet seen)
 * and reports delivered records/s and produce-to-delivery-report latency over the
 * measured window, with its own CPU use (all its threads, librdkafka's included).
 *
 * usage: rdkafka_produce --brokers LIST --topic T [--size 64] [--window 10000] [--id-header]
 *        [--duration 5] [--warmup 1] [--system NAME] [--label TEXT] [--results FILE]
 *        [--set KEY=VALUE ...]
 */
#define _GNU_SOURCE
#include <librdkafka/rdkafka.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../hist.h"

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double self_cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + (double)r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static hist_t lat;
static uint64_t meas_start, meas_end, delivered, in_window, errors, outstanding;
static char errsample[256];

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    outstanding--;
    if (m->err) {
        errors++;
        if (!errsample[0]) snprintf(errsample, sizeof errsample, "%s", rd_kafka_err2str(m->err));
        return;
    }
    delivered++;
    uint64_t now = now_ns();
    if (now >= meas_start && now < meas_end) {
        in_window++;
        h_record(&lat, now - (uint64_t)(uintptr_t)m->_private);
    }
}

int main(int argc, char **argv) {
    const char *brokers = NULL, *topic = "bench", *system = "librdkafka", *label = "", *results = NULL;
    int size = 64, window = 10000, id_header = 0;
    double duration = 5, warmup = 1;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    const char *defaults[][2] = {
        {"client.id", "bench-rdkafka"}, {"enable.idempotence", "true"}, {"acks", "all"},
        {"linger.ms", "1"}, {"partitioner", "murmur2_random"},
    };
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], err, sizeof err);
    for (int i = 1; i < argc; i++) {
#define NEXT() (i + 1 < argc ? argv[++i] : (fprintf(stderr, "%s needs a value\n", argv[i]), exit(2), ""))
        if (!strcmp(argv[i], "--brokers")) brokers = NEXT();
        else if (!strcmp(argv[i], "--topic")) topic = NEXT();
        else if (!strcmp(argv[i], "--size")) size = atoi(NEXT());
        else if (!strcmp(argv[i], "--window")) window = atoi(NEXT());
        else if (!strcmp(argv[i], "--id-header")) id_header = 1;
        else if (!strcmp(argv[i], "--duration")) duration = atof(NEXT());
        else if (!strcmp(argv[i], "--warmup")) warmup = atof(NEXT());
        else if (!strcmp(argv[i], "--system")) system = NEXT();
        else if (!strcmp(argv[i], "--label")) label = NEXT();
        else if (!strcmp(argv[i], "--results")) results = NEXT();
        else if (!strcmp(argv[i], "--set")) {
            char *kv = strdup(NEXT());
            char *eq = strchr(kv, '=');
            if (!eq) { fprintf(stderr, "--set expects KEY=VALUE\n"); return 2; }
            *eq = 0;
            if (rd_kafka_conf_set(conf, kv, eq + 1, err, sizeof err) != RD_KAFKA_CONF_OK) { fprintf(stderr, "%s\n", err); return 2; }
        } else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!brokers) { fprintf(stderr, "--brokers is required\n"); return 2; }
    if (size < 24) size = 24;
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) { fprintf(stderr, "rd_kafka_new: %s\n", err); return 1; }

    char *value = malloc((size_t)size + 64);
    char *pad = malloc((size_t)size);
    memset(pad, 'x', (size_t)size);
    uint64_t t0 = now_ns(), produced = 0;
    meas_start = t0 + (uint64_t)(warmup * 1e9);
    meas_end = meas_start + (uint64_t)(duration * 1e9);
    double cpu_a = 0, cpu_b = 0;
    int measuring = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (!measuring && now >= meas_start) { cpu_a = self_cpu_s(); measuring = 1; }
        if (now >= meas_end) break;
        while (outstanding < (uint64_t)window) {
            uint64_t t = now_ns();
            int n = sprintf(value, "{\"t\":%" PRIu64 ",\"p\":\"", t);
            int p = size - n - 2;
            if (p < 0) p = 0;
            memcpy(value + n, pad, (size_t)p);
            n += p;
            value[n++] = '"';
            value[n++] = '}';
            char key[8];
            int kl = snprintf(key, sizeof key, "k%02d", (int)((produced * 7) % 100));
            rd_kafka_resp_err_t e;
            if (id_header) {
                /* The record the gateway writes for a publish with an id: the same key and
                 * value plus the streamotter-id header (the loadgen's ids are send times). */
                char id[24];
                int il = snprintf(id, sizeof id, "%" PRIu64, t);
                e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_KEY(key, (size_t)kl), RD_KAFKA_V_VALUE(value, (size_t)n),
                                      RD_KAFKA_V_HEADER("streamotter-id", id, (ssize_t)il),
                                      RD_KAFKA_V_OPAQUE((void *)(uintptr_t)t), RD_KAFKA_V_END);
            } else {
                e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_KEY(key, (size_t)kl), RD_KAFKA_V_VALUE(value, (size_t)n),
                                      RD_KAFKA_V_OPAQUE((void *)(uintptr_t)t), RD_KAFKA_V_END);
            }
            if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
            if (e) {
                errors++;
                if (!errsample[0]) snprintf(errsample, sizeof errsample, "%s", rd_kafka_err2str(e));
                break;
            }
            produced++;
            outstanding++;
        }
        rd_kafka_poll(rk, outstanding >= (uint64_t)window ? 1 : 0);
    }
    cpu_b = self_cpu_s();
    double secs = (double)(meas_end - meas_start) / 1e9;
    double rate = (double)in_window / secs;
    double cpu_pct = 100.0 * (cpu_b - cpu_a) / secs;
    printf("%-28s ingest   size=%d window=%d => %.0f msgs/s  ack p50=%.0fus p99=%.0fus p99.9=%.0fus  cpu=%.0f%%%s%s\n",
           system, size, window, rate, h_pct_us(&lat, .5), h_pct_us(&lat, .99), h_pct_us(&lat, .999), cpu_pct,
           errors ? "  errors: " : "", errors ? errsample : "");
    fflush(stdout);
    if (results) {
        FILE *f = fopen(results, "a");
        if (f) {
            fprintf(f, "{\"mode\":\"ingest\",\"system\":\"%s\",\"label\":\"%s\",\"proto\":\"kafka\",\"conns\":1,\"subs\":0,\"pubs\":0,"
                       "\"size\":%d,\"window\":%d,\"rate_target\":0,\"duration_s\":%.3f,\"threads\":0,\"ready\":1,\"failed\":0,"
                       "\"closed_early\":0,\"msgs\":%" PRIu64 ",\"rate\":%.1f,\"sent\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"lost\":0,"
                       "\"lat_kind\":\"ack\",\"lat_n\":%" PRIu64 ",\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
                       "\"max_us\":%.1f,\"mean_us\":%.1f,\"loadgen_cpu_pct\":-1,\"server\":[{\"pid\":%d,\"cpu_pct\":%.1f,\"rss_kb\":-1}],"
                       "\"error_sample\":\"%s\"}\n",
                    system, label, size, window, secs, in_window, rate, produced, errors, lat.n, h_pct_us(&lat, .5),
                    h_pct_us(&lat, .9), h_pct_us(&lat, .99), h_pct_us(&lat, .999), (double)lat.max / 1000.0,
                    lat.n ? (double)lat.sum / (double)lat.n / 1000.0 : 0, (int)getpid(), cpu_pct, errsample);
            fclose(f);
        }
    }
    /* Leave without waiting for the rest: the measured window is over. */
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    _exit(0);
}
