/* Embeds the StreamOtter gateway in a C program: configure, start, print where it listens
 * and which Kafka it uses, run until SIGINT/SIGTERM, stop gracefully.
 *
 *   gateway_embed [HOST:PORT] [kafka.bootstrap.servers]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <streamotter.h>

static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) { (void)sig; stop_requested = 1; }

int main(int argc, char **argv) {
    char err[512];
    sot_conf *conf = sot_conf_new();
    if (sot_conf_set(conf, "listen", argc > 1 ? argv[1] : "127.0.0.1:8080", err, sizeof err) != SOT_OK ||
        (argc > 2 && sot_conf_set(conf, "kafka.bootstrap.servers", argv[2], err, sizeof err) != SOT_OK)) {
        fprintf(stderr, "config: %s\n", err);
        sot_conf_destroy(conf);
        return 2;
    }
    sot_engine *engine = sot_engine_new(conf, err, sizeof err);
    sot_conf_destroy(conf); /* the engine keeps its own copy */
    if (!engine) {
        fprintf(stderr, "engine: %s\n", err);
        return 2;
    }
    int rc = sot_engine_start(engine);
    if (rc != SOT_OK) {
        fprintf(stderr, "start: %s: %s\n", sot_err_name(rc), sot_last_error());
        sot_engine_destroy(engine);
        return 1;
    }
    printf("streamotter %s listening on port %d, kafka %s\n", sot_version(), sot_engine_port(engine),
           sot_engine_bootstrap_servers(engine));
    fflush(stdout);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    while (!stop_requested) pause();
    sot_engine_stop(engine);
    sot_engine_destroy(engine);
    return 0;
}
