"""Callback plumbing shared by Engine, Client and Consumer.

C holds only small integers as `opaque` pointers. Each integer names an entry in one
process-wide registry; the C function pointers themselves are module-level trampolines
created once (so no ctypes callback object can be collected while C may call it). An
entry is released when its callback can no longer run: one-shot entries (acks,
deliveries, request results) when they fire; subscriptions on their unsubscribe answer;
everything of an object when the object is closed. A trampoline that finds no entry (the
object was closed meanwhile) does nothing.

Exceptions raised by user callbacks never reach C: they are stored on the engine,
reported (the engine's `on_callback_error` hook, else the "streamotter" logger), and
raised again by the next API call on that engine or one of its clients and consumers, or
by close().
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
import weakref
from typing import Any, Callable

from . import _ffi
from .errors import RequestError, StreamOtterError

log = logging.getLogger("streamotter")

# --------------------------------------------------------------------------- registry

_ids = itertools.count(1)
_entries: dict[int, "Entry"] = {}


def in_callback_of(engine: "EngineState") -> bool:
    """True on the thread that runs `engine`'s callbacks right now: its loop thread in
    thread mode, the thread inside sot_engine_poll in poll mode."""
    me = threading.get_ident()
    if engine.poll_mode:
        return engine.polling_thread == me
    return engine.loop_thread == me


class Entry:
    """What a C callback's opaque pointer stands for."""

    __slots__ = ("id", "owner", "__weakref__")
    one_shot = False

    def __init__(self, owner: "Owner", register: bool = True):
        self.owner = owner
        self.id = 0
        if register:
            self.id = next(_ids)
            _entries[self.id] = self
            owner.ids.add(self.id)

    def release(self, exc: BaseException | None = None) -> None:
        """Forgets the entry; a one-shot entry that did not fire completes with `exc`."""
        if _entries.pop(self.id, None) is not None:
            self.owner.ids.discard(self.id)
            if exc is not None:
                self.abandon(exc)

    def abandon(self, exc: BaseException) -> None:
        pass


def take(opaque: int | None, one_shot: bool) -> Entry | None:
    """The entry of a callback's opaque pointer (removed when one-shot), or None when it
    was released. Called first thing by every trampoline."""
    if not opaque:
        return None
    if one_shot:
        e = _entries.pop(opaque, None)
        if e is not None:
            e.owner.ids.discard(opaque)
    else:
        e = _entries.get(opaque)
    if e is not None:
        eng = e.owner.engine
        if not eng.poll_mode:
            eng.loop_thread = threading.get_ident()
    return e


def run_user(engine: "EngineState", where: str, fn: Callable, *args) -> None:
    """Runs user code from a callback: an exception is stored, never propagated into C."""
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - everything, KeyboardInterrupt included
        engine.callback_failed(e, where)


# --------------------------------------------------------------------------- owners


class Owner:
    """Something that owns registry entries (an engine, client or consumer state)."""

    engine: "EngineState"
    handle: Any

    def __init__(self) -> None:
        self.ids: set[int] = set()
        # Re-entrant: the cyclic GC can run a Client's or Engine's __del__ (which takes
        # these locks) on a thread that is inside one of these sections, at any
        # allocation; a plain Lock then deadlocks that thread (seen in
        # test_gc_on_other_threads_while_callbacks_run: a CI run hung for 10 minutes).
        self.lock = threading.RLock()

    def release_all(self, exc: BaseException | None) -> None:
        for i in list(self.ids):
            e = _entries.get(i)
            if e is not None:
                e.release(exc)
        self.ids.clear()


_live_engines: "weakref.WeakSet[EngineState]" = weakref.WeakSet()


