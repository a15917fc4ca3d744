/*
 * streamotter.h: the C ABI of StreamOtter, an embeddable WebSocket <-> Kafka engine.
 *
 * This header is the specification: a function not declared here is not API.
 *
 * Conventions
 *  - Every symbol starts with sot_ (types, functions) or SOT_ (macros, constants).
 *  - Handles are opaque. Objects come in _new/_destroy pairs; every _destroy accepts NULL.
 *  - Functions that can fail return int: 0 (SOT_OK) on success, a negative SOT_ERR_* code
 *    on error. Right after a failing call, sot_last_error() returns a message for it on
 *    the calling thread. Codes are never renumbered.
 *  - Strings passed in are copied; the caller keeps ownership of its pointers.
 *  - Strings returned as `const char *` are owned by the library and stay valid for the
 *    lifetime of the object they came from (or forever, for static strings).
 *
 * Threading
 *  - One engine is one libuv loop on its own thread. All engine state lives there.
 *  - sot_conf_* : a conf object must not be used from two threads at once.
 *  - sot_engine_new/start: any thread. sot_engine_stop/destroy: any thread but not from
 *    inside a callback of that engine (stop returns SOT_ERR_IN_CALLBACK; destroy is then
 *    deferred until the callback returns).
 *  - Sending calls (sot_conn_send, sot_conn_close, sot_engine_publish, sot_client_send,
 *    sot_client_publish, sot_client_subscribe, sot_client_unsubscribe, sot_client_close)
 *    are safe from any thread, including from inside callbacks: they enqueue a command and
 *    wake the loop.
 *  - Callbacks run in one of two modes, chosen with the conf key "callbacks":
 *      "thread" (default): on the engine's loop thread, as events happen;
 *      "poll": queued; the host watches sot_engine_fd() with its own event loop and calls
 *              sot_engine_poll() to run them on its own thread (Node.js, asyncio).
 *    Either way a callback must not block: it holds up every connection of the engine.
 *  - Pointers passed to a callback are valid for the duration of that call only; copy
 *    what you keep.
 *  - A function that takes a callback either fails (and the callback never runs) or
 *    succeeds (and the callback runs exactly once, or, for message callbacks, until the
 *    subscription ends). After sot_*_destroy returns, no callback of that object runs.
 *
 * Copyright (c) 2026 the StreamOtter authors. MIT License.
 */
#ifndef STREAMOTTER_H
#define STREAMOTTER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SOT_VERSION_MAJOR 0
#define SOT_VERSION_MINOR 1
#define SOT_VERSION_PATCH 0
/** (major << 16) | (minor << 8) | patch */
#define SOT_VERSION_NUMBER ((SOT_VERSION_MAJOR << 16) | (SOT_VERSION_MINOR << 8) | SOT_VERSION_PATCH)

#if defined(__GNUC__)
#define SOT_API __attribute__((visibility("default")))
#else
#define SOT_API
#endif

/** Status codes. 0 is success, negative values are errors. */
typedef enum sot_status {
    SOT_OK = 0,
    /** An argument is NULL or out of range. */
    SOT_ERR_INVALID_ARG = -1,
    /** A configuration key is unknown or its value is invalid. */
    SOT_ERR_CONFIG = -2,
    /** The object is in the wrong state for the call (e.g. started twice). */
    SOT_ERR_STATE = -3,
    /** Kafka clients could not be created or Kafka refused the operation. */
    SOT_ERR_KAFKA = -4,
    /** A system call failed (e.g. the listen address is in use). */
    SOT_ERR_IO = -5,
    /** Out of memory. */
    SOT_ERR_NOMEM = -6,
    /** An unexpected internal error. */
    SOT_ERR_INTERNAL = -7,
    /** The connection (or other object named by id) does not exist or is closed. */
    SOT_ERR_NOT_FOUND = -8,
    /** The call is not allowed from inside one of the engine's callbacks (it would wait
     *  for the thread that runs it). */
    SOT_ERR_IN_CALLBACK = -9,
    /** The handle is not a live object of this library (already destroyed). */
    SOT_ERR_BAD_HANDLE = -10,
    /** The gateway (or Kafka) refused a request; the callback's `code` says why
     *  ("forbidden", "unknown_channel", "closed", ...). */
    SOT_ERR_REFUSED = -11
} sot_status;

