/*
 * streamotter.node: the N-API addon under the Node.js binding (lib/index.js).
 *
 * Loading. The addon does not link libstreamotter. Node's executable exports its own libuv
 * and OpenSSL; a library linked normally into the process would have its uv_* and SSL_*
 * references bound to Node's copies. So the addon dlopen()s libstreamotter.so.0 with
 * RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND (the library's own dependencies come before the
 * global scope) and resolves the header's sot_* functions with dlsym (the first ABI's are
 * required, later additions optional; sot_engine_set_key_provider is not used: it needs a
 * synchronous answer on the engine thread, which JavaScript cannot give). Path: the
 * environment variable STREAMOTTER_LIBRARY, else the repository's build/lib relative to
 * this file, else "libstreamotter.so.0" through the normal search path.
 *
 * Callbacks. Engines run with callbacks="thread": the library calls the C callbacks below
 * on the engine's loop thread. Each callback copies what it was given into one malloc'd
 * event and queues it with napi_call_threadsafe_function (non-blocking, unbounded queue);
 * call_js() converts it to JS values on the JS thread and calls the engine's dispatch
 * function through napi_make_callback (so promise reactions run right after). Nothing the
 * library owns crosses threads.
 *
 * Identity. A callback gets one `void *opaque`. Client and consumer callbacks get their
 * `child` struct. One-shot requests (publish, subscribe, unsubscribe) get an integer:
 * an engine slot (16 bits) and the request id chosen by JS (48 bits), so nothing has to be
 * allocated per request and nothing leaks when a callback never runs.
 *
 * Lifetime. An engine_ctx is reference counted (JS wrapper, thread-safe function, every
 * child, every async work) and freed when the count reaches 0; all counting happens on the
 * JS thread. The thread-safe function exists from start() until the engine is destroyed
 * (after stop); the library promises no callback after sot_engine_destroy returns, so the
 * tsfn is released right after it, and then nothing keeps the process alive.
 *
 * Copyright (c) 2026 the StreamOtter authors. MIT License.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <node_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamotter.h"

/* ------------------------------------------------------------------------------------ */
/* The library, loaded at run time                                                       */

#define SOT_FUNCTIONS(X)                                                                  \
    X(sot_version) X(sot_version_number) X(sot_err_name) X(sot_strerror) X(sot_err_count) \
    X(sot_err_code_at) X(sot_last_error)                                                  \
    X(sot_conf_new) X(sot_conf_set) X(sot_conf_get) X(sot_conf_destroy)                   \
    X(sot_engine_new) X(sot_engine_start) X(sot_engine_stop) X(sot_engine_port)           \
    X(sot_engine_bootstrap_servers) X(sot_engine_destroy) X(sot_engine_fd)                \
    X(sot_engine_poll) X(sot_runtime_info)                                                \
    X(sot_engine_set_server_callbacks) X(sot_conn_send) X(sot_conn_close)                 \
    X(sot_engine_publish)                                                                 \
    X(sot_client_new) X(sot_client_start) X(sot_client_send) X(sot_client_publish)        \
    X(sot_client_subscribe) X(sot_client_unsubscribe) X(sot_client_get_health)            \
    X(sot_client_close) X(sot_client_destroy)                                             \
    X(sot_consumer_new) X(sot_consumer_subscribe) X(sot_consumer_assign)                  \
    X(sot_consumer_seek) X(sot_consumer_seek_time) X(sot_consumer_commit)                 \
    X(sot_consumer_destroy)

/* Added after the first ABI: resolved when the library has them; the features that need
 * them report SOT_ERR_STATE ("not supported by this library") otherwise. */
#define SOT_OPTIONAL_FUNCTIONS(X)                                                         \
    X(sot_engine_set_auth_callback) X(sot_auth_allow) X(sot_auth_deny)                    \
    X(sot_engine_set_audit_callback)

static struct {
#define X(name) __typeof__(name) *name;
    SOT_FUNCTIONS(X)
    SOT_OPTIONAL_FUNCTIONS(X)
#undef X
} L;

static pthread_mutex_t g_load_mu = PTHREAD_MUTEX_INITIALIZER;
static void *g_lib;
static int g_deepbind;
static char g_lib_path[PATH_MAX];
static char g_load_error[4096];

static void append_error(const char *fmt, const char *a, const char *b) {
    size_t used = strlen(g_load_error);
    if (used + 1 >= sizeof g_load_error) return;
    snprintf(g_load_error + used, sizeof g_load_error - used, fmt, a, b);
}

static int try_open(const char *path, int flags) {
    void *h = dlopen(path, flags);
    if (!h) {
        const char *e = dlerror();
        append_error("  %s: %s\n", path, e ? e : "dlopen failed");
        return 0;
    }
    int missing = 0;
#define X(name)                                                                   \
    *(void **)&L.name = dlsym(h, #name);                                          \
    if (!L.name) {                                                                \
        append_error("  %s: missing symbol %s\n", path, #name);                   \
        missing++;                                                                \
    }
    SOT_FUNCTIONS(X)
#undef X
#define X(name) *(void **)&L.name = dlsym(h, #name);
    SOT_OPTIONAL_FUNCTIONS(X)
#undef X
    if (missing) {
        dlclose(h);
        memset(&L, 0, sizeof L);
        return 0;
    }
    int v = L.sot_version_number();
    if ((v >> 16) != SOT_VERSION_MAJOR) {
        char have[32], want[32];
        snprintf(have, sizeof have, "%d.%d.%d", v >> 16, (v >> 8) & 0xff, v & 0xff);
        snprintf(want, sizeof want, "%d.x", SOT_VERSION_MAJOR);
        append_error("  library version %s, the addon needs %s\n", have, want);
        dlclose(h);
        memset(&L, 0, sizeof L);
        return 0;
    }
    struct link_map *lm = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name && lm->l_name[0])
        snprintf(g_lib_path, sizeof g_lib_path, "%s", lm->l_name);
    else
        snprintf(g_lib_path, sizeof g_lib_path, "%s", path);
    g_lib = h;
    return 1;
}

/* RTLD_DEEPBIND and copy relocations. Node's executable has R_X86_64_COPY relocations for
 * libc variables (__environ, stdin/stdout/stderr, __tzname, __timezone, ...): the program
 * owns the live copy and libc itself uses it through its GOT. A deep-bound library binds
 * its own references to libc's original definitions instead. For the statically
 * initialised ones (stdin/stdout/stderr) both hold the same value; __environ, though, is
 * written at start-up only into the executable's copy, so libc's original is NULL and the
 * Swift runtime (built into libstreamotter with -static-stdlib) reads `environ` directly in
 * its initialiser and crashes. Before dlopen we copy the live environ into libc's original
 * definition. (getenv/setenv inside libc keep using the live copy; after this only direct
 * reads of `environ` by the library could see an older array.) */
static void sync_deepbind_environ(void) {
    extern char **environ;
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    if (!libc) return;
    char ***orig = dlsym(libc, "__environ"); /* libc's own definition, not the global one */
    if (orig && orig != &environ) *orig = environ;
    dlclose(libc);
}

/* Loads the library once per process (every Node environment shares it). */
static int load_library(void) {
    pthread_mutex_lock(&g_load_mu);
    if (g_lib) {
        pthread_mutex_unlock(&g_load_mu);
        return 1;
    }
    g_load_error[0] = 0;
    const char *nodeep = getenv("STREAMOTTER_NO_DEEPBIND"); /* diagnostics only */
    g_deepbind = !(nodeep && nodeep[0] && strcmp(nodeep, "0") != 0);
    int flags = RTLD_NOW | RTLD_LOCAL | (g_deepbind ? RTLD_DEEPBIND : 0);
    if (g_deepbind) sync_deepbind_environ();
    int ok = 0;
    const char *env = getenv("STREAMOTTER_LIBRARY");
    if (env && env[0]) {
        ok = try_open(env, flags); /* explicit choice: no fallback */
    } else {
        Dl_info info;
        char self[PATH_MAX];
        if (dladdr((void *)&load_library, &info) && info.dli_fname && realpath(info.dli_fname, self)) {
            char *slash = strrchr(self, '/');
            if (slash) *slash = 0;
            /* bindings/node/build/streamotter.node (Makefile) and
             * bindings/node/build/Release/streamotter.node (node-gyp) */
            static const char *rel[] = {"/../../../build/lib/libstreamotter.so.0",
                                        "/../../../../build/lib/libstreamotter.so.0"};
            for (size_t i = 0; i < sizeof rel / sizeof rel[0] && !ok; i++) {
                char cand[PATH_MAX * 2], real[PATH_MAX];
                snprintf(cand, sizeof cand, "%s%s", self, rel[i]);
                if (realpath(cand, real)) ok = try_open(real, flags);
            }
        }
        if (!ok) ok = try_open("libstreamotter.so.0", flags);
    }
    pthread_mutex_unlock(&g_load_mu);
    return ok;
}

/* ------------------------------------------------------------------------------------ */
/* Per-environment data: the JS factory that turns (status, message) into an Error.      */

typedef struct env_data {
    napi_ref make_error;
} env_data;

static void env_data_finalize(napi_env env, void *data, void *hint) {
    (void)hint;
    env_data *d = data;
    if (d->make_error) napi_delete_reference(env, d->make_error);
    free(d);
}

static napi_value make_error(napi_env env, int status, const char *message) {
    env_data *d = NULL;
    napi_get_instance_data(env, (void **)&d);
    napi_value err = NULL, msg, code;
    napi_create_string_utf8(env, message ? message : "", NAPI_AUTO_LENGTH, &msg);
    napi_create_int32(env, status, &code);
    if (d && d->make_error) {
        napi_value fn, undef;
        napi_get_reference_value(env, d->make_error, &fn);
        napi_get_undefined(env, &undef);
        napi_value argv[2] = {code, msg};
        if (napi_call_function(env, undef, fn, 2, argv, &err) != napi_ok) err = NULL;
    }
    if (!err) {
        napi_create_error(env, NULL, msg, &err);
        napi_set_named_property(env, err, "code", code);
    }
    return err;
}

static void throw_status(napi_env env, int status, const char *message) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) return;
    napi_throw(env, make_error(env, status, message));
}

