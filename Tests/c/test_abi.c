/* Tests of the C ABI against the installed header and library. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <streamotter.h>

#include "check.h"


static void test_version_and_errors(void) {
    CHECK(strcmp(sot_version(), "0.1.0") == 0);
    CHECK(sot_version_number() == SOT_VERSION_NUMBER);
    CHECK((sot_version_number() >> 16) == SOT_VERSION_MAJOR);
    CHECK(strcmp(sot_err_name(SOT_OK), "SOT_OK") == 0);
    CHECK(strcmp(sot_err_name(SOT_ERR_CONFIG), "SOT_ERR_CONFIG") == 0);
    CHECK(strcmp(sot_err_name(-9999), "SOT_ERR_UNKNOWN") == 0);
    CHECK(strlen(sot_strerror(SOT_ERR_IO)) > 0);
    CHECK(sot_err_count() == 12);
    int seen_internal = 0;
    for (int i = 0; i < sot_err_count(); i++)
        if (sot_err_code_at(i) == SOT_ERR_INTERNAL) seen_internal = 1;
    CHECK(seen_internal);
}

static void test_conf(void) {
    char err[256] = {0};
    sot_conf *c = sot_conf_new();
    CHECK(c != NULL);
    CHECK(sot_conf_set(c, "listen", "127.0.0.1:0", err, sizeof err) == SOT_OK);
    CHECK(sot_conf_set(c, "kafka.linger.ms", "2", err, sizeof err) == SOT_OK);
    CHECK(sot_conf_set(c, "no.such.key", "1", err, sizeof err) == SOT_ERR_CONFIG);
    CHECK(strstr(err, "no.such.key") != NULL);
    CHECK(sot_conf_set(c, "ws.max_frame_size", "lots", err, sizeof err) == SOT_ERR_CONFIG);
    CHECK(strstr(err, "ws.max_frame_size") != NULL);
    CHECK(sot_conf_set(c, NULL, "x", err, sizeof err) == SOT_ERR_INVALID_ARG);
    CHECK(sot_last_status() == SOT_ERR_INVALID_ARG);
    CHECK(sot_conf_set(NULL, "listen", "x", NULL, 0) == SOT_ERR_INVALID_ARG);
    char small[4];
    CHECK(sot_conf_set(c, "listen", "bad", small, sizeof small) == SOT_ERR_CONFIG);
    CHECK(strlen(small) == 3); /* truncated, NUL-terminated */
    char val[64];
    CHECK(sot_conf_get(c, "listen", val, sizeof val) == SOT_OK && strcmp(val, "127.0.0.1:0") == 0);
    CHECK(sot_conf_get(c, "ws.ping_interval_ms", val, sizeof val) == SOT_ERR_CONFIG);
    sot_conf_destroy(c);
    sot_conf_destroy(NULL);
}

static int http_get(int port, const char *path, char *out, size_t outsz) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) { close(fd); return -1; }
    size_t got = 0;
    ssize_t r;
    while (got + 1 < outsz && (r = read(fd, out + got, outsz - 1 - got)) > 0) got += (size_t)r;
    out[got] = 0;
    close(fd);
    return (int)got;
}

static void test_engine(void) {
    char err[256] = {0};
    sot_conf *c = sot_conf_new();
    sot_conf_set(c, "listen", "127.0.0.1:0", err, sizeof err);
    sot_conf_set(c, "embedded.brokers", "1", err, sizeof err);
    sot_engine *e = sot_engine_new(c, err, sizeof err);
    sot_conf_destroy(c);
    CHECK(e != NULL);
    CHECK(sot_engine_port(e) < 0);          /* not started */
    CHECK(sot_engine_bootstrap_servers(e) == NULL);
    CHECK(sot_engine_stop(e) == SOT_ERR_STATE);
    CHECK(sot_engine_start(e) == SOT_OK);
    CHECK(sot_engine_start(e) == SOT_ERR_STATE);
    int port = sot_engine_port(e);
    CHECK(port > 0);
    const char *bs = sot_engine_bootstrap_servers(e);
    CHECK(bs != NULL && strstr(bs, "127.0.0.1:") != NULL);

    char resp[2048];
    CHECK(http_get(port, "/healthz", resp, sizeof resp) > 0);
    CHECK(strstr(resp, "HTTP/1.1 200") == resp);
    CHECK(strstr(resp, "\"status\":\"ok\"") != NULL);
    CHECK(http_get(port, "/nope", resp, sizeof resp) > 0 && strstr(resp, "HTTP/1.1 404") == resp);

    /* A second engine on the same port fails with SOT_ERR_IO and a message. */
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    sot_conf *c2 = sot_conf_new();
    sot_conf_set(c2, "listen", listen, err, sizeof err);
    sot_conf_set(c2, "embedded.brokers", "1", err, sizeof err);
    sot_engine *e2 = sot_engine_new(c2, err, sizeof err);
    sot_conf_destroy(c2);
    CHECK(sot_engine_start(e2) == SOT_ERR_IO);
    CHECK(strstr(sot_last_error(), "listen") != NULL);
    sot_engine_destroy(e2);

    CHECK(sot_engine_stop(e) == SOT_OK);
    CHECK(sot_engine_stop(e) == SOT_OK); /* stopping again is a no-op */
    CHECK(http_get(port, "/healthz", resp, sizeof resp) < 0); /* no longer listening */
    sot_engine_destroy(e);
    sot_engine_destroy(NULL);
    sot_engine_destroy(e); /* twice: ignored, reported */
    CHECK(sot_last_status() == SOT_ERR_BAD_HANDLE);
}

static void test_destroy_running(void) {
    char err[256];
    sot_conf *c = sot_conf_new();
    sot_conf_set(c, "listen", "127.0.0.1:0", err, sizeof err);
    sot_conf_set(c, "embedded.brokers", "1", err, sizeof err);
    sot_engine *e = sot_engine_new(c, err, sizeof err);
    sot_conf_destroy(c);
    CHECK(sot_engine_start(e) == SOT_OK);
    sot_engine_destroy(e); /* stops, then frees */
}

static void test_bad_conf_at_new(void) {
    char err[256] = {0};
    sot_engine *e = sot_engine_new(NULL, err, sizeof err); /* defaults are valid */
    CHECK(e != NULL);
    sot_engine_destroy(e);
}

int main(void) {
    test_version_and_errors();
    test_conf();
    test_bad_conf_at_new();
    test_engine();
    test_destroy_running();
    return report();
}