/** Logical Kafka offsets for sot_consumer_assign / sot_consumer_seek. */
#define SOT_OFFSET_BEGINNING (-2)
#define SOT_OFFSET_END (-1)
#define SOT_OFFSET_STORED (-1000)

/** The library's version as a string, e.g. "0.1.0". Static storage. */
SOT_API const char *sot_version(void);

/** The library's version as SOT_VERSION_NUMBER computes it. Bindings compare this with
 *  the header they were built against at load time (same major required). */
SOT_API int sot_version_number(void);

/** The symbolic name of a status code ("SOT_ERR_CONFIG"), or "SOT_ERR_UNKNOWN".
 *  Static storage. */
SOT_API const char *sot_err_name(int status);

/** A human-readable description of a status code. Static storage. */
SOT_API const char *sot_strerror(int status);

/** Number of status codes, for bindings that build exception classes from the table:
 *  sot_err_code_at(i) for i in [0, sot_err_count()) returns each code. */
SOT_API int sot_err_count(void);
SOT_API int sot_err_code_at(int index);

/** The message of the last failing call on the calling thread ("" if none). Valid until
 *  the next call into the library on this thread. */
SOT_API const char *sot_last_error(void);

/** The status code of the last failing call on the calling thread (0 if none): for the
 *  functions that return a handle or NULL (sot_engine_new, sot_client_new,
 *  sot_consumer_new) and those that return void (destroy). */
SOT_API int sot_last_status(void);

/* ---------------------------------------------------------------------------------- */
/* Configuration                                                                       */

/** A set of string key/value pairs. Keys are documented in docs/configuration.md; keys
 *  starting with "kafka." go to librdkafka unchanged. */
typedef struct sot_conf sot_conf;

/** A new, empty configuration. Returns NULL only when out of memory. Free with
 *  sot_conf_destroy. */
SOT_API sot_conf *sot_conf_new(void);

/** Sets `key` to `value` (both copied). Returns SOT_OK, SOT_ERR_INVALID_ARG for NULL
 *  arguments, or SOT_ERR_CONFIG for an unknown key or invalid value; on error a message
 *  naming the key is written into `errstr` (NUL-terminated, truncated to `errstr_size`;
 *  errstr may be NULL when errstr_size is 0). */
SOT_API int sot_conf_set(sot_conf *conf, const char *key, const char *value,
                         char *errstr, size_t errstr_size);

/** Copies the value of `key` into `dest` (NUL-terminated, truncated to `dest_size`).
 *  Returns SOT_OK, SOT_ERR_INVALID_ARG for NULL arguments, SOT_ERR_CONFIG when the key is
 *  not set. */
SOT_API int sot_conf_get(const sot_conf *conf, const char *key, char *dest, size_t dest_size);

/** Frees a configuration. NULL is accepted. An engine created from it keeps its own copy. */
SOT_API void sot_conf_destroy(sot_conf *conf);

/* ---------------------------------------------------------------------------------- */
/* Engine                                                                              */

/** One engine: a libuv loop on its own thread running the WebSocket gateway and its Kafka
 *  clients. With no "kafka.bootstrap.servers" it starts the embedded Kafka (librdkafka's
 *  mock cluster) in-process. */
typedef struct sot_engine sot_engine;

/** Creates an engine from a copy of `conf` (NULL means all defaults); the caller still
 *  destroys its conf. Validates the configuration. Returns NULL on error with a message in
 *  `errstr` (may be NULL when errstr_size is 0). Nothing runs until sot_engine_start. */
SOT_API sot_engine *sot_engine_new(const sot_conf *conf, char *errstr, size_t errstr_size);

/** Starts Kafka clients, binds the listen address and starts the engine thread. Returns
 *  SOT_OK, SOT_ERR_STATE if already started, SOT_ERR_KAFKA / SOT_ERR_IO / SOT_ERR_CONFIG
 *  with sot_last_error() set. On error nothing is left running. */
