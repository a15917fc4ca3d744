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
 *  - sot_conf_* : a conf object must not be used from two threads at once.
 *  - sot_engine_new, sot_engine_start, sot_engine_stop, sot_engine_destroy: any thread,
 *    but not from inside one of the engine's own callbacks.
 *  - sot_engine_port, sot_engine_bootstrap_servers: any thread once start returned.
 *  - The engine runs its own thread (one libuv loop); no callback of this header runs on
 *    the caller's thread.
 *
 * Copyright (c) 2026 the StreamOtter authors. MIT License.
 */
#ifndef STREAMOTTER_H
#define STREAMOTTER_H

#include <stddef.h>

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
    SOT_ERR_INTERNAL = -7
} sot_status;

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

/** Stops the engine if it runs (as sot_engine_stop), then frees it. NULL is accepted. The
 *  handle must not be used afterwards. */
SOT_API void sot_engine_destroy(sot_engine *engine);

#ifdef __cplusplus
}
#endif
#endif /* STREAMOTTER_H */
