"""Consumer: a Kafka consumer whose records arrive through an engine's callbacks."""

from __future__ import annotations

import ctypes
import datetime as _dt
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from . import _core, _ffi
from ._core import Closable, Entry, Owner, run_user, take
from .conf import ConfLike, conf_handle
from .engine import Engine
from .errors import check, error_for

lib = _ffi.lib
log = _core.log

OFFSET_BEGINNING = _ffi.SOT_OFFSET_BEGINNING
OFFSET_END = _ffi.SOT_OFFSET_END
OFFSET_STORED = _ffi.SOT_OFFSET_STORED


@dataclass(frozen=True)
class Record:
    """A Kafka record (copied out of the callback)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch, -1 when unknown
    key: bytes | None
    value: bytes | None  # None for a tombstone
    headers: tuple[tuple[str, bytes | None], ...]


class _ConsumerStateObj(Owner):
    def __init__(self, engine_state):
        super().__init__()
        self.engine = engine_state
        self.handle = None


class _RecordCallback(Entry):
    __slots__ = ("callback",)

    def __init__(self, owner, callback):
        super().__init__(owner)
        self.callback = callback


@_ffi.record_cb
def _on_record(opaque, rp):
    try:
        e = take(opaque, False)
        if e is None:
            return
        r = rp.contents
        headers = []
        for i in range(r.n_headers):
            h = r.headers[i]
            headers.append((_ffi.cstr(h.name) or "", None if not h.value else ctypes.string_at(h.value, h.value_len)))
        rec = Record(
            _ffi.cstr(r.topic) or "",
            r.partition,
            r.offset,
            r.timestamp,
            None if not r.key else ctypes.string_at(r.key, r.key_len),
            None if not r.value else ctypes.string_at(r.value, r.value_len),
            tuple(headers),
        )
        run_user(e.owner.engine, "on_record", e.callback, rec)
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_record")


def _ms(when) -> int:
    if isinstance(when, _dt.datetime):
        return int(when.timestamp() * 1000)
    return int(when)


class Consumer(Closable):
    """A Kafka consumer on a running engine: `on_record(record)` runs for every record
    (on the engine thread, or in poll()/asyncio in poll mode). Configuration: kafka.*
    keys only ("kafka.group.id" for group consumption; the engine's bootstrap servers
    unless kafka.bootstrap.servers is given).

    seek(), seek_time() and commit() block for Kafka; in thread mode they are refused
    (InCallbackError) from inside the engine's callbacks.
    """

    def __init__(self, engine: Engine, conf: ConfLike = None,
                 on_record: Callable[[Record], None] | None = None):
        self._cs: _ConsumerStateObj | None = None
        if on_record is None:
            raise TypeError("on_record is required")
        self.engine = engine
        eh = engine._h()
        es = engine._st
        if not es.started:
            raise error_for(_ffi.SOT_ERR_STATE, "the engine is not running")
        cs = _ConsumerStateObj(es)
        entry = _RecordCallback(cs, on_record)
        err = ctypes.create_string_buffer(512)
        with conf_handle(conf) as c:
            h = lib.sot_consumer_new(eh, c, _on_record, entry.id, err, len(err))
        if not h:
            msg = err.value.decode("utf-8", "replace") or _ffi.last_error()
            cs.release_all(None)
            # sot_consumer_new reports no status code; the engine's state was checked
            # above, so what remains is configuration or Kafka refusing the client.
            code = _ffi.SOT_ERR_STATE if "not running" in msg else _ffi.SOT_ERR_CONFIG
            raise error_for(code, msg)
        cs.handle = h
        es.children.add(cs)
        self._cs = cs

    def _h(self):
        cs = self._cs
        if cs is None:
            raise error_for(_ffi.SOT_ERR_STATE, "the consumer is closed")
        cs.engine.raise_pending()
        h = cs.handle
        if h is None:
            raise error_for(_ffi.SOT_ERR_STATE, "the consumer is closed")
        return h

    def subscribe(self, topics: "str | Sequence[str]") -> None:
        """Joins the consumer group (kafka.group.id) for `topics`."""
        if isinstance(topics, str):
            topics = [topics]
        arr = (ctypes.c_char_p * len(topics))(*[t.encode() for t in topics])
        check(lib.sot_consumer_subscribe(self._h(), arr, len(topics)))

    def assign(self, topic: str, partition: int, offset: int = OFFSET_BEGINNING) -> None:
        """Adds one partition to the assignment, starting at `offset` (or OFFSET_*)."""
        check(lib.sot_consumer_assign(self._h(), topic.encode(), partition, offset))

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Moves an assigned partition to `offset` (replay or skip)."""
        check(lib.sot_consumer_seek(self._h(), topic.encode(), partition, offset))

    def seek_time(self, topic: str, when) -> None:
        """Moves every assigned partition of `topic` to the first record at or after
        `when` (ms since the epoch, or a datetime)."""
        check(lib.sot_consumer_seek_time(self._h(), topic.encode(), _ms(when)))

    def commit(self) -> None:
        """Commits the position of everything delivered so far (blocks)."""
        check(lib.sot_consumer_commit(self._h()))

    def close(self) -> None:
        """Leaves the group and frees the consumer; no record callback runs afterwards.
        From inside one of the engine's callbacks (thread mode), the free happens on a
        helper thread right after (the library refuses it on the loop thread)."""
        cs = self._cs
        self._shutdown()
        if cs is not None:
            cs.engine.raise_pending()

    def _shutdown(self) -> None:
        cs = self._cs
        if cs is None:
            return
        with cs.lock:
            h, cs.handle = cs.handle, None
        cs.release_all(None)  # no record reaches Python from here on
        cs.engine.children.discard(cs)
        if h is None or cs.engine.handle is None:
            return
        es = cs.engine
        if not es.poll_mode and _core.in_callback_of(es):
            def later():
                if es.handle is not None:
                    lib.sot_consumer_destroy(h)

            threading.Thread(target=later, name="streamotter-consumer-close", daemon=True).start()
        else:
            lib.sot_consumer_destroy(h)


    def __del__(self) -> None:
        try:
            self._shutdown()
        except Exception:
            pass