/* Throws the library's last error for a failed call on this thread. */
static void throw_last(napi_env env, int status) {
    char msg[1024];
    const char *m = L.sot_last_error();
    snprintf(msg, sizeof msg, "%s", m && m[0] ? m : L.sot_strerror(status));
    throw_status(env, status, msg);
}

#define NAPI_OK(call)                                                                  \
    do {                                                                               \
        if ((call) != napi_ok) {                                                       \
            bool pending_ = false;                                                     \
            napi_is_exception_pending(env, &pending_);                                 \
            if (!pending_) napi_throw_error(env, NULL, "N-API call failed: " #call);   \
            return NULL;                                                               \
        }                                                                              \
    } while (0)

/* ------------------------------------------------------------------------------------ */
/* Engines, children, slots                                                              */

typedef struct child child;

typedef struct engine_ctx {
    sot_engine *h;
    int slot;
    int refs; /* JS thread only */
    int started, stopping, destroyed, failed;
    napi_env env;
    napi_threadsafe_function tsfn;
    int tsfn_released;
    napi_async_context actx;
    int hook;
    atomic_int want_smessage, want_audit;
    atomic_ullong posted, dispatched, dropped;
    child *children;
} engine_ctx;

enum { CHILD_CLIENT = 1, CHILD_CONSUMER = 2 };

struct child {
    child *next, *prev;
    engine_ctx *e;
    int kind;
    void *h; /* sot_client * / sot_consumer *; NULL once destroyed */
    uint64_t id;
    atomic_int want_raw;
    int busy; /* async work running */
    int orphan; /* JS wrapper collected while busy */
};

#define MAX_SLOTS 65536
#define ID_BITS 48
#define ID_MASK ((UINT64_C(1) << ID_BITS) - 1)
static engine_ctx *g_slots[MAX_SLOTS];
static pthread_mutex_t g_slots_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_slot_hint = 1;

static int slot_alloc(engine_ctx *e) {
    pthread_mutex_lock(&g_slots_mu);
    int found = -1;
    for (int i = 0; i < MAX_SLOTS - 1; i++) {
        int s = 1 + (g_slot_hint - 1 + i) % (MAX_SLOTS - 1);
        if (!__atomic_load_n(&g_slots[s], __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&g_slots[s], e, __ATOMIC_RELEASE);
            found = s;
            g_slot_hint = s + 1;
            break;
        }
    }
    pthread_mutex_unlock(&g_slots_mu);
    return found;
}

static void slot_free(int s) {
    pthread_mutex_lock(&g_slots_mu);
    __atomic_store_n(&g_slots[s], NULL, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_slots_mu);
}

static void *req_opaque(engine_ctx *e, uint64_t id) {
    return (void *)(uintptr_t)(((uint64_t)e->slot << ID_BITS) | (id & ID_MASK));
}

static engine_ctx *req_engine(void *opaque, uint64_t *id) {
    uint64_t v = (uint64_t)(uintptr_t)opaque;
    *id = v & ID_MASK;
    return __atomic_load_n(&g_slots[v >> ID_BITS], __ATOMIC_ACQUIRE);
}

static void ctx_ref(engine_ctx *e) { e->refs++; }

static void ctx_unref(engine_ctx *e) {
    if (--e->refs > 0) return;
    slot_free(e->slot);
    free(e);
}

/* ------------------------------------------------------------------------------------ */
/* Events: one allocation, copied on the library's thread                                */

enum {
    EV_CONNECT = 1,  /* conn, path, headers...   */
    EV_SMESSAGE = 2, /* conn, data, is_text      */
    EV_SCLOSE = 3,   /* conn, code, reason       */
    EV_DELIVERY = 4, /* id: status, error, topic, partition, offset */
    EV_OPEN = 5,     /* client id: subprotocol   */
    EV_CMESSAGE = 6, /* client id: data, is_text */
    EV_CCLOSE = 7,   /* client id: code, reason  */
    EV_CERROR = 8,   /* client id: code, message */
    EV_ACK = 9,      /* id: status, code, message, partition, offset */
    EV_SUBMSG = 10,  /* sub id: channel, partition, offset, timestamp, key, data, frame */
    EV_RESULT = 11,  /* id: status, code, message */
    EV_RECORD = 12,  /* consumer id: topic, partition, offset, timestamp, key, value, headers */
    EV_DONE = 13,    /* id: status, message (async work finished) */
    EV_STOPPED = 14, /* id: status, message (sot_engine_stop returned) */
    EV_FLUSH = 15,   /* id: everything queued before it was dispatched */
    EV_AUTH = 16,    /* request id: path, peer address, tls subject, headers... */
    EV_AUDIT = 17    /* json */
};

typedef struct span {
    size_t off, len;
    int null;
} span;

typedef struct ev {
    int kind;
    int nspan;
    uint64_t id;
    int64_t n[4];
    span sp[];
} ev;

typedef struct piece {
    const void *p; /* NULL: null */
    size_t len;
} piece;

static char *ev_bytes(ev *v) { return (char *)&v->sp[v->nspan]; }

static ev *ev_make(int kind, uint64_t id, int np, const piece *pc) {
    size_t total = 0;
    for (int i = 0; i < np; i++) total += (pc[i].p ? pc[i].len : 0) + 1;
    ev *v = malloc(sizeof(ev) + (size_t)np * sizeof(span) + total);
    if (!v) return NULL;
    v->kind = kind;
    v->nspan = np;
    v->id = id;
    memset(v->n, 0, sizeof v->n);
    char *b = ev_bytes(v);
    size_t off = 0;
    for (int i = 0; i < np; i++) {
        v->sp[i].off = off;
        v->sp[i].null = pc[i].p == NULL;
        v->sp[i].len = pc[i].p ? pc[i].len : 0;
        if (pc[i].p && pc[i].len) memcpy(b + off, pc[i].p, pc[i].len);
        b[off + v->sp[i].len] = 0;
        off += v->sp[i].len + 1;
    }
    return v;
}

static piece cstr(const char *s) { return (piece){s, s ? strlen(s) : 0}; }

static void post(engine_ctx *e, ev *v) {
    if (!v) {
        atomic_fetch_add(&e->dropped, 1);
        return;
    }
    atomic_fetch_add(&e->posted, 1);
    if (napi_call_threadsafe_function(e->tsfn, v, napi_tsfn_nonblocking) != napi_ok) {
        atomic_fetch_add(&e->dropped, 1);
        free(v);
    }
}

/* Server callbacks (engine thread). */

static void cb_srv_connect(void *o, uint64_t conn, const char *path, const sot_header *h, size_t n) {
    engine_ctx *e = o;
    piece stack[33], *pc = stack;
    size_t np = 1 + 2 * n;
    if (np > 33 && !(pc = malloc(np * sizeof *pc))) {
        post(e, NULL);
        return;
    }
    pc[0] = cstr(path);
    for (size_t i = 0; i < n; i++) {
        pc[1 + 2 * i] = cstr(h[i].name);
        pc[2 + 2 * i] = (piece){h[i].value ? h[i].value : "", h[i].value ? h[i].value_len : 0};
    }
    ev *v = ev_make(EV_CONNECT, 0, (int)np, pc);
    if (pc != stack) free(pc);
    if (v) v->n[0] = (int64_t)conn;
    post(e, v);
}

static void cb_srv_message(void *o, uint64_t conn, int is_text, const void *data, size_t len) {
    engine_ctx *e = o;
    if (!atomic_load_explicit(&e->want_smessage, memory_order_relaxed)) return;
    piece pc[1] = {{data ? data : "", len}};
    ev *v = ev_make(EV_SMESSAGE, 0, 1, pc);
    if (v) {
        v->n[0] = (int64_t)conn;
        v->n[1] = is_text;
    }
    post(e, v);
}

static void cb_srv_close(void *o, uint64_t conn, int code, const char *reason) {
    engine_ctx *e = o;
    piece pc[1] = {cstr(reason ? reason : "")};
    ev *v = ev_make(EV_SCLOSE, 0, 1, pc);
    if (v) {
        v->n[0] = (int64_t)conn;
        v->n[1] = code;
    }
    post(e, v);
}

static void cb_delivery(void *o, int status, const char *error, const char *topic, int32_t partition,
                        int64_t offset) {
    uint64_t id;
    engine_ctx *e = req_engine(o, &id);
    if (!e) return;
    piece pc[2] = {cstr(error), cstr(topic)};
    ev *v = ev_make(EV_DELIVERY, id, 2, pc);
    if (v) {
        v->n[0] = status;
        v->n[1] = partition;
        v->n[2] = offset;
    }
    post(e, v);
}

static void cb_auth(void *o, uint64_t request, const char *path, const sot_header *h, size_t n,
                    const char *peer, const char *tls_subject) {
    engine_ctx *e = o;
    piece stack[35], *pc = stack;
    size_t np = 3 + 2 * n;
    if (np > 35 && !(pc = malloc(np * sizeof *pc))) {
        post(e, NULL);
        return;
    }
    pc[0] = cstr(path);
    pc[1] = cstr(peer);
    pc[2] = cstr(tls_subject);
    for (size_t i = 0; i < n; i++) {
        pc[3 + 2 * i] = cstr(h[i].name);
        pc[4 + 2 * i] = (piece){h[i].value ? h[i].value : "", h[i].value ? h[i].value_len : 0};
    }
    ev *v = ev_make(EV_AUTH, request, (int)np, pc);
    if (pc != stack) free(pc);
    post(e, v);
}

static void cb_audit(void *o, const char *json) {
    engine_ctx *e = o;
    if (!atomic_load_explicit(&e->want_audit, memory_order_relaxed)) return;
    piece pc[1] = {cstr(json ? json : "{}")};
    post(e, ev_make(EV_AUDIT, 0, 1, pc));
}

/* Client callbacks (engine thread). */

static void cb_open(void *o, const char *subprotocol) {
    child *c = o;
    piece pc[1] = {cstr(subprotocol)};
    post(c->e, ev_make(EV_OPEN, c->id, 1, pc));
}

static void cb_cmessage(void *o, int is_text, const void *data, size_t len) {
    child *c = o;
    if (!atomic_load_explicit(&c->want_raw, memory_order_relaxed)) return;
    piece pc[1] = {{data ? data : "", len}};
    ev *v = ev_make(EV_CMESSAGE, c->id, 1, pc);
    if (v) v->n[0] = is_text;
    post(c->e, v);
}

static void cb_cclose(void *o, int code, const char *reason) {
    child *c = o;
    piece pc[1] = {cstr(reason ? reason : "")};
    ev *v = ev_make(EV_CCLOSE, c->id, 1, pc);
    if (v) v->n[0] = code;
    post(c->e, v);
}

static void cb_cerror(void *o, const char *code, const char *message) {
    child *c = o;
    piece pc[2] = {cstr(code ? code : "error"), cstr(message ? message : "")};
    post(c->e, ev_make(EV_CERROR, c->id, 2, pc));
}

static void cb_ack(void *o, int status, const char *code, const char *message, int32_t partition,
                   int64_t offset) {
    uint64_t id;
    engine_ctx *e = req_engine(o, &id);
    if (!e) return;
    piece pc[2] = {cstr(code), cstr(message)};
    ev *v = ev_make(EV_ACK, id, 2, pc);
    if (v) {
        v->n[0] = status;
        v->n[1] = partition;
        v->n[2] = offset;
    }
    post(e, v);
}

static void cb_submsg(void *o, const sot_message *m) {
    uint64_t id;
    engine_ctx *e = req_engine(o, &id);
    if (!e || !m) return;
    piece pc[4] = {cstr(m->channel), cstr(m->key), {m->data, m->data ? m->data_len : 0},
                   {m->frame, m->frame ? m->frame_len : 0}};
    ev *v = ev_make(EV_SUBMSG, id, 4, pc);
    if (v) {
        v->n[0] = m->partition;
        v->n[1] = m->offset;
        v->n[2] = m->timestamp;
    }
    post(e, v);
}

static void cb_result(void *o, int status, const char *code, const char *message) {
    uint64_t id;
    engine_ctx *e = req_engine(o, &id);
    if (!e) return;
    piece pc[2] = {cstr(code), cstr(message)};
    ev *v = ev_make(EV_RESULT, id, 2, pc);
    if (v) v->n[0] = status;
    post(e, v);
}

/* Consumer callback (engine thread). */

static void cb_record(void *o, const sot_record *r) {
    child *c = o;
    if (!r) return;
    size_t nh = r->n_headers;
    size_t np = 3 + 2 * nh;
    piece stack[35], *pc = stack;
    if (np > 35 && !(pc = malloc(np * sizeof *pc))) {
        post(c->e, NULL);
        return;
    }
    pc[0] = cstr(r->topic);
    pc[1] = (piece){r->key, r->key ? r->key_len : 0};
    pc[2] = (piece){r->value, r->value ? r->value_len : 0};
    for (size_t i = 0; i < nh; i++) {
        pc[3 + 2 * i] = cstr(r->headers[i].name);
        pc[4 + 2 * i] = (piece){r->headers[i].value, r->headers[i].value ? r->headers[i].value_len : 0};
    }
    ev *v = ev_make(EV_RECORD, c->id, (int)np, pc);
    if (pc != stack) free(pc);
    if (v) {
        v->n[0] = r->partition;
        v->n[1] = r->offset;
        v->n[2] = r->timestamp;
    }
    post(c->e, v);
}

/* ------------------------------------------------------------------------------------ */
/* JS side of the events                                                                 */

static napi_value v_null(napi_env env) {
    napi_value r;
    napi_get_null(env, &r);
    return r;
}

static napi_value v_str(napi_env env, ev *v, int i) {
    if (v->sp[i].null) return v_null(env);
    napi_value r;
    napi_create_string_utf8(env, ev_bytes(v) + v->sp[i].off, v->sp[i].len, &r);
    return r;
}

static napi_value v_buf(napi_env env, ev *v, int i) {
    if (v->sp[i].null) return v_null(env);
    napi_value r;
    void *unused;
    napi_create_buffer_copy(env, v->sp[i].len, ev_bytes(v) + v->sp[i].off, &unused, &r);
    return r;
}

static napi_value v_int(napi_env env, int64_t n) {
    napi_value r;
    napi_create_int64(env, n, &r);
    return r;
}

static napi_value v_data(napi_env env, ev *v, int i, int is_text) {
    return is_text ? v_str(env, v, i) : v_buf(env, v, i);
}

/* [name, value, name, value, ...] from spans [from, nspan) */
static napi_value v_pairs(napi_env env, ev *v, int from, int values_as_buffers) {
    napi_value arr;
    napi_create_array_with_length(env, (size_t)(v->nspan - from), &arr);
    for (int i = from; i < v->nspan; i++) {
        int is_value = (i - from) % 2 == 1;
        napi_set_element(env, arr, (uint32_t)(i - from),
                         is_value && values_as_buffers ? v_buf(env, v, i) : v_str(env, v, i));
    }
    return arr;
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
    engine_ctx *e = context;
    ev *v = data;
    if (!env || !js_cb) {
        free(v);
        return;
    }
    atomic_fetch_add(&e->dispatched, 1);
    napi_handle_scope scope;
    napi_open_handle_scope(env, &scope);
    napi_value argv[10];
    size_t argc = 0;
    argv[argc++] = v_int(env, v->kind);
    argv[argc++] = v_int(env, (int64_t)v->id);
    switch (v->kind) {
    case EV_CONNECT:
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_str(env, v, 0);
        argv[argc++] = v_pairs(env, v, 1, 0);
        break;
    case EV_SMESSAGE:
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_data(env, v, 0, (int)v->n[1]);
        argv[argc++] = v_int(env, v->n[1]);
        break;
    case EV_SCLOSE:
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_int(env, v->n[1]);
        argv[argc++] = v_str(env, v, 0);
        break;
    case EV_DELIVERY:
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_str(env, v, 0);
        argv[argc++] = v_str(env, v, 1);
        argv[argc++] = v_int(env, v->n[1]);
        argv[argc++] = v_int(env, v->n[2]);
        break;
    case EV_OPEN:
        argv[argc++] = v_str(env, v, 0);
        break;
    case EV_CMESSAGE:
        argv[argc++] = v_data(env, v, 0, (int)v->n[0]);
        argv[argc++] = v_int(env, v->n[0]);
        break;
    case EV_CCLOSE:
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_str(env, v, 0);
        break;
    case EV_CERROR:
        argv[argc++] = v_str(env, v, 0);
        argv[argc++] = v_str(env, v, 1);
        break;
    case EV_ACK:
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_str(env, v, 0);
        argv[argc++] = v_str(env, v, 1);
        argv[argc++] = v_int(env, v->n[1]);
        argv[argc++] = v_int(env, v->n[2]);
        break;
    case EV_SUBMSG:
        argv[argc++] = v_str(env, v, 0);
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_int(env, v->n[1]);
        argv[argc++] = v_int(env, v->n[2]);
        argv[argc++] = v_str(env, v, 1);
        argv[argc++] = v_str(env, v, 2);
        argv[argc++] = v_str(env, v, 3);
        break;
    case EV_RESULT:
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_str(env, v, 0);
        argv[argc++] = v_str(env, v, 1);
        break;
    case EV_RECORD:
        argv[argc++] = v_str(env, v, 0);
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_int(env, v->n[1]);
        argv[argc++] = v_int(env, v->n[2]);
        argv[argc++] = v_buf(env, v, 1);
        argv[argc++] = v_buf(env, v, 2);
        argv[argc++] = v_pairs(env, v, 3, 1);
        break;
    case EV_DONE:
    case EV_STOPPED:
        argv[argc++] = v_int(env, v->n[0]);
        argv[argc++] = v_str(env, v, 0);
        break;
    case EV_AUTH:
        argv[argc++] = v_str(env, v, 0);
        argv[argc++] = v_str(env, v, 1);
        argv[argc++] = v_str(env, v, 2);
        argv[argc++] = v_pairs(env, v, 3, 0);
        break;
    case EV_AUDIT:
        argv[argc++] = v_str(env, v, 0);
        break;
    case EV_FLUSH:
    default:
        break;
    }
    free(v);
    napi_value recv; /* napi_make_callback needs an object receiver */
    napi_get_global(env, &recv);
    napi_make_callback(env, e->actx, recv, js_cb, argc, argv, NULL);
    /* lib/index.js catches exceptions of user code itself; anything still pending is a
     * bug of the binding and is reported the way Node reports uncaught exceptions. */
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
        napi_value exc;
        napi_get_and_clear_last_exception(env, &exc);
        napi_fatal_exception(env, exc);
    }
    napi_close_handle_scope(env, scope);
}