SOT_API int sot_engine_start(sot_engine *engine);

/** Graceful stop: stops accepting, answers publishes already handed to Kafka, closes every
 *  WebSocket with 1001, flushes the producer, ends the thread. Blocks until done (bounded
 *  by "shutdown.timeout_ms"). Returns SOT_OK, or SOT_ERR_STATE if never started. Calling
 *  it again after it returned is a no-op returning SOT_OK. */
SOT_API int sot_engine_stop(sot_engine *engine);

/** The TCP port the gateway listens on (resolves port 0), or a negative code when not
 *  started. */
SOT_API int sot_engine_port(const sot_engine *engine);

/** The Kafka bootstrap servers in use ("host:port,..."), the embedded cluster's when
 *  embedded, or NULL when not started. Owned by the engine; valid until destroy. */
SOT_API const char *sot_engine_bootstrap_servers(const sot_engine *engine);

/** Stops the engine if it runs (as sot_engine_stop), then frees it, with every client and
 *  consumer created on it. NULL is accepted; a handle that was already destroyed is
 *  ignored (sot_last_error() says so). Called from inside one of the engine's callbacks,
 *  the stop and free happen right after that callback returns. */
SOT_API void sot_engine_destroy(sot_engine *engine);

/** The fd to watch for readability in "poll" callback mode: readable while callbacks wait
 *  to be run by sot_engine_poll. Owned by the engine (do not close). Returns
 *  SOT_ERR_STATE in "thread" mode. */
SOT_API int sot_engine_fd(const sot_engine *engine);

/** Runs up to `max_events` waiting callbacks (all when max_events <= 0) on the calling
 *  thread and returns how many ran (>= 0), or SOT_ERR_STATE in "thread" mode. Call it
 *  from one thread at a time. Does not block. */
SOT_API int sot_engine_poll(sot_engine *engine, int max_events);

/** Versions of the libraries the engine actually runs on, e.g.
 *  "libuv 1.44.2; OpenSSL 3.0.x; librdkafka 2.0.2" (resolved at run time, so inside a host
 *  that brings its own copies this shows which were bound). Static storage. */
SOT_API const char *sot_runtime_info(void);

/* ---------------------------------------------------------------------------------- */
/* Gateway connections (server side)                                                   */

/** A header or key/value pair. `value` points to `value_len` bytes (not NUL-terminated
 *  unless stated). */
typedef struct sot_header {
    const char *name;
    const char *value;
    size_t value_len;
} sot_header;

/** Callbacks for the gateway's WebSocket connections. `size` must be set to
 *  sizeof(sot_server_callbacks); fields may be NULL. Connection ids are never reused
 *  within an engine. on_connect and on_close pair up one to one. */
typedef struct sot_server_callbacks {
    size_t size;
    /** A WebSocket opened. `path` is the request target (path and query), `headers` the
     *  request headers (value NUL-terminated too). */
    void (*on_connect)(void *opaque, uint64_t conn, const char *path,
                       const sot_header *headers, size_t n_headers);
    /** A message arrived (is_text: 1 text, 0 binary). With gateway.protocol=streamotter.v1
     *  (default) the gateway also handles it; with gateway.protocol=none only the host does. */
    void (*on_message)(void *opaque, uint64_t conn, int is_text, const void *data, size_t len);
    /** The connection closed (code 1006 when it was lost without a Close frame). */
    void (*on_close)(void *opaque, uint64_t conn, int code, const char *reason);
} sot_server_callbacks;

/** Sets the connection callbacks (copied). Call before sot_engine_start; returns
 *  SOT_ERR_STATE afterwards, SOT_ERR_INVALID_ARG on NULL or a too-small `size`. */
SOT_API int sot_engine_set_server_callbacks(sot_engine *engine, const sot_server_callbacks *cbs,
                                            void *opaque);

/** Queues a message (copied) to connection `conn`. Any thread. Returns SOT_OK,
 *  SOT_ERR_NOT_FOUND when the connection is unknown or closed, or SOT_ERR_INVALID_ARG for
 *  NULL data with a length or a length above SSIZE_MAX. */
