"""Client: a streamotter.v1 WebSocket client with reconnection, on an engine's loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import datetime as _dt
import enum
import json as _json
import select
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from . import _core, _ffi
from ._core import Closable, Completion, Entry, Owner, bytes_arg, run_user, take
from .conf import ConfLike, conf_handle
from .engine import Engine
from .errors import RequestError, StreamOtterError, check, error_for

lib = _ffi.lib
log = _core.log


class ClientState(enum.IntEnum):
    """sot_client_state"""

    CONNECTING = 0
    OPEN = 1
    WAITING = 2  # backing off before the next attempt
    CIRCUIT_OPEN = 3
    CLOSED = 4


@dataclass(frozen=True)
class Health:
    state: ClientState
    score: int  # 0 (unusable) .. 100
    rtt_ms: float  # last ping round trip
    missed_pongs: int
    consecutive_failures: int
    reconnects: int


@dataclass(frozen=True)
class Ack:
    """Kafka's acknowledgement of Client.publish."""

    channel: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Message:
    """A record delivered through a subscription."""

    channel: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch, -1 when unknown
    key: str | None
    data: str | None  # JSON text of the record's value, None when it is not JSON
    frame: str  # the whole streamotter.v1 "message" frame

    @property
    def value(self):
        """The record's value decoded from JSON (None when it is not JSON)."""
        return None if self.data is None else _json.loads(self.data)


# --------------------------------------------------------------------------- state


class _ClientStateObj(Owner):
    def __init__(self, engine_state):
        super().__init__()
        self.engine = engine_state
        self.handle = None
        self.subs: dict[str, list["_Subscription"]] = {}


class _ClientCallbacks(Entry):
    __slots__ = ("on_open", "on_message", "on_close", "on_error", "is_open", "closed_event", "async_waiter")

    def __init__(self, owner, on_open, on_message, on_close, on_error):
        super().__init__(owner)
        self.on_open = on_open
        self.on_message = on_message
        self.on_close = on_close
        self.on_error = on_error
        # on_open/on_close are always installed: close() waits for the on_close that
        # pairs with the last on_open before it frees the client.
        self.is_open = False
        self.closed_event = threading.Event()
        self.async_waiter = None  # (loop, asyncio.Event) during aclose()


class _Subscription(Entry):
    """A subscription: its message callback (until unsubscribe or close) and the one-shot
    answer of the gateway (the C call takes one opaque pointer for both)."""

    __slots__ = ("channel", "callback", "result", "on_end")

    def __init__(self, owner, channel, callback, result: Completion, on_end=None):
        super().__init__(owner)
        self.channel = channel
        self.callback = callback
        self.result = result
        self.on_end = on_end

    def abandon(self, exc: BaseException) -> None:
        if not self.result.future.done():
            self.result.complete(None, exc)
        if self.on_end is not None:
            self.on_end(exc)

    def forget(self, exc: BaseException | None = None) -> None:
        self.release(exc)
        lst = self.owner.subs.get(self.channel)
        if lst is not None and self in lst:
            lst.remove(self)
            if not lst:
                self.owner.subs.pop(self.channel, None)


@_ffi.client_on_open_cb
def _on_open(opaque, proto):
    try:
        e = take(opaque, False)
        if e is None:
            return
        e.is_open = True
        e.closed_event.clear()
        if e.on_open is not None:
            run_user(e.owner.engine, "on_open", e.on_open, _ffi.cstr(proto))
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_open")


@_ffi.client_on_message_cb
def _on_raw(opaque, is_text, data, length):
    try:
        e = take(opaque, False)
        if e is not None and e.on_message is not None:
            raw = ctypes.string_at(data, length) if length else b""
            run_user(e.owner.engine, "on_message", e.on_message, raw.decode("utf-8", "replace") if is_text else raw)
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_message")


