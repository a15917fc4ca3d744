"""StreamOtter for Python: ctypes over libstreamotter.so.0 (the C ABI of include/streamotter.h).

    import streamotter

    with streamotter.Engine({"listen": "127.0.0.1:0", "embedded.topics": "chat:3"}) as gw:
        with gw.client(f"ws://127.0.0.1:{gw.port}/") as c:
            c.subscribe("chat", print, start="earliest").result(10)
            print(c.publish("chat", {"text": "hello"}).result(10))

See README.md for threading ("thread" vs "poll"/asyncio), errors and ownership.
"""

from __future__ import annotations

import atexit as _atexit

from . import _core, _ffi, errors
from ._ffi import LibraryLoadError, library_path
from .client import Ack, Client, ClientState, Health, Message, connect
from .conf import Conf
from .consumer import OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED, Consumer, Record
from .engine import AuthRequest, Delivery, Engine
from .errors import *  # noqa: F401,F403 - the exception classes built from the status table
from .errors import RequestError, StreamOtterError

__version__ = "0.1.0"

#: ABI major version this binding was written for.
ABI_MAJOR = _ffi.EXPECTED_MAJOR

CONNECTING = ClientState.CONNECTING
OPEN = ClientState.OPEN
WAITING = ClientState.WAITING
CIRCUIT_OPEN = ClientState.CIRCUIT_OPEN
CLOSED = ClientState.CLOSED


def version() -> str:
    """The loaded library's version string (sot_version)."""
    return _ffi.cstr(_ffi.lib.sot_version()) or ""


def version_number() -> int:
    """(major << 16) | (minor << 8) | patch of the loaded library."""
    return _ffi.lib.sot_version_number()


def runtime_info() -> str:
    """Versions of libuv, OpenSSL and librdkafka the engine actually runs on."""
    return _ffi.cstr(_ffi.lib.sot_runtime_info()) or ""


def status_table() -> list[tuple[int, str, str]]:
    """(code, name, description) of every status code of the library."""
    lib = _ffi.lib
    out = []
    for i in range(lib.sot_err_count()):
        c = lib.sot_err_code_at(i)
        out.append((c, _ffi.cstr(lib.sot_err_name(c)) or "", _ffi.cstr(lib.sot_strerror(c)) or ""))
    return out


_atexit.register(_core.close_all_engines)

__all__ = [
    "ABI_MAJOR", "Ack", "AuthRequest", "CIRCUIT_OPEN", "CLOSED", "CONNECTING", "Client", "ClientState", "Conf",
    "Consumer", "Delivery", "Engine", "Health", "LibraryLoadError", "Message", "OFFSET_BEGINNING",
    "OFFSET_END", "OFFSET_STORED", "OPEN", "Record", "RequestError", "StreamOtterError", "WAITING",
    "connect", "errors", "library_path", "runtime_info", "status_table", "version", "version_number",
] + [c.__name__ for c in errors.by_code.values()]