SOT_API int sot_conn_send(sot_engine *engine, uint64_t conn, const void *data, size_t len, int is_text);

/** Starts the closing handshake of `conn` with `code` (1000-4999) and `reason` (may be
 *  NULL; at most 123 bytes are sent). Any thread. SOT_ERR_NOT_FOUND as above,
 *  SOT_ERR_INVALID_ARG for a code that may not be sent. */
SOT_API int sot_conn_close(sot_engine *engine, uint64_t conn, int code, const char *reason);

/** The answer to a produced record: status SOT_OK with partition and offset, or
 *  SOT_ERR_KAFKA with `error` saying why (partition -1, offset -1). `topic` is the record's. */
typedef void (*sot_delivery_cb)(void *opaque, int status, const char *error, const char *topic,
                                int32_t partition, int64_t offset);

/** Produces one record to `channel` (a Kafka topic) through the engine's idempotent
 *  producer; subscribers of the channel receive it like any other record. `partition` -1
 *  lets the partitioner choose (murmur2 of the key, as Java does). `key` may be NULL;
 *  `headers` may be NULL when n_headers is 0; a header whose value is NULL is sent with
 *  an empty value. Everything is copied. Any thread. Returns
 *  SOT_OK (then `cb`, if not NULL, runs exactly once with Kafka's answer),
 *  SOT_ERR_STATE when the engine is not a running gateway, SOT_ERR_INVALID_ARG. */
SOT_API int sot_engine_publish(sot_engine *engine, const char *channel, int32_t partition,
                               const void *key, size_t key_len, const void *value, size_t value_len,
                               const sot_header *headers, size_t n_headers,
                               sot_delivery_cb cb, void *opaque);

/* ---------------------------------------------------------------------------------- */
/* Custom authentication of upgrades                                                   */

/** Called for every valid WebSocket upgrade request before the 101 is sent. `request`
 *  names it in the answer; `path` is the request target, `headers` the request headers
 *  (values NUL-terminated), `peer_address` the client's IP, `tls_subject` the client
 *  certificate's subject (NULL without mTLS). Answer with sot_auth_allow or sot_auth_deny,
 *  now or later, from any thread, before "ws.handshake_timeout_ms" (else the client gets
 *  408 and the late answer returns SOT_ERR_NOT_FOUND). */
typedef void (*sot_auth_cb)(void *opaque, uint64_t request, const char *path,
                            const sot_header *headers, size_t n_headers,
                            const char *peer_address, const char *tls_subject);

/** Sets the authentication callback. Call before sot_engine_start (SOT_ERR_STATE
 *  afterwards). While it is set, every upgrade waits for its answer. */
SOT_API int sot_engine_set_auth_callback(sot_engine *engine, sot_auth_cb cb, void *opaque);

/** Allows upgrade `request` with an identity: `subject` (may be NULL), `roles` as a
 *  comma-separated list (may be NULL), `expires_at_ms` (ms since the epoch when the
 *  credential expires and the connection must be closed; 0 = never). Any thread. Returns
 *  SOT_OK, or SOT_ERR_NOT_FOUND when the request is unknown or was answered already. */
SOT_API int sot_auth_allow(sot_engine *engine, uint64_t request, const char *subject,
                           const char *roles, int64_t expires_at_ms);

/** Refuses upgrade `request` with an HTTP `status` (400-599; 401 and 403 are usual) and a
 *  `reason` for the response body (may be NULL). Any thread. SOT_ERR_NOT_FOUND as above. */
SOT_API int sot_auth_deny(sot_engine *engine, uint64_t request, int status, const char *reason);

/** Receives every audit event as one JSON object (NUL-terminated, no newline): "event" is
 *  auth_success, auth_failure, denied, connection_open, connection_close, token_expired,
 *  token_refreshed or limit_exceeded, with "conn", "peer", "sub", "roles", "method",
 *  "reason", "channel", "op", "close_code" where they apply. Never contains a token or a
 *  secret (token-shaped text is redacted). */
typedef void (*sot_audit_cb)(void *opaque, const char *json);