/* Posts an event from the JS thread (async work results, flush markers). Returns 0 when
 * the engine's thread-safe function is gone. */
static int post_local(engine_ctx *e, int kind, uint64_t id, int status, const char *msg) {
    if (!e->tsfn || e->tsfn_released) return 0;
    piece pc[1] = {cstr(msg ? msg : "")};
    ev *v = ev_make(kind, id, 1, pc);
    if (!v) return 0;
    v->n[0] = status;
    atomic_fetch_add(&e->posted, 1);
    if (napi_call_threadsafe_function(e->tsfn, v, napi_tsfn_nonblocking) != napi_ok) {
        free(v);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------ */
/* Argument helpers                                                                      */

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
    size_t argc = want;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
    for (size_t i = argc; i < want; i++) napi_get_undefined(env, &argv[i]);
    return 1;
}

static int is_nullish(napi_env env, napi_value v) {
    napi_valuetype t;
    napi_typeof(env, v, &t);
    return t == napi_null || t == napi_undefined;
}

/* A malloc'd NUL-terminated copy of a JS string (NULL for null/undefined when allowed). */
static int get_str(napi_env env, napi_value v, char **out, int nullable) {
    *out = NULL;
    if (nullable && is_nullish(env, v)) return 1;
    size_t len;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
        napi_throw_type_error(env, NULL, "expected a string");
        return 0;
    }
    char *s = malloc(len + 1);
    if (!s) {
        throw_status(env, SOT_ERR_NOMEM, "out of memory");
        return 0;
    }
    napi_get_value_string_utf8(env, v, s, len + 1, &len);
    *out = s;
    return 1;
}

