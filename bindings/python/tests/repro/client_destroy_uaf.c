/* Repro: sot_client_destroy on an open client that has an on_close callback, followed by
 * sot_engine_destroy of its engine, aborts the process on the engine's loop thread:
 *   Fatal error: Attempted to read an unowned reference but object 0x... was already destroyed
 * (ClientHandle.wire() closures capture [unowned self]; the StreamClient outlives the
 * ClientHandle and calls onClose when its connection finishes closing during the stop).
 * Build: cc -I include -o repro client_destroy_uaf.c -L build/lib -l:libstreamotter.so.0 */
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>
#include <streamotter.h>

static atomic_int opened;
static void on_open(void *o, const char *p) { (void)o; (void)p; atomic_store(&opened, 1); }
static void on_close(void *o, int code, const char *r) { (void)o; (void)code; (void)r; }

static sot_engine *engine(const char *mode) {
    char err[256];
    sot_conf *c = sot_conf_new();
    sot_conf_set(c, "mode", mode, err, sizeof err);
    sot_conf_set(c, "listen", "127.0.0.1:0", err, sizeof err);
    sot_conf_set(c, "embedded.brokers", "1", err, sizeof err);
    sot_engine *e = sot_engine_new(c, err, sizeof err);
    sot_conf_destroy(c);
    sot_engine_start(e);
    return e;
}

int main(void) {
    sot_engine *gw = engine("gateway");
    char url[64], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/", sot_engine_port(gw));
    sot_client_callbacks cb = {sizeof cb, on_open, NULL, on_close, NULL};
    for (int i = 0; i < 100; i++) {
        sot_engine *ce = engine("client");
        sot_client *cl = sot_client_new(ce, url, NULL, &cb, NULL, err, sizeof err);
        atomic_store(&opened, 0);
        sot_client_start(cl);
        while (!atomic_load(&opened)) usleep(500);
        sot_client_destroy(cl);
        sot_engine_destroy(ce);
    }
    sot_engine_destroy(gw);
    puts("no crash");
    return 0;
}