/** Sets the audit callback (in addition to "audit.file"). Before sot_engine_start
 *  (SOT_ERR_STATE afterwards). */
SOT_API int sot_engine_set_audit_callback(sot_engine *engine, sot_audit_cb cb, void *opaque);

/** Supplies message-encryption keys (AES-256-GCM of record values on the channels that
 *  match "encryption.channels", default all). To encrypt, the engine calls it with
 *  `key_id` NULL and the record's `channel`: write the active key's id (NUL-terminated,
 *  [A-Za-z0-9._-]{1,64}; an unterminated one is cut at out_key_id_size - 1 bytes) into
 *  `out_key_id` and its 32 bytes into `out_key`. To decrypt, `key_id` names the key (from
 *  the record's streamotter-key-id header) and `channel` is NULL. Return 0 on success,
 *  non-zero when there is no such key (encryption then fails with "encryption_failed",
 *  decryption with "decrypt_failed"). Called on the engine's thread in both callback
 *  modes, for every record: it must be fast, must not block and must be thread-safe. */
typedef int (*sot_key_cb)(void *opaque, const char *key_id, const char *channel,
                          unsigned char out_key[32], char *out_key_id, size_t out_key_id_size);

/** Sets the key provider; it replaces "encryption.key_file" when both are given. Before
 *  sot_engine_start (SOT_ERR_STATE afterwards). */
SOT_API int sot_engine_set_key_provider(sot_engine *engine, sot_key_cb cb, void *opaque);

/* ---------------------------------------------------------------------------------- */
/* WebSocket client (streamotter.v1, with reconnection)                                 */

/** A client connection to a gateway (or any WebSocket server) that lives on an engine's
 *  loop. It reconnects by itself: exponential backoff with full jitter between
 *  "reconnect.initial_delay_ms" (100) and "reconnect.max_delay_ms" (10000); after
 *  "circuit.failure_threshold" (5) consecutive failures the circuit opens (state
 *  SOT_CLIENT_CIRCUIT_OPEN, on_error with code "circuit_open") and one probe is made after
 *  "circuit.cooldown_ms" (30000). Pings every "client.ping_interval_ms" (5000) measure the
 *  round trip; two missed pongs count the connection as lost. After a reconnect it
 *  resubscribes every channel from the next offset of every partition and resends
 *  unacknowledged publishes with their ids (ids are unique per client instance, so a
 *  resend is recognised by the gateway's dedupe window). Other keys:
 *  "client.subprotocols" ("streamotter.v1"), "client.header.<Name>",
 *  "client.connect_timeout_ms", "client.max_message_size", "reconnect.enabled", and for
 *  wss:// URLs "client.tls.ca_file" (default: the system's trust store) and
 *  "client.tls.verify" (default true: the certificate and host name are verified).
 *  A server that breaks the protocol never takes the host down: a WebSocket protocol
 *  error, or a streamotter.v1 frame the client would act on (a "message" of a subscribed
 *  channel, the "ack" or "ok" of one of its requests) with a field missing, of the wrong
 *  type or out of range (partition 0..2^31-1, message offset 0..2^63-2, ok offsets
 *  0..2^63-1), closes the connection with 1002 (1007/1009 for bad UTF-8 / too large),
 *  reports on_error "protocol_error" and on_close with that code, and reconnects as after
 *  any lost connection, except that such a connection counts as a failure for the backoff
 *  and the circuit breaker (a server that does it every time is not hammered); nothing of
 *  the bad frame is delivered or applied (a publish stays pending and is resent). Text that is not a JSON object, unknown ops and frames for
 *  other channels or ids only reach on_message. */
typedef struct sot_client sot_client;

typedef enum sot_client_state {
    SOT_CLIENT_CONNECTING = 0,
    SOT_CLIENT_OPEN = 1,
    SOT_CLIENT_WAITING = 2,      /* backing off before the next attempt */
    SOT_CLIENT_CIRCUIT_OPEN = 3,
    SOT_CLIENT_CLOSED = 4
} sot_client_state;

