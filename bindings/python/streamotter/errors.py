"""Exceptions, built from the library's own status table.

`StreamOtterError(code, message)` is the base class; there is one subclass per status code
of the library, named after the code: SOT_ERR_CONFIG -> ConfigError, SOT_ERR_NOT_FOUND ->
NotFoundError, SOT_ERR_IN_CALLBACK -> InCallbackError, and so on (the table is read with
sot_err_count / sot_err_code_at / sot_err_name at import, so a code added to the library
gets its class without a change here). `RequestError` carries the answer of a gateway
request (publish, subscribe, unsubscribe) that failed, with the protocol's error word.
"""

from __future__ import annotations

from . import _ffi

lib = _ffi.lib


class StreamOtterError(Exception):
    """An error from the StreamOtter library.

    `code` is the library's status (a negative SOT_ERR_* value), `name` its symbolic name
    ("SOT_ERR_CONFIG") and `message` the library's message for the failing call.
    """

    code: int = 0
    name: str = "SOT_ERR_UNKNOWN"

    def __init__(self, code: int, message: str = ""):
        super().__init__(code, message)
        self.code = code
        self.name = _ffi.cstr(lib.sot_err_name(code)) or "SOT_ERR_UNKNOWN"
        self.message = message or (_ffi.cstr(lib.sot_strerror(code)) or "")

    def __str__(self) -> str:
        return f"{self.message} [{self.name}]"

    def __reduce__(self):
        return (type(self), (self.code, self.message))


class RequestError(StreamOtterError):
    """A gateway request (publish, subscribe, unsubscribe) answered with an error.

    `reason` is the protocol's stable word ("closed", "forbidden", "unknown_channel",
    "already_subscribed", ...); `code` the status the library reported with it.
    """

    def __init__(self, code: int, message: str = "", reason: str = ""):
        super().__init__(code, message)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.reason else super().__str__()

    def __reduce__(self):
        return (type(self), (self.code, self.message, self.reason))


def _class_name(symbol: str) -> str:
    stem = symbol[len("SOT_ERR_"):] if symbol.startswith("SOT_ERR_") else symbol
    return "".join(p.capitalize() for p in stem.lower().split("_") if p) + "Error"


# Python base classes mixed in where the meaning matches.
_MIXINS = {
    _ffi.SOT_ERR_INVALID_ARG: (ValueError,),
    _ffi.SOT_ERR_CONFIG: (ValueError,),
    _ffi.SOT_ERR_NOMEM: (MemoryError,),
}

#: status code -> exception class
by_code: dict[int, type[StreamOtterError]] = {}


def _build() -> list[str]:
    names = []
    for i in range(lib.sot_err_count()):
        code = lib.sot_err_code_at(i)
        if code >= 0:
            continue
        symbol = _ffi.cstr(lib.sot_err_name(code)) or f"SOT_ERR_{-code}"
        cname = _class_name(symbol)
        doc = (_ffi.cstr(lib.sot_strerror(code)) or "").capitalize() + f" ({symbol}, {code})."
        cls = type(cname, (StreamOtterError,) + _MIXINS.get(code, ()), {"__doc__": doc, "__module__": __name__})
        cls.code = code
        cls.name = symbol
        by_code[code] = cls
        globals()[cname] = cls
        names.append(cname)
    return names


__all__ = ["StreamOtterError", "RequestError", "error_for", "check"] + _build()


def error_for(code: int, message: str | None = None) -> StreamOtterError:
    """The exception for status `code` with `message` (default: sot_last_error())."""
    if message is None:
        message = _ffi.last_error()
    cls = by_code.get(code, StreamOtterError)
    return cls(code, message)


def check(code: int) -> int:
    """Raises the matching exception for a negative status; returns the status otherwise.

    Must be called right after the failing call, on the same thread (sot_last_error is
    thread-local and valid until the next call into the library)."""
    if code < 0:
        raise error_for(code)
    return code
