"""ctypes declarations of the whole C ABI (include/streamotter.h), in one place.

Every function of the header is declared in `FUNCTIONS` with its restype and argtypes;
`load()` finds the library, applies the declarations and checks the version. Nothing else
in the package calls `ctypes.CDLL` or sets argtypes.

Library lookup, first match wins:
  1. $STREAMOTTER_LIBRARY (a path, or a name for the dynamic loader);
  2. <repo>/build/lib/libstreamotter.so.0 when this package runs from the source tree
     (bindings/python/streamotter inside a StreamOtter checkout);
  3. ctypes.util.find_library("streamotter"), then plain "libstreamotter.so.0"
     (LD_LIBRARY_PATH, ldconfig cache, /usr/local/lib ...).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_double,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint64,
    c_void_p,
)
from pathlib import Path

#: The major version of the C ABI this binding was written against (SOT_VERSION_MAJOR).
EXPECTED_MAJOR = 0
#: SONAME of that major version.
SONAME = f"libstreamotter.so.{EXPECTED_MAJOR}"

# Status codes and constants from the header (the binding also reads the status table at
# run time to build its exception classes; these are for readability in the code).
SOT_OK = 0
SOT_ERR_INVALID_ARG = -1
SOT_ERR_CONFIG = -2
SOT_ERR_STATE = -3
SOT_ERR_KAFKA = -4
SOT_ERR_IO = -5
SOT_ERR_NOMEM = -6
SOT_ERR_INTERNAL = -7
SOT_ERR_NOT_FOUND = -8
SOT_ERR_IN_CALLBACK = -9
SOT_ERR_BAD_HANDLE = -10

SOT_OFFSET_BEGINNING = -2
SOT_OFFSET_END = -1
SOT_OFFSET_STORED = -1000


class LibraryLoadError(ImportError):
    """The shared library could not be found, loaded, or has the wrong major version."""


# ---------------------------------------------------------------------------- handles


class sot_conf(Structure):
    pass


class sot_engine(Structure):
    pass


class sot_client(Structure):
    pass


class sot_consumer(Structure):
    pass


conf_p = POINTER(sot_conf)
engine_p = POINTER(sot_engine)
client_p = POINTER(sot_client)
consumer_p = POINTER(sot_consumer)

# ---------------------------------------------------------------------------- structs


class sot_header(Structure):
    _fields_ = [("name", c_char_p), ("value", c_void_p), ("value_len", c_size_t)]


# Server callbacks
on_connect_cb = CFUNCTYPE(None, c_void_p, c_uint64, c_char_p, POINTER(sot_header), c_size_t)
server_on_message_cb = CFUNCTYPE(None, c_void_p, c_uint64, c_int, c_void_p, c_size_t)
server_on_close_cb = CFUNCTYPE(None, c_void_p, c_uint64, c_int, c_char_p)


class sot_server_callbacks(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("on_connect", on_connect_cb),
        ("on_message", server_on_message_cb),
        ("on_close", server_on_close_cb),
    ]


delivery_cb = CFUNCTYPE(None, c_void_p, c_int, c_char_p, c_char_p, c_int32, c_int64)

# Custom authentication of upgrades, audit events
auth_cb = CFUNCTYPE(None, c_void_p, c_uint64, c_char_p, POINTER(sot_header), c_size_t, c_char_p, c_char_p)
audit_cb = CFUNCTYPE(None, c_void_p, c_char_p)
# int (*)(void *opaque, const char *key_id, const char *channel, unsigned char out_key[32],
#         char *out_key_id, size_t out_key_id_size)
key_cb = CFUNCTYPE(c_int, c_void_p, c_char_p, c_char_p, POINTER(ctypes.c_ubyte), POINTER(ctypes.c_char), c_size_t)

# Client callbacks
client_on_open_cb = CFUNCTYPE(None, c_void_p, c_char_p)
client_on_message_cb = CFUNCTYPE(None, c_void_p, c_int, c_void_p, c_size_t)
client_on_close_cb = CFUNCTYPE(None, c_void_p, c_int, c_char_p)
client_on_error_cb = CFUNCTYPE(None, c_void_p, c_char_p, c_char_p)


class sot_client_callbacks(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("on_open", client_on_open_cb),
        ("on_message", client_on_message_cb),
        ("on_close", client_on_close_cb),
        ("on_error", client_on_error_cb),
    ]


class sot_message(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("channel", c_char_p),
        ("partition", c_int32),
        ("offset", c_int64),
        ("timestamp", c_int64),
        ("key", c_char_p),
        ("data", c_void_p),
        ("data_len", c_size_t),
        ("frame", c_void_p),
        ("frame_len", c_size_t),
    ]


message_cb = CFUNCTYPE(None, c_void_p, POINTER(sot_message))
result_cb = CFUNCTYPE(None, c_void_p, c_int, c_char_p, c_char_p)
ack_cb = CFUNCTYPE(None, c_void_p, c_int, c_char_p, c_char_p, c_int32, c_int64)


class sot_client_health(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("state", c_int),
        ("score", c_int),
        ("rtt_ms", c_double),
        ("missed_pongs", c_int),
        ("consecutive_failures", c_int),
        ("reconnects", c_int),
    ]


class sot_record(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("topic", c_char_p),
        ("partition", c_int32),
        ("offset", c_int64),
        ("timestamp", c_int64),
        ("key", c_void_p),
        ("key_len", c_size_t),
        ("value", c_void_p),
        ("value_len", c_size_t),
        ("headers", POINTER(sot_header)),
        ("n_headers", c_size_t),
    ]


record_cb = CFUNCTYPE(None, c_void_p, POINTER(sot_record))

# ---------------------------------------------------------------------------- functions

#: name -> (restype, argtypes): every function of include/streamotter.h.
FUNCTIONS: dict[str, tuple[object, list]] = {
    # version, status table, errors
    "sot_version": (c_char_p, []),
    "sot_version_number": (c_int, []),
    "sot_err_name": (c_char_p, [c_int]),
    "sot_strerror": (c_char_p, [c_int]),
    "sot_err_count": (c_int, []),
    "sot_err_code_at": (c_int, [c_int]),
    "sot_last_error": (c_char_p, []),
    "sot_last_status": (c_int, []),
    # configuration
    "sot_conf_new": (conf_p, []),
    "sot_conf_set": (c_int, [conf_p, c_char_p, c_char_p, c_char_p, c_size_t]),
    "sot_conf_get": (c_int, [conf_p, c_char_p, c_char_p, c_size_t]),
    "sot_conf_destroy": (None, [conf_p]),
    # engine
    "sot_engine_new": (engine_p, [conf_p, c_char_p, c_size_t]),
    "sot_engine_start": (c_int, [engine_p]),
    "sot_engine_stop": (c_int, [engine_p]),
    "sot_engine_port": (c_int, [engine_p]),
    "sot_engine_bootstrap_servers": (c_char_p, [engine_p]),
    "sot_engine_destroy": (None, [engine_p]),
    "sot_engine_fd": (c_int, [engine_p]),
    "sot_engine_poll": (c_int, [engine_p, c_int]),
    "sot_runtime_info": (c_char_p, []),
    # gateway connections
    "sot_engine_set_server_callbacks": (c_int, [engine_p, POINTER(sot_server_callbacks), c_void_p]),
    "sot_conn_send": (c_int, [engine_p, c_uint64, c_void_p, c_size_t, c_int]),
    "sot_conn_close": (c_int, [engine_p, c_uint64, c_int, c_char_p]),
    "sot_engine_publish": (
        c_int,
        [engine_p, c_char_p, c_int32, c_void_p, c_size_t, c_void_p, c_size_t,
         POINTER(sot_header), c_size_t, delivery_cb, c_void_p],
    ),
    # custom authentication of upgrades, audit
    "sot_engine_set_auth_callback": (c_int, [engine_p, auth_cb, c_void_p]),
    "sot_auth_allow": (c_int, [engine_p, c_uint64, c_char_p, c_char_p, c_int64]),
    "sot_auth_deny": (c_int, [engine_p, c_uint64, c_int, c_char_p]),
    "sot_engine_set_audit_callback": (c_int, [engine_p, audit_cb, c_void_p]),
    "sot_engine_set_key_provider": (c_int, [engine_p, key_cb, c_void_p]),
    # WebSocket client
    "sot_client_new": (
        client_p,
        [engine_p, c_char_p, conf_p, POINTER(sot_client_callbacks), c_void_p, c_char_p, c_size_t],
    ),
    "sot_client_start": (c_int, [client_p]),
    "sot_client_send": (c_int, [client_p, c_void_p, c_size_t, c_int]),
    "sot_client_publish": (c_int, [client_p, c_char_p, c_char_p, c_char_p, ack_cb, c_void_p]),
    "sot_client_subscribe": (c_int, [client_p, c_char_p, c_char_p, message_cb, result_cb, c_void_p]),
    "sot_client_unsubscribe": (c_int, [client_p, c_char_p, result_cb, c_void_p]),
    "sot_client_get_health": (c_int, [client_p, POINTER(sot_client_health)]),
    "sot_client_close": (c_int, [client_p, c_int, c_char_p]),
    "sot_client_destroy": (None, [client_p]),
    # Kafka consumer
    "sot_consumer_new": (consumer_p, [engine_p, conf_p, record_cb, c_void_p, c_char_p, c_size_t]),
    "sot_consumer_subscribe": (c_int, [consumer_p, POINTER(c_char_p), c_size_t]),
    "sot_consumer_assign": (c_int, [consumer_p, c_char_p, c_int32, c_int64]),
    "sot_consumer_seek": (c_int, [consumer_p, c_char_p, c_int32, c_int64]),
    "sot_consumer_seek_time": (c_int, [consumer_p, c_char_p, c_int64]),
    "sot_consumer_commit": (c_int, [consumer_p]),
    "sot_consumer_destroy": (None, [consumer_p]),
}


def _source_tree_library() -> Path | None:
    """<repo>/build/lib/libstreamotter.so.0 when this file lives in a checkout."""
    here = Path(__file__).resolve()
    # <repo>/bindings/python/streamotter/_ffi.py
    if len(here.parents) > 3 and here.parents[1].name == "python" and here.parents[2].name == "bindings":
        candidate = here.parents[3] / "build" / "lib" / SONAME
        if candidate.is_file():
            return candidate
    return None


def candidates() -> list[str]:
    env = os.environ.get("STREAMOTTER_LIBRARY")
    if env:
        return [env]  # explicit: no fallback that could load a different copy
    out = []
    src = _source_tree_library()
    if src is not None:
        out.append(str(src))
    found = ctypes.util.find_library("streamotter")
    if found:
        out.append(found)
    out.append(SONAME)
    return out


def _declare(lib: ctypes.CDLL) -> None:
    missing = []
    for name, (restype, argtypes) in FUNCTIONS.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise LibraryLoadError(f"{lib._name}: missing functions {', '.join(missing)}")


def load() -> tuple[ctypes.CDLL, str]:
    errors = []
    lib = None
    path = ""
    for cand in candidates():
        try:
            lib = ctypes.CDLL(cand)
            path = cand
            break
        except OSError as e:
            errors.append(f"{cand}: {e}")
    if lib is None:
        raise LibraryLoadError(
            "cannot load the StreamOtter library (set STREAMOTTER_LIBRARY to the path of "
            f"{SONAME}, or install it): " + "; ".join(errors)
        )
    # The version first: a library of another major may not have the functions below.
    try:
        lib.sot_version_number.restype = c_int
        lib.sot_version_number.argtypes = []
        lib.sot_version.restype = c_char_p
        lib.sot_version.argtypes = []
    except AttributeError as e:
        raise LibraryLoadError(f"{path} is not a StreamOtter library: {e}") from None
    number = lib.sot_version_number()
    major = (number >> 16) & 0xFF
    if major != EXPECTED_MAJOR:
        raise LibraryLoadError(
            f"{path} is StreamOtter {(lib.sot_version() or b'?').decode()} (ABI major {major}); "
            f"this binding needs ABI major {EXPECTED_MAJOR} ({SONAME})"
        )
    _declare(lib)
    return lib, path


lib, library_path = load()


def cstr(p: bytes | None) -> str | None:
    return None if p is None else p.decode("utf-8", "replace")


def last_error() -> str:
    return cstr(lib.sot_last_error()) or ""
