"""Configuration objects (sot_conf_*). Anywhere a Conf is accepted, a plain dict works too."""

from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator, Mapping, Union

from . import _ffi
from .errors import error_for

lib = _ffi.lib


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class Conf:
    """A string key/value configuration (keys: docs/configuration.md, the client keys of
    the header, and `kafka.*` passed to librdkafka).

    Setting an unknown key or a bad value raises ConfigError naming the key. Engines,
    clients and consumers copy the configuration they are given; a Conf can be reused and
    must be closed (or used as a context manager) by its owner.
    """

    def __init__(self, settings: Mapping[str, object] | None = None):
        self._h = lib.sot_conf_new()
        if not self._h:
            raise MemoryError("sot_conf_new")
        self._settings: dict[str, str] = {}
        if settings:
            self.update(settings)

    @property
    def _handle(self):
        if self._h is None:
            raise error_for(_ffi.SOT_ERR_STATE, "the Conf is closed")
        return self._h

    def set(self, key: str, value: object) -> "Conf":
        """Sets `key` to `value` (str, int, float or bool). Returns self."""
        v = _value(value)
        err = ctypes.create_string_buffer(512)
        rc = lib.sot_conf_set(self._handle, key.encode(), v.encode(), err, len(err))
        if rc < 0:
            raise error_for(rc, err.value.decode("utf-8", "replace") or _ffi.last_error())
        self._settings[key] = v
        return self

    def update(self, settings: Mapping[str, object]) -> "Conf":
        for k, v in settings.items():
            self.set(k, v)
        return self

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of `key` (as the library stores it), or `default` when not set."""
        buf = ctypes.create_string_buffer(4096)
        rc = lib.sot_conf_get(self._handle, key.encode(), buf, len(buf))
        if rc == _ffi.SOT_ERR_CONFIG:
            return default
        if rc < 0:
            raise error_for(rc)
        return buf.value.decode("utf-8", "replace")

    def __getitem__(self, key: str) -> str:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key: str, value: object) -> None:
        self.set(key, value)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def to_dict(self) -> dict[str, str]:
        """The settings made through this object (the ABI has no way to list keys)."""
        return dict(self._settings)

    def close(self) -> None:
        h, self._h = self._h, None
        if h:
            lib.sot_conf_destroy(h)

    def __enter__(self) -> "Conf":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Conf({self._settings!r})" if self._h else "Conf(<closed>)"


ConfLike = Union[Conf, Mapping[str, object], None]


@contextlib.contextmanager
def conf_handle(conf: ConfLike) -> Iterator[object]:
    """A sot_conf* for the duration of a call: the Conf's own, a temporary one built from
    a dict, or NULL."""
    if conf is None:
        yield None
    elif isinstance(conf, Conf):
        yield conf._handle
    else:
        with Conf(conf) as c:
            yield c._handle


def conf_value(conf: ConfLike, key: str, default: str | None = None) -> str | None:
    if conf is None:
        return default
    if isinstance(conf, Conf):
        return conf.get(key, default)
    v = conf.get(key)
    return default if v is None else _value(v)