/** Client callbacks. `size` must be sizeof(sot_client_callbacks); fields may be NULL.
 *  on_open and on_close pair up one to one (one pair per connection), except that
 *  sot_client_destroy ends all callbacks at once: to see the last on_close, call
 *  sot_client_close and wait for it before destroying. */
typedef struct sot_client_callbacks {
    size_t size;
    void (*on_open)(void *opaque, const char *subprotocol /* NULL if none */);
    /** Every message the server sends, before the protocol handling below. */
    void (*on_message)(void *opaque, int is_text, const void *data, size_t len);
    void (*on_close)(void *opaque, int code, const char *reason);
    /** Connection failures, the circuit opening, gateway errors not tied to a request.
     *  `code` is a short stable word ("connect_failed", "circuit_open", ...);
     *  "protocol_error" when the server broke the protocol (see sot_client). */
    void (*on_error)(void *opaque, const char *code, const char *message);
} sot_client_callbacks;

/** A message delivered through sot_client_subscribe. `size` is sizeof(sot_message) of the
 *  library that filled it; fields are only ever appended. */
typedef struct sot_message {
    size_t size;
    const char *channel;
    int32_t partition;
    int64_t offset;
    int64_t timestamp;   /* ms since the epoch, -1 when unknown */
    const char *key;     /* NULL when the record has no (UTF-8) key */
    const char *data;    /* JSON text of the value when it is JSON, else NULL */
    size_t data_len;
    const char *frame;   /* the whole streamotter.v1 "message" frame (JSON) */
    size_t frame_len;
} sot_message;

typedef void (*sot_message_cb)(void *opaque, const sot_message *message);
/** The answer to a request: status SOT_OK, or SOT_ERR_REFUSED with the protocol's `code`
 *  (for example "forbidden", "unknown_channel", "closed") and a message. */
typedef void (*sot_result_cb)(void *opaque, int status, const char *code, const char *message);
/** The answer to a publish: SOT_OK with the Kafka partition and offset, or
 *  SOT_ERR_REFUSED with the protocol's code and a message. */
typedef void (*sot_ack_cb)(void *opaque, int status, const char *code, const char *message,
                           int32_t partition, int64_t offset);

/** Creates a client for `url` ("ws://host:port/path") on `engine` (any mode; "client"
 *  mode runs a loop with no gateway and no Kafka). `conf` may be NULL; it is copied.
 *  `cbs` is copied and may be NULL. Returns NULL with a message in errstr on a bad URL or
 *  configuration. The client does nothing until sot_client_start. */
SOT_API sot_client *sot_client_new(sot_engine *engine, const char *url, const sot_conf *conf,
                                   const sot_client_callbacks *cbs, void *opaque,
                                   char *errstr, size_t errstr_size);

/** Starts connecting. SOT_ERR_STATE if the engine is not running or the client was started. */
SOT_API int sot_client_start(sot_client *client);

/** Sends a raw message (copied) on the current connection. Any thread. SOT_OK when queued;
 *  SOT_ERR_STATE when closed; SOT_ERR_INVALID_ARG for NULL data with a length or a length
 *  above SSIZE_MAX. (Messages sent while disconnected are dropped.) */
SOT_API int sot_client_send(sot_client *client, const void *data, size_t len, int is_text);

/** Publishes `json` (the JSON text of `data`; copied) to `channel` with an optional UTF-8
 *  `key` (may be NULL). `cb` runs exactly once: with the ack after Kafka acknowledged, or
 *  with an error ("closed" when the client is closed first). Unacknowledged publishes are
 *  resent with the same id after a reconnect. Any thread. */
SOT_API int sot_client_publish(sot_client *client, const char *channel, const char *key,
                               const char *json, sot_ack_cb cb, void *opaque);

/** Subscribes to `channel` from `from_json` (NULL or "\"latest\"", "\"earliest\"",
 *  "{\"offsets\":{\"0\":42}}", "{\"timestamp\":1733220000000}"). `on_message` runs for
 *  every message until unsubscribe or close; `on_result` (may be NULL) runs once with the
 *  gateway's answer. Any thread. SOT_ERR_INVALID_ARG for a bad from_json. */