class EngineState(Owner):
    """Everything an engine's callbacks need, without a reference to the Engine object
    itself (so that the Engine can be garbage collected while C holds callbacks)."""

    def __init__(self, handle, poll_mode: bool, on_callback_error: Callable | None):
        super().__init__()
        self.engine = self
        self.handle = handle
        self.poll_mode = poll_mode
        self.on_callback_error = on_callback_error
        self.children: set[Owner] = set()
        self.pending: BaseException | None = None
        self.dropped_errors = 0
        # Serialises sot_engine_poll with destroy (a destroy must not free the engine
        # while another thread is inside sot_engine_poll). Re-entrant: close() from a
        # callback run by poll() is allowed.
        self.poll_lock = threading.RLock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0  # thread mode: the engine thread (learnt at its first callback)
        self.polling_thread = 0  # poll mode: the thread inside sot_engine_poll
        self.reader_fd = -1
        self.started = False
        # Closed clients whose handle is freed later (see bury()).
        self.zombies: list[tuple[float, object]] = []
        _live_engines.add(self)

    # ---- errors raised by user callbacks

    def callback_failed(self, exc: BaseException, where: str) -> None:
        try:
            exc.add_note(f"(raised inside the streamotter callback {where})")
        except AttributeError:  # Python < 3.11
            pass
        hook = self.on_callback_error
        if hook is not None:
            try:
                if hook(exc) is True:
                    return  # handled: not raised again
            except BaseException as e2:  # noqa: BLE001
                log.error("streamotter: on_callback_error raised", exc_info=e2)
        else:
            log.error("streamotter: exception in callback %s (raised again by the next call)",
                      where, exc_info=exc)
        if self.pending is None:
            self.pending = exc
        else:
            self.dropped_errors += 1

    def raise_pending(self) -> None:
        exc = self.pending
        if exc is not None:
            self.pending = None
            raise exc

    # ---- poll mode

    def poll_once(self, max_events: int) -> int | None:
        """sot_engine_poll on this thread (None when the engine is gone)."""
        with self.poll_lock:
            h = self.handle
            if h is None:
                return None
            prev = self.polling_thread
            self.polling_thread = threading.get_ident()
            try:
                return _ffi.lib.sot_engine_poll(h, max_events)
            finally:
                self.polling_thread = prev

    # ---- closed clients

    # Workaround for a library bug: sot_client_destroy on a client whose connection is
    # open (or opening) lets the loop thread call the freed handle when that connection
    # finishes closing ("Attempted to read an unowned reference ... already destroyed",
    # abort). The binding closes the client at once (sot_client_close: no reconnect,
    # requests answered "closed") but frees the handle only ZOMBIE_DELAY seconds later,
    # when the library's close handshake (1 s grace) is certainly over, or with the engine.
    ZOMBIE_DELAY = 3.0

    def bury(self, handle) -> None:
        with self.lock:
            if self.handle is not None:
                self.zombies.append((time.monotonic() + self.ZOMBIE_DELAY, handle))

    def reap(self, force: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            if self.handle is None or not self.zombies:
                return
            due = [h for t, h in self.zombies if force or t <= now]
            self.zombies = [(t, h) for t, h in self.zombies if not (force or t <= now)]
        for h in due:
            if self.handle is not None:
                _ffi.lib.sot_client_destroy(h)

    # ---- handle access

    def require(self):
        h = self.handle
        if h is None:
            raise errors_state("the engine is closed")
        return h


class Closable:
    """close() on a clean exit from `with`, the harder _shutdown() when an exception
    propagates; `closed` once the handle is gone. Subclasses keep their state in `_cs`."""

    _cs: Any

    @property
    def closed(self) -> bool:
        return self._cs is None or self._cs.handle is None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._shutdown()


def errors_state(msg: str) -> StreamOtterError:
    from .errors import error_for

    return error_for(_ffi.SOT_ERR_STATE, msg)


def closed_error(what: str = "the client was closed") -> RequestError:
    # The library answers requests of a closed client with status SOT_ERR_NOT_FOUND and
    # the word "closed"; requests abandoned by the binding (their object was destroyed
    # first) get the same answer.
    return RequestError(_ffi.SOT_ERR_NOT_FOUND, what, "closed")


# --------------------------------------------------------------------------- completions


def _set_future(fut, value, exc) -> None:
    if fut.done():
        return
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except (concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        pass  # cancelled meanwhile


class Completion(Entry):
    """A one-shot answer (ack, delivery, request result): resolves a concurrent Future or
    an asyncio Future and calls an optional user callback `callback(err, value)`."""

    __slots__ = ("future", "loop", "callback", "where")
    one_shot = True

    def __init__(self, owner: Owner, where: str, callback=None,
                 loop: asyncio.AbstractEventLoop | None = None, register: bool = True):
        super().__init__(owner, register)
        self.where = where
        self.callback = callback
        self.loop = loop
        self.future = loop.create_future() if loop is not None else concurrent.futures.Future()

    def complete(self, value, exc) -> None:
        if self.callback is not None:
            run_user(self.owner.engine, self.where, self.callback, exc, value)
        fut = self.future
        loop = self.loop
        if loop is None:
            _set_future(fut, value, exc)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            _set_future(fut, value, exc)
        else:
            try:
                loop.call_soon_threadsafe(_set_future, fut, value, exc)
            except RuntimeError:
                pass  # loop closed

    def abandon(self, exc: BaseException) -> None:
        self.complete(None, exc)


def bytes_arg(data) -> tuple[bytes, bool]:
    """(bytes, is_text) for a str (text) or a bytes-like object (binary)."""
    if isinstance(data, str):
        return data.encode("utf-8"), True
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), False
    raise TypeError(f"expected str or bytes, got {type(data).__name__}")


def close_all_engines() -> None:
    """atexit: destroy what is still running before the interpreter finalises, so that no
    engine thread calls into Python while it is being torn down."""
    for st in list(_live_engines):
        h = st.handle
        if h is None:
            continue
        st.handle = None
        for child in list(st.children):
            child.handle = None
        try:
            _ffi.lib.sot_engine_destroy(h)
        except Exception:  # pragma: no cover
            pass