@_ffi.client_on_close_cb
def _on_close(opaque, code, reason):
    try:
        e = take(opaque, False)
        if e is None:
            return
        e.is_open = False
        try:
            if e.on_close is not None:
                run_user(e.owner.engine, "on_close", e.on_close, code, _ffi.cstr(reason) or "")
        finally:
            e.closed_event.set()
            w = e.async_waiter
            if w is not None:
                loop, ev = w
                try:
                    loop.call_soon_threadsafe(ev.set)
                except RuntimeError:
                    pass
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_close")


@_ffi.client_on_error_cb
def _on_error(opaque, code, message):
    try:
        e = take(opaque, False)
        if e is not None and e.on_error is not None:
            run_user(e.owner.engine, "on_error", e.on_error, _ffi.cstr(code) or "", _ffi.cstr(message) or "")
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_error")


@_ffi.ack_cb
def _on_ack(opaque, status, code, message, partition, offset):
    try:
        e = take(opaque, True)
        if e is None:
            return
        if status == 0:
            e.complete(Ack(e.channel, partition, offset), None)
        else:
            e.complete(None, RequestError(status, _ffi.cstr(message) or "", _ffi.cstr(code) or ""))
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in the ack callback")


@_ffi.message_cb
def _on_sub_message(opaque, mp):
    try:
        e = take(opaque, False)
        if e is None:
            return
        m = mp.contents
        if m.size < ctypes.sizeof(_ffi.sot_message):
            return  # an older library: fields missing (never seen; sizes only grow)
        msg = Message(
            _ffi.cstr(m.channel) or "",
            m.partition,
            m.offset,
            m.timestamp,
            _ffi.cstr(m.key),
            ctypes.string_at(m.data, m.data_len).decode("utf-8", "replace") if m.data else None,
            ctypes.string_at(m.frame, m.frame_len).decode("utf-8", "replace") if m.frame else "",
        )
        run_user(e.owner.engine, f"subscribe({e.channel!r}) callback", e.callback, msg)
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in the message callback")


@_ffi.result_cb
def _on_sub_result(opaque, status, code, message):
    try:
        e = take(opaque, False)
        if e is None:
            return
        if status == 0:
            e.result.complete(None, None)
        else:
            exc = RequestError(status, _ffi.cstr(message) or "", _ffi.cstr(code) or "")
            e.forget()  # the subscription did not happen: its message callback is done
            e.result.complete(None, exc)
            if e.on_end is not None:
                e.on_end(exc)
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in the subscribe result")


class _Unsubscribe(Completion):
    __slots__ = ("subs",)


@_ffi.result_cb
def _on_unsub_result(opaque, status, code, message):
    try:
        e = take(opaque, True)
        if e is None:
            return
        for s in e.subs:
            s.forget(_core.closed_error("unsubscribed"))
        if status == 0:
            e.complete(None, None)
        else:
            e.complete(None, RequestError(status, _ffi.cstr(message) or "", _ffi.cstr(code) or ""))
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in the unsubscribe result")


class _Ack(Completion):
    __slots__ = ("channel",)


def from_json(start) -> bytes | None:
    """The `from` of a subscribe: "latest", "earliest", {partition: offset},
    {"offsets": {...}}, {"timestamp": ms}, or a datetime."""
    if start is None or start == "latest":
        return b'"latest"'
    if start == "earliest":
        return b'"earliest"'
    if isinstance(start, _dt.datetime):
        return _json.dumps({"timestamp": int(start.timestamp() * 1000)}).encode()
    if isinstance(start, dict):
        if "offsets" in start or "timestamp" in start:
            return _json.dumps(start).encode()
        return _json.dumps({"offsets": {str(int(p)): int(o) for p, o in start.items()}}).encode()
    raise ValueError(f"start: expected 'latest', 'earliest', {{partition: offset}}, "
                     f"{{'timestamp': ms}} or a datetime, got {start!r}")


_END = object()


# --------------------------------------------------------------------------- Client