/* Bytes of a Buffer / TypedArray / DataView (not copied: valid during this call). */
static int get_bytes(napi_env env, napi_value v, const void **p, size_t *len, int nullable) {
    *p = NULL;
    *len = 0;
    if (nullable && is_nullish(env, v)) return 1;
    bool is;
    if (napi_is_buffer(env, v, &is) == napi_ok && is) {
        void *d;
        napi_get_buffer_info(env, v, &d, len);
        *p = d ? d : "";
        return 1;
    }
    if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
        napi_typedarray_type t;
        size_t n, off;
        void *d;
        napi_value ab;
        napi_get_typedarray_info(env, v, &t, &n, &d, &ab, &off);
        size_t el = 1;
        switch (t) {
        case napi_int16_array: case napi_uint16_array: el = 2; break;
        case napi_int32_array: case napi_uint32_array: case napi_float32_array: el = 4; break;
        case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: el = 8; break;
        default: el = 1;
        }
        *len = n * el;
        *p = d ? d : "";
        return 1;
    }
    napi_throw_type_error(env, NULL, "expected a Buffer or Uint8Array");
    return 0;
}

static int get_i64(napi_env env, napi_value v, int64_t *out) {
    if (napi_get_value_int64(env, v, out) != napi_ok) {
        napi_throw_type_error(env, NULL, "expected a number");
        return 0;
    }
    return 1;
}

static int get_bool(napi_env env, napi_value v) {
    bool b = false;
    if (napi_get_value_bool(env, v, &b) != napi_ok) {
        int64_t n = 0;
        if (napi_get_value_int64(env, v, &n) == napi_ok) return n != 0;
        return 0;
    }
    return b;
}

