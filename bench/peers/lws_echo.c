/*
 * libwebsockets echo server (the libwebsockets peer). Debian's libwebsockets-test-server
 * serves only its dumb-increment, mirror and status protocols (no echo), so this is the
 * usual echo pattern against the same library (libwebsockets-dev, 4.1.6 on Debian 12):
 * every received message is queued and written back from LWS_CALLBACK_SERVER_WRITEABLE,
 * one lws_write per writeable callback as the library asks. One service thread.
 *
 * usage: lws_echo PORT
 */
#include <libwebsockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct msg {
    struct msg *next;
    size_t len;
    int binary;
    unsigned char buf[]; /* LWS_PRE bytes of headroom, then the payload */
};

struct pss {
    struct msg *head, *tail;
    unsigned char *acc;
    size_t acc_len, acc_cap;
    int acc_binary;
    int queued;
    int paused;
};

static volatile int interrupted;

static void on_signal(int s) {
    (void)s;
    interrupted = 1;
}

static int callback_echo(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    struct pss *pss = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        memset(pss, 0, sizeof *pss);
        break;
    case LWS_CALLBACK_RECEIVE:
        if (lws_is_first_fragment(wsi)) {
            pss->acc_len = 0;
            pss->acc_binary = lws_frame_is_binary(wsi);
        }
        if (pss->acc_len + len > pss->acc_cap) {
            size_t n = pss->acc_cap ? pss->acc_cap : 4096;
            while (n < pss->acc_len + len) n *= 2;
            pss->acc = realloc(pss->acc, n);
            pss->acc_cap = n;
        }
        memcpy(pss->acc + pss->acc_len, in, len);
        pss->acc_len += len;
        if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
            struct msg *m = malloc(sizeof *m + LWS_PRE + pss->acc_len);
            m->next = NULL;
            m->len = pss->acc_len;
            m->binary = pss->acc_binary;
            memcpy(m->buf + LWS_PRE, pss->acc, pss->acc_len);
            if (pss->tail) pss->tail->next = m;
            else pss->head = m;
            pss->tail = m;
            pss->queued++;
            pss->acc_len = 0;
            /* Stop reading from a client that does not read its echoes. */
            if (pss->queued > 1024 && !pss->paused) {
                pss->paused = 1;
                lws_rx_flow_control(wsi, 0);
            }
            lws_callback_on_writable(wsi);
        }
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        struct msg *m = pss->head;
        if (!m) break;
        int n = lws_write(wsi, m->buf + LWS_PRE, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
        if (n < (int)m->len) return -1;
        pss->head = m->next;
        if (!pss->head) pss->tail = NULL;
        free(m);
        pss->queued--;
        if (pss->paused && pss->queued < 256) {
            pss->paused = 0;
            lws_rx_flow_control(wsi, 1);
        }
        if (pss->head) lws_callback_on_writable(wsi);
        break;
    }
    case LWS_CALLBACK_CLOSED:
        while (pss->head) {
            struct msg *m = pss->head;
            pss->head = m->next;
            free(m);
        }
        free(pss->acc);
        pss->acc = NULL;
        break;
    default:
        break;
    }
    return 0;
}

static struct lws_protocols protocols[] = {
    {"echo", callback_echo, sizeof(struct pss), 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}, /* terminator */
};

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: lws_echo PORT\n");
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = atoi(argv[1]);
    info.iface = "127.0.0.1";
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    info.ka_time = 0;
    struct lws_context *ctx = lws_create_context(&info);
    if (!ctx) {
        fprintf(stderr, "lws_echo: lws_create_context failed\n");
        return 1;
    }
    printf("listening: ws://127.0.0.1:%d/\n", info.port);
    fflush(stdout);
    while (!interrupted && lws_service(ctx, 0) >= 0) {
    }
    lws_context_destroy(ctx);
    return 0;
}