SOT_API int sot_client_subscribe(sot_client *client, const char *channel, const char *from_json,
                                 sot_message_cb on_message, sot_result_cb on_result, void *opaque);

/** Ends a subscription; `cb` (may be NULL) runs once. Any thread. */
SOT_API int sot_client_unsubscribe(sot_client *client, const char *channel, sot_result_cb cb,
                                   void *opaque);

/** Health of a client. Set `size` to sizeof(sot_client_health) before the call. */
typedef struct sot_client_health {
    size_t size;
    int state;                 /* sot_client_state */
    int score;                 /* 0 (unusable) .. 100 */
    double rtt_ms;             /* last ping round trip */
    int missed_pongs;
    int consecutive_failures;
    int reconnects;
} sot_client_health;

/** Fills `out` (up to out->size bytes). Any thread. */
SOT_API int sot_client_get_health(const sot_client *client, sot_client_health *out);

/** Closes for good with `code` (1000 when 0) and `reason` (may be NULL): no reconnect;
 *  pending publishes and subscriptions are answered with "closed". Any thread. */
SOT_API int sot_client_close(sot_client *client, int code, const char *reason);

/** Closes (if needed) and frees the client. No callback of it runs after this returns
 *  (unless called from inside one of its callbacks, where the rest of that callback is the
 *  last). NULL is accepted. */
SOT_API void sot_client_destroy(sot_client *client);

/* ---------------------------------------------------------------------------------- */
/* Kafka consumer                                                                      */

/** A Kafka record delivered to a consumer. `size` is sizeof(sot_record) of the library. */
typedef struct sot_record {
    size_t size;
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp;          /* ms since the epoch, -1 when unknown */
    const void *key;            /* NULL when none */
    size_t key_len;
    const void *value;          /* NULL for a tombstone */
    size_t value_len;
    const sot_header *headers;  /* value NULL for a null header value */
    size_t n_headers;
} sot_record;

typedef void (*sot_record_cb)(void *opaque, const sot_record *record);

/** A Kafka consumer (consumer groups or assigned partitions). */
typedef struct sot_consumer sot_consumer;

/** Creates a Kafka consumer whose records arrive through the engine (thread or poll
 *  mode). `conf` keys: "kafka.<librdkafka property>" ("kafka.group.id" for group
 *  consumption); the engine's bootstrap servers are used unless "kafka.bootstrap.servers"
 *  is given. `cb` must not be NULL. The engine must be running. Returns NULL with errstr
 *  set on error. */
SOT_API sot_consumer *sot_consumer_new(sot_engine *engine, const sot_conf *conf,
                                       sot_record_cb cb, void *opaque,
                                       char *errstr, size_t errstr_size);

/** Joins the consumer group (kafka.group.id) for these topics. */
SOT_API int sot_consumer_subscribe(sot_consumer *consumer, const char *const *topics, size_t n_topics);

/** Adds one partition to the assignment, starting at `offset` (or SOT_OFFSET_*). */
SOT_API int sot_consumer_assign(sot_consumer *consumer, const char *topic, int32_t partition, int64_t offset);

/** Moves an assigned partition to `offset`: replay from there (no record fetched for the
 *  old position is delivered afterwards). */
SOT_API int sot_consumer_seek(sot_consumer *consumer, const char *topic, int32_t partition, int64_t offset);

/** Moves every assigned partition of `topic` to the first record at or after
 *  `timestamp_ms`. Blocks for an offset lookup. */
SOT_API int sot_consumer_seek_time(sot_consumer *consumer, const char *topic, int64_t timestamp_ms);

/** Commits the position of everything delivered so far (synchronous, blocks). */
SOT_API int sot_consumer_commit(sot_consumer *consumer);

/** Closes (leaves the group) and frees. No callback runs after it returns. NULL accepted.
 *  Not from inside this consumer's own callback (ignored with SOT_ERR_IN_CALLBACK in
 *  sot_last_error). */
SOT_API void sot_consumer_destroy(sot_consumer *consumer);

#ifdef __cplusplus
}
#endif
#endif /* STREAMOTTER_H */
