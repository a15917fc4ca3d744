#include "cshim.h"
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static __thread char tls_err[512];

static void set_err(char *err, size_t errlen, const char *what) {
    unsigned long e = ERR_peek_last_error();
    char buf[256] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    if (err && errlen) snprintf(err, errlen, "%s%s%s", what, buf[0] ? ": " : "", buf);
    ERR_clear_error();
}

const char *cshim_tls_error(void) {
    unsigned long e = ERR_get_error();
    if (!e) return tls_err[0] ? tls_err : "TLS error";
    ERR_error_string_n(e, tls_err, sizeof tls_err);
    ERR_clear_error();
    return tls_err;
}

static int set_min(SSL_CTX *ctx, int min_version) {
    return SSL_CTX_set_min_proto_version(ctx, min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
}

SSL_CTX *cshim_tls_server_ctx(const char *cert_file, const char *key_file, const char *ca_file,
                              int verify_mode, int min_version, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) { set_err(err, errlen, "SSL_CTX_new"); return NULL; }
    set_min(ctx, min_version);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        set_err(err, errlen, "certificate file"); SSL_CTX_free(ctx); return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        set_err(err, errlen, "key file"); SSL_CTX_free(ctx); return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        set_err(err, errlen, "key does not match certificate"); SSL_CTX_free(ctx); return NULL;
    }
    if (ca_file && ca_file[0]) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            set_err(err, errlen, "client CA file"); SSL_CTX_free(ctx); return NULL;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
        if (names) SSL_CTX_set_client_CA_list(ctx, names);
    }
    if (verify_mode == 1) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    else if (verify_mode == 2) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return ctx;
}

SSL_CTX *cshim_tls_client_ctx(const char *ca_file, int verify, int min_version, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { set_err(err, errlen, "SSL_CTX_new"); return NULL; }
    set_min(ctx, min_version);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
    if (ca_file && ca_file[0]) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            set_err(err, errlen, "CA file"); SSL_CTX_free(ctx); return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        set_err(err, errlen, "system trust store"); SSL_CTX_free(ctx); return NULL;
    }
    SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return ctx;
}

struct sni_table {
    int n;
    char **names;
    SSL_CTX **ctxs;
};

static int sni_cb(SSL *ssl, int *al, void *arg) {
    (void)al;
    struct sni_table *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name) return SSL_TLSEXT_ERR_NOACK;
    for (int i = 0; i < t->n; i++) {
        if (strcasecmp(name, t->names[i]) == 0) {
            SSL_set_SSL_CTX(ssl, t->ctxs[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

void cshim_tls_set_sni(SSL_CTX *default_ctx, int n, const char *const *names, SSL_CTX *const *ctxs) {
    struct sni_table *t = calloc(1, sizeof *t);
    t->n = n;
    t->names = calloc((size_t)n, sizeof(char *));
    t->ctxs = calloc((size_t)n, sizeof(SSL_CTX *));
    for (int i = 0; i < n; i++) {
        t->names[i] = strdup(names[i]);
        t->ctxs[i] = ctxs[i];
        SSL_CTX_up_ref(ctxs[i]);
    }
    /* The table lives as long as the process (contexts are replaced on reload, the
     * old table with them stays small). */
    SSL_CTX_set_tlsext_servername_callback(default_ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(default_ctx, t);
}

SSL *cshim_tls_new(SSL_CTX *ctx, int server, const char *hostname) {
    SSL *ssl = SSL_new(ctx);
    if (!ssl) return NULL;
    BIO *rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(rbio, -1);
    SSL_set_bio(ssl, rbio, wbio);
    if (server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        if (hostname && hostname[0]) {
            SSL_set_tlsext_host_name(ssl, hostname);
            SSL_set1_host(ssl, hostname);
        }
    }
    return ssl;
}

int cshim_tls_handshake(SSL *ssl) {
    int rc = SSL_do_handshake(ssl);
    if (rc == 1) return 1;
    int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    return -1;
}

int cshim_tls_feed(SSL *ssl, const void *data, size_t len) {
    return BIO_write(SSL_get_rbio(ssl), data, (int)len);
}

int cshim_tls_read(SSL *ssl, void *buf, int len) {
    int n = SSL_read(ssl, buf, len);
    if (n > 0) return n;
    int e = SSL_get_error(ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_ZERO_RETURN) return -2;
    return -1;
}

int cshim_tls_write(SSL *ssl, const void *data, int len) {
    int n = SSL_write(ssl, data, len);
    return n > 0 ? n : -1;
}

size_t cshim_tls_pending_out(SSL *ssl) { return BIO_ctrl_pending(SSL_get_wbio(ssl)); }

int cshim_tls_take_out(SSL *ssl, void *buf, int len) { return BIO_read(SSL_get_wbio(ssl), buf, len); }

void cshim_tls_shutdown(SSL *ssl) { SSL_shutdown(ssl); }

int cshim_tls_peer_subject(SSL *ssl, char *buf, size_t len) {
    if (!len) return 0;
    buf[0] = 0;
    X509 *cert = SSL_get1_peer_certificate(ssl);
    if (!cert) return 0;
    X509_NAME_oneline(X509_get_subject_name(cert), buf, (int)len);
    X509_free(cert);
    return 1;
}