/* A sot_conf from [[key, value], ...]. Throws (with the library's message) on error. */
static sot_conf *build_conf(napi_env env, napi_value pairs) {
    sot_conf *conf = L.sot_conf_new();
    if (!conf) {
        throw_status(env, SOT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (is_nullish(env, pairs)) return conf;
    uint32_t n = 0;
    if (napi_get_array_length(env, pairs, &n) != napi_ok) {
        L.sot_conf_destroy(conf);
        napi_throw_type_error(env, NULL, "configuration must be an array of [key, value]");
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        napi_value pair, k, v;
        char *key = NULL, *val = NULL;
        if (napi_get_element(env, pairs, i, &pair) != napi_ok ||
            napi_get_element(env, pair, 0, &k) != napi_ok || napi_get_element(env, pair, 1, &v) != napi_ok ||
            !get_str(env, k, &key, 0) || !get_str(env, v, &val, 0)) {
            free(key);
            free(val);
            L.sot_conf_destroy(conf);
            return NULL;
        }
        char err[512] = "";
        int rc = L.sot_conf_set(conf, key, val, err, sizeof err);
        free(key);
        free(val);
        if (rc != SOT_OK) {
            L.sot_conf_destroy(conf);
            throw_status(env, rc, err);
            return NULL;
        }
    }
    return conf;
}

/* Type tags: a handle of one kind passed where another is expected is refused. */
static const napi_type_tag ENGINE_TAG = {0x73e0c1e8f1a94b6bULL, 0x9d2f3b7c55e14a01ULL};
static const napi_type_tag CHILD_TAG = {0x73e0c1e8f1a94b6bULL, 0x9d2f3b7c55e14a02ULL};

static int has_tag(napi_env env, napi_value v, const napi_type_tag *tag) {
    bool ok = false;
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return 0;
    return napi_check_object_type_tag(env, v, tag, &ok) == napi_ok && ok;
}

static engine_ctx *get_engine(napi_env env, napi_value v) {
    engine_ctx *e = NULL;
    if (!has_tag(env, v, &ENGINE_TAG) || napi_get_value_external(env, v, (void **)&e) != napi_ok || !e) {
        napi_throw_type_error(env, NULL, "not an engine handle");
        return NULL;
    }
    return e;
}

static engine_ctx *get_live_engine(napi_env env, napi_value v) {
    engine_ctx *e = get_engine(env, v);
    if (e && !e->h) {
        throw_status(env, SOT_ERR_BAD_HANDLE, "the engine was destroyed");
        return NULL;
    }
    return e;
}

static child *get_child(napi_env env, napi_value v, int live) {
    child *c = NULL;
    if (!has_tag(env, v, &CHILD_TAG) || napi_get_value_external(env, v, (void **)&c) != napi_ok || !c) {
        napi_throw_type_error(env, NULL, "not a client or consumer handle");
        return NULL;
    }
    if (live && !c->h) {
        throw_status(env, SOT_ERR_BAD_HANDLE, "the object was closed or its engine stopped");
        return NULL;
    }
    return c;
}

static napi_value ret_int(napi_env env, int64_t n) { return v_int(env, n); }

static napi_value ret_undefined(napi_env env) {
    napi_value r;
    napi_get_undefined(env, &r);
    return r;
}

/* ------------------------------------------------------------------------------------ */
/* Engine                                                                                */

static void child_unlink(child *c) {
    engine_ctx *e = c->e;
    if (c->prev) c->prev->next = c->next;
    else if (e->children == c) e->children = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

static void engine_cleanup_hook(void *arg);

/* Destroys the library engine (stopping it if needed) and releases the tsfn. JS thread. */
static void engine_destroy_native(engine_ctx *e) {
    if (e->h) {
        L.sot_engine_destroy(e->h); /* frees every client and consumer too */
        e->h = NULL;
        e->destroyed = 1;
        for (child *c = e->children; c;) {
            child *next = c->next;
            c->h = NULL;
            c->next = c->prev = NULL;
            c = next;
        }
        e->children = NULL;
    }
    if (e->hook) {
        napi_remove_env_cleanup_hook(e->env, engine_cleanup_hook, e);
        e->hook = 0;
    }
    if (e->tsfn && !e->tsfn_released) {
        e->tsfn_released = 1;
        napi_release_threadsafe_function(e->tsfn, napi_tsfn_release);
    }
}

/* The environment is going away (process exit, worker end) with the engine running. */
static void engine_cleanup_hook(void *arg) {
    engine_ctx *e = arg;
    e->hook = 0;
    if (e->stopping) return; /* sot_engine_stop runs on a worker; it ends by itself */
    engine_destroy_native(e);
}

static void engine_finalize(napi_env env, void *data, void *hint) {
    (void)env;
    (void)hint;
    engine_ctx *e = data;
    /* A running engine is kept alive by its tsfn (which holds the JS dispatcher), so the
     * wrapper is collected only when the engine never started, was destroyed, or the
     * environment is being torn down. */
    if (!e->stopping) engine_destroy_native(e);
    ctx_unref(e);
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
    (void)hint;
    engine_ctx *e = data;
    if (e->actx) napi_async_destroy(env, e->actx);
    e->actx = NULL;
    e->tsfn = NULL;
    ctx_unref(e);
}

/* engineNew(confPairs) -> handle */
static napi_value js_engine_new(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    if (!get_args(env, info, 1, argv)) return NULL;
    sot_conf *conf = build_conf(env, argv[0]);
    if (!conf) return NULL;
    char err[1024] = "";
    sot_engine *h = L.sot_engine_new(conf, err, sizeof err);
    L.sot_conf_destroy(conf);
    if (!h) {
        throw_status(env, SOT_ERR_CONFIG, err[0] ? err : L.sot_last_error());
        return NULL;
    }
    engine_ctx *e = calloc(1, sizeof *e);
    if (!e) {
        L.sot_engine_destroy(h);
        throw_status(env, SOT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    e->h = h;
    e->env = env;
    e->refs = 1; /* the JS wrapper */
    e->slot = slot_alloc(e);
    if (e->slot < 0) {
        L.sot_engine_destroy(h);
        free(e);
        throw_status(env, SOT_ERR_NOMEM, "too many engines alive at once");
        return NULL;
    }
    napi_value ext;
    if (napi_create_external(env, e, engine_finalize, NULL, &ext) != napi_ok) {
        L.sot_engine_destroy(h);
        slot_free(e->slot);
        free(e);
        napi_throw_error(env, NULL, "napi_create_external failed");
        return NULL;
    }
    napi_type_tag_object(env, ext, &ENGINE_TAG);
    return ext;
}

/* engineStart(handle, dispatch, withAuth) */
static napi_value js_engine_start(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    if (!get_args(env, info, 3, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    if (!e) return NULL;
    int with_auth = get_bool(env, argv[2]);
    if (with_auth && !L.sot_engine_set_auth_callback) {
        throw_status(env, SOT_ERR_STATE, "authentication callbacks are not supported by this libstreamotter");
        return NULL;
    }
    if (e->started || e->failed) {
        throw_status(env, SOT_ERR_STATE,
                     e->started ? "the engine was already started" : "a failed engine cannot be started again");
        return NULL;
    }
    napi_value name;
    napi_create_string_utf8(env, "StreamOtterEngine", NAPI_AUTO_LENGTH, &name);
    NAPI_OK(napi_async_init(env, NULL, name, &e->actx));
    napi_status st = napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, e, tsfn_finalize, e,
                                                     call_js, &e->tsfn);
    if (st != napi_ok) {
        napi_async_destroy(env, e->actx);
        e->actx = NULL;
        napi_throw_error(env, NULL, "napi_create_threadsafe_function failed");
        return NULL;
    }
    ctx_ref(e); /* the tsfn */
    e->tsfn_released = 0;
    sot_server_callbacks cbs = {sizeof cbs, cb_srv_connect, cb_srv_message, cb_srv_close};
    int rc = L.sot_engine_set_server_callbacks(e->h, &cbs, e);
    if (rc == SOT_OK && with_auth) rc = L.sot_engine_set_auth_callback(e->h, cb_auth, e);
    if (rc == SOT_OK && L.sot_engine_set_audit_callback) rc = L.sot_engine_set_audit_callback(e->h, cb_audit, e);
    if (rc == SOT_OK) rc = L.sot_engine_start(e->h);
    if (rc != SOT_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", L.sot_last_error());
        e->failed = 1;
        e->tsfn_released = 1;
        napi_release_threadsafe_function(e->tsfn, napi_tsfn_release);
        throw_status(env, rc, msg[0] ? msg : L.sot_strerror(rc));
        return NULL;
    }
    e->started = 1;
    if (napi_add_env_cleanup_hook(env, engine_cleanup_hook, e) == napi_ok) e->hook = 1;
    return ret_undefined(env);
}

typedef struct work {
    napi_async_work w;
    engine_ctx *e;
    child *c;
    int op;
    uint64_t id;
    char *topic;
    int32_t partition;
    int64_t offset;
    int status;
    char msg[1024];
} work;

enum { OP_STOP = 1, OP_SEEK, OP_SEEK_TIME, OP_COMMIT, OP_CONSUMER_DESTROY };

static void work_execute(napi_env env, void *data) {
    (void)env;
    work *w = data;
    switch (w->op) {
    case OP_STOP: w->status = L.sot_engine_stop(w->e->h); break;
    case OP_SEEK: w->status = L.sot_consumer_seek(w->c->h, w->topic, w->partition, w->offset); break;
    case OP_SEEK_TIME: w->status = L.sot_consumer_seek_time(w->c->h, w->topic, w->offset); break;
    case OP_COMMIT: w->status = L.sot_consumer_commit(w->c->h); break;
    case OP_CONSUMER_DESTROY:
        L.sot_consumer_destroy(w->c->h);
        w->status = SOT_OK;
        break;
    }
    if (w->status < 0) snprintf(w->msg, sizeof w->msg, "%s", L.sot_last_error());
}

static void work_complete(napi_env env, napi_status status, void *data) {
    work *w = data;
    engine_ctx *e = w->e;
    if (status != napi_ok && w->status == 0) {
        w->status = SOT_ERR_INTERNAL;
        snprintf(w->msg, sizeof w->msg, "the work was cancelled");
    }
    if (w->op == OP_STOP) {
        e->stopping = 0;
        if (!post_local(e, EV_STOPPED, w->id, w->status, w->msg)) engine_destroy_native(e);
    } else {
        child *c = w->c;
        c->busy = 0;
        if (w->op == OP_CONSUMER_DESTROY) {
            c->h = NULL;
            child_unlink(c);
        }
        post_local(e, EV_DONE, w->id, w->status, w->msg);
        if (c->orphan) {
            ctx_unref(c->e);
            free(c);
        }
    }
    napi_delete_async_work(env, w->w);
    free(w->topic);
    free(w);
    ctx_unref(e);
}

static int queue_work(napi_env env, work *w) {
    napi_value name;
    napi_create_string_utf8(env, "StreamOtterWork", NAPI_AUTO_LENGTH, &name);
    if (napi_create_async_work(env, NULL, name, work_execute, work_complete, w, &w->w) != napi_ok) return 0;
    if (napi_queue_async_work(env, w->w) != napi_ok) {
        napi_delete_async_work(env, w->w);
        return 0;
    }
    ctx_ref(w->e);
    return 1;
}

/* engineStop(handle, id): sot_engine_stop on a worker thread, then EV_STOPPED(id). */
static napi_value js_engine_stop(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    if (!get_args(env, info, 2, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    int64_t id;
    if (!e || !get_i64(env, argv[1], &id)) return NULL;
    if (!e->started || e->stopping) {
        throw_status(env, SOT_ERR_STATE, e->stopping ? "the engine is stopping" : "the engine is not running");
        return NULL;
    }
    work *w = calloc(1, sizeof *w);
    if (!w) {
        throw_status(env, SOT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    w->e = e;
    w->op = OP_STOP;
    w->id = (uint64_t)id;
    if (!queue_work(env, w)) {
        free(w);
        napi_throw_error(env, NULL, "could not queue the stop");
        return NULL;
    }
    e->stopping = 1;
    return ret_undefined(env);
}

/* engineDestroy(handle): after stop (or for an engine never started). */
static napi_value js_engine_destroy(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    if (!get_args(env, info, 1, argv)) return NULL;
    engine_ctx *e = get_engine(env, argv[0]);
    if (!e) return NULL;
    if (e->stopping) {
        throw_status(env, SOT_ERR_STATE, "the engine is stopping");
        return NULL;
    }
    engine_destroy_native(e);
    return ret_undefined(env);
}

/* engineRef(handle, bool) */
static napi_value js_engine_ref(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    if (!get_args(env, info, 2, argv)) return NULL;
    engine_ctx *e = get_engine(env, argv[0]);
    if (!e) return NULL;
    if (e->tsfn && !e->tsfn_released) {
        if (get_bool(env, argv[1])) napi_ref_threadsafe_function(env, e->tsfn);
        else napi_unref_threadsafe_function(env, e->tsfn);
    }
    return ret_undefined(env);
}

/* engineInfo(handle) -> {port, bootstrapServers} */
static napi_value js_engine_info(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    if (!get_args(env, info, 1, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    if (!e) return NULL;
    napi_value o;
    napi_create_object(env, &o);
    int port = L.sot_engine_port(e->h);
    napi_set_named_property(env, o, "port", port >= 0 ? v_int(env, port) : v_null(env));
    const char *bs = L.sot_engine_bootstrap_servers(e->h);
    napi_value s = v_null(env);
    if (bs) napi_create_string_utf8(env, bs, NAPI_AUTO_LENGTH, &s);
    napi_set_named_property(env, o, "bootstrapServers", s);
    return o;
}

/* engineStats(handle) -> {posted, dispatched, dropped}; posted - dispatched is the backlog
 * waiting in the thread-safe function's queue (unbounded: a slow listener grows it). */
static napi_value js_engine_stats(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    if (!get_args(env, info, 1, argv)) return NULL;
    engine_ctx *e = get_engine(env, argv[0]);
    if (!e) return NULL;
    napi_value o;
    napi_create_object(env, &o);
    napi_set_named_property(env, o, "posted", v_int(env, (int64_t)atomic_load(&e->posted)));
    napi_set_named_property(env, o, "dispatched", v_int(env, (int64_t)atomic_load(&e->dispatched)));
    napi_set_named_property(env, o, "dropped", v_int(env, (int64_t)atomic_load(&e->dropped)));
    return o;
}

/* engineWantMessages(handle, bool): deliver server 'message' events or not. */
static napi_value js_engine_want_messages(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    if (!get_args(env, info, 2, argv)) return NULL;
    engine_ctx *e = get_engine(env, argv[0]);
    if (!e) return NULL;
    atomic_store(&e->want_smessage, get_bool(env, argv[1]));
    return ret_undefined(env);
}

/* engineWantAudit(handle, bool): deliver 'audit' events or not. */
static napi_value js_engine_want_audit(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    if (!get_args(env, info, 2, argv)) return NULL;
    engine_ctx *e = get_engine(env, argv[0]);
    if (!e) return NULL;
    atomic_store(&e->want_audit, get_bool(env, argv[1]));
    return ret_undefined(env);
}

/* authAllow(handle, request, subject|null, roles|null, expiresAtMs) -> status (0, or
 * SOT_ERR_NOT_FOUND when the request timed out or was answered; other errors throw). */
static napi_value js_auth_allow(napi_env env, napi_callback_info info) {
    napi_value argv[5];
    if (!get_args(env, info, 5, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    int64_t request, expires;
    char *subject = NULL, *roles = NULL;
    if (!e || !get_i64(env, argv[1], &request) || !get_i64(env, argv[4], &expires)) return NULL;
    if (!get_str(env, argv[2], &subject, 1) || !get_str(env, argv[3], &roles, 1)) {
        free(subject);
        return NULL;
    }
    int rc = L.sot_auth_allow(e->h, (uint64_t)request, subject, roles, expires);
    free(subject);
    free(roles);
    if (rc < 0 && rc != SOT_ERR_NOT_FOUND) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* authDeny(handle, request, status, reason|null) -> status, as authAllow */
static napi_value js_auth_deny(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    if (!get_args(env, info, 4, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    int64_t request, status;
    char *reason = NULL;
    if (!e || !get_i64(env, argv[1], &request) || !get_i64(env, argv[2], &status) || !get_str(env, argv[3], &reason, 1))
        return NULL;
    int rc = L.sot_auth_deny(e->h, (uint64_t)request, (int)status, reason);
    free(reason);
    if (rc < 0 && rc != SOT_ERR_NOT_FOUND) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* flush(handle, id) -> bool: EV_FLUSH(id) once everything queued before it was handled. */
static napi_value js_flush(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    if (!get_args(env, info, 2, argv)) return NULL;
    engine_ctx *e = get_engine(env, argv[0]);
    int64_t id;
    if (!e || !get_i64(env, argv[1], &id)) return NULL;
    napi_value r;
    napi_get_boolean(env, post_local(e, EV_FLUSH, (uint64_t)id, 0, NULL), &r);
    return r;
}

/* connSend(handle, conn, data, isText) -> status >= 0 */
static napi_value js_conn_send(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    if (!get_args(env, info, 4, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    int64_t conn;
    const void *p;
    size_t len;
    if (!e || !get_i64(env, argv[1], &conn) || !get_bytes(env, argv[2], &p, &len, 0)) return NULL;
    int rc = L.sot_conn_send(e->h, (uint64_t)conn, p, len, get_bool(env, argv[3]));
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* connClose(handle, conn, code, reason|null) */
static napi_value js_conn_close(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    if (!get_args(env, info, 4, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    int64_t conn, code;
    char *reason = NULL;
    if (!e || !get_i64(env, argv[1], &conn) || !get_i64(env, argv[2], &code) || !get_str(env, argv[3], &reason, 1))
        return NULL;
    int rc = L.sot_conn_close(e->h, (uint64_t)conn, (int)code, reason);
    free(reason);
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* enginePublish(handle, channel, partition, key|null, value, headers[name, buf|null,...], id) */
static napi_value js_engine_publish(napi_env env, napi_callback_info info) {
    napi_value argv[7];
    if (!get_args(env, info, 7, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    char *channel = NULL;
    int64_t partition, id;
    const void *key, *value;
    size_t key_len, value_len;
    if (!e || !get_str(env, argv[1], &channel, 0)) return NULL;
    if (!get_i64(env, argv[2], &partition) || !get_bytes(env, argv[3], &key, &key_len, 1) ||
        !get_bytes(env, argv[4], &value, &value_len, 0) || !get_i64(env, argv[6], &id)) {
        free(channel);
        return NULL;
    }
    uint32_t nflat = 0;
    if (!is_nullish(env, argv[5])) napi_get_array_length(env, argv[5], &nflat);
    size_t nh = nflat / 2;
    sot_header *hs = nh ? calloc(nh, sizeof *hs) : NULL;
    char **names = nh ? calloc(nh, sizeof *names) : NULL;
    int ok = !nh || (hs && names);
    for (size_t i = 0; ok && i < nh; i++) {
        napi_value n, v;
        napi_get_element(env, argv[5], (uint32_t)(2 * i), &n);
        napi_get_element(env, argv[5], (uint32_t)(2 * i + 1), &v);
        const void *vp;
        size_t vl;
        ok = get_str(env, n, &names[i], 0) && get_bytes(env, v, &vp, &vl, 1);
        if (ok) hs[i] = (sot_header){names[i], vp, vl};
    }
    int rc = SOT_ERR_NOMEM;
    if (ok)
        rc = L.sot_engine_publish(e->h, channel, (int32_t)partition, key, key_len, value, value_len, hs, nh,
                                  id ? cb_delivery : NULL, id ? req_opaque(e, (uint64_t)id) : NULL);
    for (size_t i = 0; names && i < nh; i++) free(names[i]);
    free(names);
    free(hs);
    free(channel);
    if (!ok) {
        bool pending = false;
        napi_is_exception_pending(env, &pending);
        if (!pending) throw_status(env, SOT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* ------------------------------------------------------------------------------------ */
/* Clients and consumers                                                                 */

static void child_finalize(napi_env env, void *data, void *hint) {
    (void)env;
    (void)hint;
    child *c = data;
    if (c->busy) {
        c->orphan = 1; /* work_complete frees it */
        return;
    }
    if (c->h) {
        if (c->kind == CHILD_CLIENT) L.sot_client_destroy(c->h);
        else L.sot_consumer_destroy(c->h);
        c->h = NULL;
        child_unlink(c);
    }
    ctx_unref(c->e);
    free(c);
}

static napi_value wrap_child(napi_env env, engine_ctx *e, child *c) {
    c->e = e;
    ctx_ref(e);
    c->next = e->children;
    if (e->children) e->children->prev = c;
    e->children = c;
    napi_value ext;
    if (napi_create_external(env, c, child_finalize, NULL, &ext) != napi_ok) {
        napi_throw_error(env, NULL, "napi_create_external failed");
        return NULL;
    }
    napi_type_tag_object(env, ext, &CHILD_TAG);
    return ext;
}

/* clientNew(engine, url, confPairs, id) -> handle (not started) */
static napi_value js_client_new(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    if (!get_args(env, info, 4, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    char *url = NULL;
    int64_t id;
    if (!e || !get_str(env, argv[1], &url, 0)) return NULL;
    if (!get_i64(env, argv[3], &id)) {
        free(url);
        return NULL;
    }
    sot_conf *conf = build_conf(env, argv[2]);
    if (!conf) {
        free(url);
        return NULL;
    }
    child *c = calloc(1, sizeof *c);
    if (!c) {
        free(url);
        L.sot_conf_destroy(conf);
        throw_status(env, SOT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->kind = CHILD_CLIENT;
    c->id = (uint64_t)id;
    sot_client_callbacks cbs = {sizeof cbs, cb_open, cb_cmessage, cb_cclose, cb_cerror};
    char err[1024] = "";
    c->h = L.sot_client_new(e->h, url, conf, &cbs, c, err, sizeof err);
    L.sot_conf_destroy(conf);
    free(url);
    if (!c->h) {
        free(c);
        throw_status(env, SOT_ERR_CONFIG, err[0] ? err : L.sot_last_error());
        return NULL;
    }
    return wrap_child(env, e, c);
}

#define CLIENT_CALL(expr)                                  \
    do {                                                   \
        int rc_ = (expr);                                  \
        if (rc_ < 0) {                                     \
            throw_last(env, rc_);                          \
            return NULL;                                   \
        }                                                  \
        return ret_int(env, rc_);                          \
    } while (0)

static napi_value js_client_start(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    if (!get_args(env, info, 1, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    if (!c) return NULL;
    CLIENT_CALL(L.sot_client_start(c->h));
}

static napi_value js_client_want_raw(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    if (!get_args(env, info, 2, argv)) return NULL;
    child *c = get_child(env, argv[0], 0);
    if (!c) return NULL;
    atomic_store(&c->want_raw, get_bool(env, argv[1]));
    return ret_undefined(env);
}

/* clientSend(handle, data, isText) */
static napi_value js_client_send(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    if (!get_args(env, info, 3, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    const void *p;
    size_t len;
    if (!c || !get_bytes(env, argv[1], &p, &len, 0)) return NULL;
    CLIENT_CALL(L.sot_client_send(c->h, p, len, get_bool(env, argv[2])));
}

/* clientPublish(handle, channel, key|null, json, id) */
static napi_value js_client_publish(napi_env env, napi_callback_info info) {
    napi_value argv[5];
    if (!get_args(env, info, 5, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    char *channel = NULL, *key = NULL, *json = NULL;
    int64_t id;
    if (!c || !get_i64(env, argv[4], &id)) return NULL;
    if (!get_str(env, argv[1], &channel, 0) || !get_str(env, argv[2], &key, 1) || !get_str(env, argv[3], &json, 0)) {
        free(channel);
        free(key);
        return NULL;
    }
    int rc = L.sot_client_publish(c->h, channel, key, json, id ? cb_ack : NULL,
                                  id ? req_opaque(c->e, (uint64_t)id) : NULL);
    free(channel);
    free(key);
    free(json);
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* clientSubscribe(handle, channel, fromJson|null, id) */
static napi_value js_client_subscribe(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    if (!get_args(env, info, 4, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    char *channel = NULL, *from = NULL;
    int64_t id;
    if (!c || !get_i64(env, argv[3], &id)) return NULL;
    if (!get_str(env, argv[1], &channel, 0) || !get_str(env, argv[2], &from, 1)) {
        free(channel);
        return NULL;
    }
    void *op = req_opaque(c->e, (uint64_t)id);
    int rc = L.sot_client_subscribe(c->h, channel, from, cb_submsg, cb_result, op);
    free(channel);
    free(from);
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* clientUnsubscribe(handle, channel, id) */
static napi_value js_client_unsubscribe(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    if (!get_args(env, info, 3, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    char *channel = NULL;
    int64_t id;
    if (!c || !get_i64(env, argv[2], &id) || !get_str(env, argv[1], &channel, 0)) return NULL;
    int rc = L.sot_client_unsubscribe(c->h, channel, id ? cb_result : NULL, id ? req_opaque(c->e, (uint64_t)id) : NULL);
    free(channel);
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* clientHealth(handle) -> {state, score, rttMs, missedPongs, consecutiveFailures, reconnects} */
static napi_value js_client_health(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    if (!get_args(env, info, 1, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    if (!c) return NULL;
    sot_client_health h;
    memset(&h, 0, sizeof h);
    h.size = sizeof h;
    int rc = L.sot_client_get_health(c->h, &h);
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    napi_value o, d;
    napi_create_object(env, &o);
    napi_set_named_property(env, o, "state", v_int(env, h.state));
    napi_set_named_property(env, o, "score", v_int(env, h.score));
    napi_create_double(env, h.rtt_ms, &d);
    napi_set_named_property(env, o, "rttMs", d);
    napi_set_named_property(env, o, "missedPongs", v_int(env, h.missed_pongs));
    napi_set_named_property(env, o, "consecutiveFailures", v_int(env, h.consecutive_failures));
    napi_set_named_property(env, o, "reconnects", v_int(env, h.reconnects));
    return o;
}

/* clientClose(handle, code, reason|null) */
static napi_value js_client_close(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    if (!get_args(env, info, 3, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    int64_t code;
    char *reason = NULL;
    if (!c || !get_i64(env, argv[1], &code) || !get_str(env, argv[2], &reason, 1)) return NULL;
    int rc = L.sot_client_close(c->h, (int)code, reason);
    free(reason);
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* clientDestroy(handle): no callback of the client runs after it returns. */
static napi_value js_client_destroy(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    if (!get_args(env, info, 1, argv)) return NULL;
    child *c = get_child(env, argv[0], 0);
    if (!c) return NULL;
    if (c->h) {
        L.sot_client_destroy(c->h);
        c->h = NULL;
        child_unlink(c);
    }
    return ret_undefined(env);
}

/* consumerNew(engine, confPairs, id) -> handle */
static napi_value js_consumer_new(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    if (!get_args(env, info, 3, argv)) return NULL;
    engine_ctx *e = get_live_engine(env, argv[0]);
    int64_t id;
    if (!e || !get_i64(env, argv[2], &id)) return NULL;
    sot_conf *conf = build_conf(env, argv[1]);
    if (!conf) return NULL;
    child *c = calloc(1, sizeof *c);
    if (!c) {
        L.sot_conf_destroy(conf);
        throw_status(env, SOT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->kind = CHILD_CONSUMER;
    c->id = (uint64_t)id;
    c->e = e; /* cb_record may run before wrap_child returns */
    char err[1024] = "";
    c->h = L.sot_consumer_new(e->h, conf, cb_record, c, err, sizeof err);
    L.sot_conf_destroy(conf);
    if (!c->h) {
        free(c);
        const char *m = err[0] ? err : L.sot_last_error();
        int code = strstr(m, "not running") ? SOT_ERR_STATE : (strstr(m, "kafka.") ? SOT_ERR_CONFIG : SOT_ERR_KAFKA);
        throw_status(env, code, m);
        return NULL;
    }
    return wrap_child(env, e, c);
}

/* consumerSubscribe(handle, [topics]) */
static napi_value js_consumer_subscribe(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    if (!get_args(env, info, 2, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    if (!c) return NULL;
    uint32_t n = 0;
    if (napi_get_array_length(env, argv[1], &n) != napi_ok) {
        napi_throw_type_error(env, NULL, "topics must be an array of strings");
        return NULL;
    }
    char **topics = calloc(n ? n : 1, sizeof *topics);
    int ok = topics != NULL;
    for (uint32_t i = 0; ok && i < n; i++) {
        napi_value t;
        napi_get_element(env, argv[1], i, &t);
        ok = get_str(env, t, &topics[i], 0);
    }
    int rc = ok ? L.sot_consumer_subscribe(c->h, (const char *const *)topics, n) : 0;
    for (uint32_t i = 0; topics && i < n; i++) free(topics[i]);
    free(topics);
    if (!ok) return NULL;
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* consumerAssign(handle, topic, partition, offset) */
static napi_value js_consumer_assign(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    if (!get_args(env, info, 4, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    char *topic = NULL;
    int64_t partition, offset;
    if (!c || !get_i64(env, argv[2], &partition) || !get_i64(env, argv[3], &offset) || !get_str(env, argv[1], &topic, 0))
        return NULL;
    int rc = L.sot_consumer_assign(c->h, topic, (int32_t)partition, offset);
    free(topic);
    if (rc < 0) {
        throw_last(env, rc);
        return NULL;
    }
    return ret_int(env, rc);
}

/* consumerWork(handle, op, topic|null, partition, offset, id): blocking calls on a worker;
 * the answer comes back as EV_DONE(id). op: "seek" | "seekTime" | "commit" | "destroy". */
static napi_value js_consumer_work(napi_env env, napi_callback_info info) {
    napi_value argv[6];
    if (!get_args(env, info, 6, argv)) return NULL;
    child *c = get_child(env, argv[0], 1);
    if (!c) return NULL;
    char op[16] = "";
    size_t oplen;
    napi_get_value_string_utf8(env, argv[1], op, sizeof op, &oplen);
    int64_t partition = 0, offset = 0, id = 0;
    if (!get_i64(env, argv[3], &partition) || !get_i64(env, argv[4], &offset) || !get_i64(env, argv[5], &id))
        return NULL;
    if (c->busy) {
        throw_status(env, SOT_ERR_STATE, "another blocking call of this consumer is running");
        return NULL;
    }
    work *w = calloc(1, sizeof *w);
    if (!w) {
        throw_status(env, SOT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (!strcmp(op, "seek")) w->op = OP_SEEK;
    else if (!strcmp(op, "seekTime")) w->op = OP_SEEK_TIME;
    else if (!strcmp(op, "commit")) w->op = OP_COMMIT;
    else if (!strcmp(op, "destroy")) w->op = OP_CONSUMER_DESTROY;
    if (!w->op) {
        free(w);
        napi_throw_type_error(env, NULL, "unknown consumer operation");
        return NULL;
    }
    if (!get_str(env, argv[2], &w->topic, 1)) {
        free(w);
        return NULL;
    }
    w->e = c->e;
    w->c = c;
    w->partition = (int32_t)partition;
    w->offset = offset;
    w->id = (uint64_t)id;
    if (!queue_work(env, w)) {
        free(w->topic);
        free(w);
        napi_throw_error(env, NULL, "could not queue the consumer call");
        return NULL;
    }
    c->busy = 1;
    return ret_undefined(env);
}

/* ------------------------------------------------------------------------------------ */
/* Library information                                                                   */

static napi_value js_set_error_factory(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    if (!get_args(env, info, 1, argv)) return NULL;
    env_data *d = NULL;
    napi_get_instance_data(env, (void **)&d);
    if (!d) return NULL;
    if (d->make_error) napi_delete_reference(env, d->make_error);
    d->make_error = NULL;
    if (!is_nullish(env, argv[0])) napi_create_reference(env, argv[0], 1, &d->make_error);
    return ret_undefined(env);
}

static void set_str(napi_env env, napi_value o, const char *k, const char *s) {
    napi_value v;
    if (s) napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
    else v = v_null(env);
    napi_set_named_property(env, o, k, v);
}

static napi_value js_library_info(napi_env env, napi_callback_info info) {
    (void)info;
    napi_value o, b, statuses;
    napi_create_object(env, &o);
    set_str(env, o, "path", g_lib_path);
    set_str(env, o, "version", L.sot_version());
    napi_set_named_property(env, o, "versionNumber", v_int(env, L.sot_version_number()));
    napi_set_named_property(env, o, "headerVersionNumber", v_int(env, SOT_VERSION_NUMBER));
    set_str(env, o, "runtimeInfo", L.sot_runtime_info());
    napi_get_boolean(env, g_deepbind, &b);
    napi_set_named_property(env, o, "deepbind", b);
    napi_value has;
    napi_get_boolean(env, L.sot_engine_set_auth_callback && L.sot_auth_allow && L.sot_auth_deny, &has);
    napi_set_named_property(env, o, "hasAuth", has);
    napi_get_boolean(env, L.sot_engine_set_audit_callback != NULL, &has);
    napi_set_named_property(env, o, "hasAudit", has);
    int n = L.sot_err_count();
    napi_create_array_with_length(env, (size_t)(n > 0 ? n : 0), &statuses);
    for (int i = 0; i < n; i++) {
        int code = L.sot_err_code_at(i);
        napi_value s;
        napi_create_object(env, &s);
        napi_set_named_property(env, s, "code", v_int(env, code));
        set_str(env, s, "name", L.sot_err_name(code));
        set_str(env, s, "message", L.sot_strerror(code));
        napi_set_element(env, statuses, (uint32_t)i, s);
    }
    napi_set_named_property(env, o, "statuses", statuses);
    return o;
}

/* errName(code) / strerror(code) */
static napi_value js_err_name(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int64_t code;
    if (!get_args(env, info, 1, argv) || !get_i64(env, argv[0], &code)) return NULL;
    napi_value s;
    napi_create_string_utf8(env, L.sot_err_name((int)code), NAPI_AUTO_LENGTH, &s);
    return s;
}

static napi_value js_strerror(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int64_t code;
    if (!get_args(env, info, 1, argv) || !get_i64(env, argv[0], &code)) return NULL;
    napi_value s;
    napi_create_string_utf8(env, L.sot_strerror((int)code), NAPI_AUTO_LENGTH, &s);
    return s;
}

/* ------------------------------------------------------------------------------------ */

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
    if (!load_library()) {
        char msg[sizeof g_load_error + 256];
        snprintf(msg, sizeof msg,
                 "streamotter: could not load libstreamotter.so.0 (set STREAMOTTER_LIBRARY to its path):\n%s",
                 g_load_error);
        napi_throw_error(env, "ERR_STREAMOTTER_LOAD", msg);
        return NULL;
    }
    env_data *d = calloc(1, sizeof *d);
    if (!d || napi_set_instance_data(env, d, env_data_finalize, NULL) != napi_ok) {
        free(d);
        napi_throw_error(env, NULL, "napi_set_instance_data failed");
        return NULL;
    }
    static const struct {
        const char *name;
        napi_callback fn;
    } fns[] = {
        {"libraryInfo", js_library_info},
        {"setErrorFactory", js_set_error_factory},
        {"errName", js_err_name},
        {"strerror", js_strerror},
        {"engineNew", js_engine_new},
        {"engineStart", js_engine_start},
        {"engineStop", js_engine_stop},
        {"engineDestroy", js_engine_destroy},
        {"engineRef", js_engine_ref},
        {"engineInfo", js_engine_info},
        {"engineStats", js_engine_stats},
        {"engineWantMessages", js_engine_want_messages},
        {"enginePublish", js_engine_publish},
        {"engineWantAudit", js_engine_want_audit},
        {"authAllow", js_auth_allow},
        {"authDeny", js_auth_deny},
        {"flush", js_flush},
        {"connSend", js_conn_send},
        {"connClose", js_conn_close},
        {"clientNew", js_client_new},
        {"clientStart", js_client_start},
        {"clientWantRaw", js_client_want_raw},
        {"clientSend", js_client_send},
        {"clientPublish", js_client_publish},
        {"clientSubscribe", js_client_subscribe},
        {"clientUnsubscribe", js_client_unsubscribe},
        {"clientHealth", js_client_health},
        {"clientClose", js_client_close},
        {"clientDestroy", js_client_destroy},
        {"consumerNew", js_consumer_new},
        {"consumerSubscribe", js_consumer_subscribe},
        {"consumerAssign", js_consumer_assign},
        {"consumerWork", js_consumer_work},
    };
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        napi_value f;
        napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
        napi_set_named_property(env, exports, fns[i].name, f);
    }
    static const struct {
        const char *name;
        int value;
    } consts[] = {
        {"EV_CONNECT", EV_CONNECT},   {"EV_SMESSAGE", EV_SMESSAGE}, {"EV_SCLOSE", EV_SCLOSE},
        {"EV_DELIVERY", EV_DELIVERY}, {"EV_OPEN", EV_OPEN},         {"EV_CMESSAGE", EV_CMESSAGE},
        {"EV_CCLOSE", EV_CCLOSE},     {"EV_CERROR", EV_CERROR},     {"EV_ACK", EV_ACK},
        {"EV_SUBMSG", EV_SUBMSG},     {"EV_RESULT", EV_RESULT},     {"EV_RECORD", EV_RECORD},
        {"EV_DONE", EV_DONE},         {"EV_STOPPED", EV_STOPPED},   {"EV_FLUSH", EV_FLUSH},
        {"EV_AUTH", EV_AUTH},         {"EV_AUDIT", EV_AUDIT},
        {"OFFSET_BEGINNING", SOT_OFFSET_BEGINNING}, {"OFFSET_END", SOT_OFFSET_END},
        {"OFFSET_STORED", SOT_OFFSET_STORED},
        {"HEADER_VERSION_NUMBER", SOT_VERSION_NUMBER},
    };
    for (size_t i = 0; i < sizeof consts / sizeof consts[0]; i++) {
        napi_value v;
        napi_create_int32(env, consts[i].value, &v);
        napi_set_named_property(env, exports, consts[i].name, v);
    }
    return exports;
}