class Client(Closable):
    """A streamotter.v1 WebSocket client on `engine` (any mode; an engine in mode
    "client" runs no gateway and no Kafka). It reconnects by itself (jittered exponential
    backoff, circuit breaker), resubscribes from its positions and resends unacknowledged
    publishes. Client configuration keys: client.*, reconnect.*, circuit.* (see the
    header). Callbacks: `on_open(subprotocol)`, `on_message(data)` (every frame, raw),
    `on_close(code, reason)`, `on_error(code, message)` (for example "connect_failed",
    "circuit_open", or "protocol_error" when the server broke the protocol: the client
    closes that connection with 1002 and reconnects; nothing of the bad frame is delivered).

    All methods may be called from any thread, including from inside callbacks.
    """

    def __init__(self, engine: Engine, url: str, conf: ConfLike = None, *,
                 on_open: Callable[[str | None], None] | None = None,
                 on_message: Callable[["str | bytes"], None] | None = None,
                 on_close: Callable[[int, str], None] | None = None,
                 on_error: Callable[[str, str], None] | None = None,
                 start: bool = True, _owns_engine: bool = False):
        self._cs: _ClientStateObj | None = None
        self.engine = engine
        self.url = url
        self._owns_engine = _owns_engine
        eh = engine._h()
        es = engine._st
        es.reap()
        cs = _ClientStateObj(es)
        cb_entry = _ClientCallbacks(cs, on_open, on_message, on_close, on_error)
        self._callbacks = cb_entry
        cbs = _ffi.sot_client_callbacks()
        cbs.size = ctypes.sizeof(cbs)
        cbs.on_open = _on_open
        cbs.on_close = _on_close
        if on_message is not None:
            cbs.on_message = _on_raw
        if on_error is not None:
            cbs.on_error = _on_error
        err = ctypes.create_string_buffer(512)
        with conf_handle(conf) as c:
            h = lib.sot_client_new(eh, url.encode(), c, ctypes.byref(cbs), cb_entry.id, err, len(err))
        if not h:
            msg = err.value.decode("utf-8", "replace") or _ffi.last_error()
            cs.release_all(None)
            code = _ffi.SOT_ERR_BAD_HANDLE if "not a live" in msg else _ffi.SOT_ERR_CONFIG
            raise error_for(code, msg)
        cs.handle = h
        es.children.add(cs)
        self._cs = cs
        if start:
            try:
                self.start()
            except BaseException:
                self._shutdown()
                raise

    def _h(self):
        cs = self._cs
        if cs is None:
            raise error_for(_ffi.SOT_ERR_STATE, "the client is closed")
        cs.engine.raise_pending()
        h = cs.handle
        if h is None:
            raise error_for(_ffi.SOT_ERR_STATE, "the client is closed")
        return h

    def start(self) -> "Client":
        """Starts connecting (done by the constructor unless start=False)."""
        check(lib.sot_client_start(self._h()))
        return self

    # ---- publish

    def _publish(self, channel, data, key, callback, encoded, loop):
        h = self._h()
        if encoded:
            text = data.encode() if isinstance(data, str) else bytes(data)
        else:
            text = _json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        entry = _Ack(self._cs, "publish callback", callback, loop)
        entry.channel = channel
        rc = lib.sot_client_publish(h, channel.encode(), None if key is None else key.encode(), text,
                                    _on_ack, entry.id)
        if rc < 0:
            exc = error_for(rc)
            entry.release()
            raise exc
        return entry.future

    def publish(self, channel: str, data, *, key: str | None = None, encoded: bool = False,
                callback: Callable[["StreamOtterError | None", "Ack | None"], None] | None = None,
                ) -> "concurrent.futures.Future[Ack]":
        """Publishes `data` (any JSON-serialisable value; with encoded=True, JSON text as
        str or bytes) to `channel`. Returns a Future of the Ack (RequestError on failure);
        `callback(err, ack)` runs too, on the callback thread. Unacknowledged publishes
        are resent after a reconnect. InvalidArgError for text that is not JSON."""
        return self._publish(channel, data, key, callback, encoded, None)

    def publish_async(self, channel: str, data, *, key: str | None = None,
                      encoded: bool = False) -> "asyncio.Future[Ack]":
        """publish() for asyncio: an awaitable Future bound to the running loop."""
        return self._publish(channel, data, key, None, encoded, self.engine._loop_for_async())

    # ---- subscribe

    def _subscribe(self, channel, callback, start, loop, on_end=None):
        h = self._h()
        cs = self._cs
        fj = from_json(start)
        # The result is not a registry entry of its own: it rides on the subscription's.
        result = Completion(cs, "subscribe", None, loop, register=False)
        sub = _Subscription(cs, channel, callback, result, on_end)
        cs.subs.setdefault(channel, []).append(sub)
        rc = lib.sot_client_subscribe(h, channel.encode(), fj, _on_sub_message, _on_sub_result, sub.id)
        if rc < 0:
            exc = error_for(rc)
            sub.forget()
            raise exc
        return result.future

    def subscribe(self, channel: str, callback: Callable[[Message], None], *,
                  start="latest") -> "concurrent.futures.Future[None]":
        """Subscribes to `channel`; `callback(message)` runs for every message until
        unsubscribe() or close(). `start`: "latest", "earliest", {partition: offset},
        {"timestamp": ms} or a datetime. Returns a Future completed by the gateway's
        answer (RequestError such as "unknown_channel" or "already_subscribed")."""
        return self._subscribe(channel, callback, start, None)

    def subscribe_async(self, channel: str, callback: Callable[[Message], None], *,
                        start="latest") -> "asyncio.Future[None]":
        return self._subscribe(channel, callback, start, self.engine._loop_for_async())

    def unsubscribe(self, channel: str) -> "concurrent.futures.Future[None]":
        """Ends the subscription(s) of `channel`. The message callback runs no more once
        the returned Future is done."""
        return self._unsubscribe(channel, None)

    def _unsubscribe(self, channel, loop):
        h = self._h()
        cs = self._cs
        entry = _Unsubscribe(cs, "unsubscribe", None, loop)
        entry.subs = list(cs.subs.get(channel, ()))
        rc = lib.sot_client_unsubscribe(h, channel.encode(), _on_unsub_result, entry.id)
        if rc < 0:
            exc = error_for(rc)
            entry.release()
            raise exc
        return entry.future

    async def messages(self, channel: str, *, start="latest") -> AsyncIterator[Message]:
        """Subscribes and yields the messages of `channel` (asyncio). The subscription is
        confirmed before the first message; leaving the loop (or aclose()) unsubscribes;
        the iteration ends when the client is closed. Use it with
        contextlib.aclosing() to unsubscribe deterministically on break."""
        loop = self.engine._loop_for_async()
        queue: asyncio.Queue = asyncio.Queue()
        poll_mode = self.engine.poll_mode

        if poll_mode:
            def push(m):
                queue.put_nowait(m)
        else:
            def push(m):
                loop.call_soon_threadsafe(queue.put_nowait, m)

        def end(exc):
            try:
                if poll_mode and asyncio.get_running_loop() is loop:
                    queue.put_nowait((_END, exc))
                    return
            except RuntimeError:
                pass
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (_END, exc))
            except RuntimeError:
                pass

        fut = self._subscribe(channel, push, start, loop, on_end=end)
        subscribed = False
        try:
            await fut
            subscribed = True
            while True:
                item = await queue.get()
                if type(item) is tuple and item and item[0] is _END:
                    exc = item[1]
                    if isinstance(exc, RequestError) and exc.reason == "closed":
                        return
                    raise exc
                self._cs.engine.raise_pending()
                yield item
        finally:
            cs = self._cs
            if subscribed and cs is not None and cs.handle is not None:
                try:
                    self.unsubscribe(channel)
                except StreamOtterError:
                    pass

    # ---- raw messages, health, close

    def send(self, data: "str | bytes") -> None:
        """Sends a raw message (str: text, bytes: binary) on the current connection;
        dropped while disconnected. StateError when the client is closed."""
        b, text = bytes_arg(data)
        check(lib.sot_client_send(self._h(), b, len(b), int(text)))

    def health(self) -> Health:
        """Connection state, score (0..100), last ping RTT, missed pongs, consecutive
        failures and reconnects."""
        out = _ffi.sot_client_health()
        out.size = ctypes.sizeof(out)
        check(lib.sot_client_get_health(self._h(), ctypes.byref(out)))
        try:
            state = ClientState(out.state)
        except ValueError:
            state = out.state
        return Health(state, out.score, out.rtt_ms, out.missed_pongs, out.consecutive_failures, out.reconnects)

    @property
    def state(self) -> ClientState:
        return self.health().state

    def close(self, code: int = 1000, reason: str | None = None, timeout: float = 2.0) -> None:
        """Closes for good (no reconnect) with `code` and `reason`, waits (up to
        `timeout` s) for the on_close of the open connection, then frees the client.
        Pending publishes and subscriptions complete with RequestError("closed"); raises a
        pending callback exception afterwards. Idempotent. From inside a callback it does
        not wait (on_close is then not delivered)."""
        cs = self._cs
        if cs is not None and cs.handle is not None and self._callbacks.is_open:
            es = cs.engine
            if not _core.in_callback_of(es) and self._begin_close(code, reason):
                ev = self._callbacks.closed_event
                if es.poll_mode:
                    deadline = time.monotonic() + timeout
                    while not ev.is_set() and time.monotonic() < deadline and es.handle is not None:
                        fd = lib.sot_engine_fd(es.handle)
                        if fd >= 0:
                            select.select([fd], [], [], min(0.05, max(0.0, deadline - time.monotonic())))
                        es.poll_once(0)
                else:
                    ev.wait(timeout)
        self._shutdown(code, reason)
        if cs is not None:
            cs.engine.raise_pending()

    async def aclose(self, code: int = 1000, reason: str | None = None, timeout: float = 2.0) -> None:
        """close() for asyncio: waits for on_close without blocking the event loop."""
        cs = self._cs
        if cs is not None and cs.handle is not None and self._callbacks.is_open:
            loop = self.engine._loop_for_async()
            ev = asyncio.Event()
            self._callbacks.async_waiter = (loop, ev)
            if self._callbacks.is_open and self._begin_close(code, reason):
                try:
                    await asyncio.wait_for(ev.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        self.close(code, reason)

    def _begin_close(self, code, reason) -> bool:
        h = self._cs.handle
        if h is None or self._cs.engine.handle is None:
            return False
        return lib.sot_client_close(h, code, None if reason is None else reason.encode()) == 0

    def _shutdown(self, code: int = 1000, reason: str | None = None) -> None:
        cs = self._cs
        if cs is None:
            return
        with cs.lock:
            h, cs.handle = cs.handle, None
        es = cs.engine
        if h is not None and es.handle is not None:
            lib.sot_client_close(h, code, None if reason is None else reason.encode())
            es.bury(h)  # sot_client_destroy later: see EngineState.bury
        cs.release_all(_core.closed_error())
        cs.subs.clear()
        es.children.discard(cs)
        if self._owns_engine:
            self.engine._shutdown()
        else:
            es.reap()


    async def __aenter__(self) -> "Client":
        self.engine.attach()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.__exit__(exc_type, exc, tb)

    def __del__(self) -> None:
        try:
            self._shutdown()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<streamotter.Client {self.url!r}{' closed' if self.closed else ''}>"


def connect(url: str, conf: ConfLike = None, *, callbacks: str = "thread",
            on_callback_error=None, **kwargs) -> Client:
    """A client with an engine of its own (mode "client"): closing the client closes the
    engine. `callbacks`: "thread" or "poll" (asyncio)."""
    engine = Engine({"mode": "client", "callbacks": callbacks}, on_callback_error=on_callback_error)
    try:
        return Client(engine, url, conf, _owns_engine=True, **kwargs)
    except BaseException:
        engine.close()
        raise
