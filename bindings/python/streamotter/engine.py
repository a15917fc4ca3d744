"""Engine: one libuv loop (its own thread) running the gateway, its Kafka clients, and any
WebSocket clients and Kafka consumers created on it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import datetime as _dt
import json
import select
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from . import _core, _ffi
from ._core import Completion, EngineState, Entry, bytes_arg, run_user, take
from .conf import ConfLike, conf_handle
from .errors import StreamOtterError, check, error_for

lib = _ffi.lib
log = _core.log

if TYPE_CHECKING:
    from .client import Client
    from .consumer import Consumer


@dataclass(frozen=True)
class Delivery:
    """Kafka's answer to Engine.publish."""

    topic: str
    partition: int
    offset: int


# --------------------------------------------------------------------------- trampolines


class _ServerCallbacks(Entry):
    __slots__ = ("on_connect", "on_message", "on_close")

    def __init__(self, owner, on_connect, on_message, on_close):
        super().__init__(owner)
        self.on_connect = on_connect
        self.on_message = on_message
        self.on_close = on_close


def _headers(arr, n: int) -> list[tuple[str, str | None]]:
    out = []
    for i in range(n):
        h = arr[i]
        name = _ffi.cstr(h.name) or ""
        value = None if not h.value else ctypes.string_at(h.value, h.value_len).decode("utf-8", "replace")
        out.append((name, value))
    return out


@_ffi.on_connect_cb
def _srv_connect(opaque, conn, path, headers, n):
    try:
        e = take(opaque, False)
        if e is None or e.on_connect is None:
            return
        run_user(e.owner, "on_connect", e.on_connect, conn, _ffi.cstr(path) or "/", _headers(headers, n))
    except BaseException:  # pragma: no cover - binding bug
        log.exception("streamotter: internal error in on_connect")


@_ffi.server_on_message_cb
def _srv_message(opaque, conn, is_text, data, length):
    try:
        e = take(opaque, False)
        if e is None or e.on_message is None:
            return
        raw = ctypes.string_at(data, length) if length else b""
        run_user(e.owner, "on_message", e.on_message, conn, raw.decode("utf-8", "replace") if is_text else raw)
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_message")


@_ffi.server_on_close_cb
def _srv_close(opaque, conn, code, reason):
    try:
        e = take(opaque, False)
        if e is None or e.on_close is None:
            return
        run_user(e.owner, "on_close", e.on_close, conn, code, _ffi.cstr(reason) or "")
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_close")


@_ffi.delivery_cb
def _on_delivery(opaque, status, error, topic, partition, offset):
    try:
        e = take(opaque, True)
        if e is None:
            return
        if status == 0:
            e.complete(Delivery(_ffi.cstr(topic) or "", partition, offset), None)
        else:
            e.complete(None, error_for(status, _ffi.cstr(error) or ""))
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in the delivery callback")


class _AuthCallback(Entry):
    __slots__ = ("callback",)

    def __init__(self, owner, callback):
        super().__init__(owner)
        self.callback = callback


class _AuditCallback(Entry):
    __slots__ = ("callback",)

    def __init__(self, owner, callback):
        super().__init__(owner)
        self.callback = callback


def _ms(when) -> int:
    if when is None:
        return 0
    if isinstance(when, _dt.datetime):
        return int(when.timestamp() * 1000)
    return int(when)


class AuthRequest:
    """A WebSocket upgrade waiting for the host's decision (Engine(on_auth=...)).

    Answer once, now or later, from any thread, before ws.handshake_timeout_ms: allow()
    or deny(). A late or second answer raises NotFoundError."""

    __slots__ = ("id", "path", "headers", "peer_address", "tls_subject", "_st", "answered")

    def __init__(self, st, rid, path, headers, peer, subject):
        self._st = st
        self.id = rid
        self.path = path
        self.headers = headers
        self.peer_address = peer
        self.tls_subject = subject
        self.answered = False

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first request header called `name` (case-insensitive)."""
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def allow(self, subject: str | None = None, roles: "Sequence[str] | str | None" = None,
              expires_at=None) -> None:
        """Lets the upgrade through with an identity: `subject`, `roles` (names used by
        the channel permissions), `expires_at` (ms since the epoch or a datetime: the
        connection is closed when the credential expires; None = never)."""
        h = self._st.require()
        if roles is not None and not isinstance(roles, str):
            roles = ",".join(roles)
        self.answered = True
        check(lib.sot_auth_allow(h, self.id, None if subject is None else subject.encode(),
                                 None if roles is None else roles.encode(), _ms(expires_at)))

    def deny(self, status: int = 403, reason: str | None = None) -> None:
        """Refuses the upgrade with an HTTP status (400-599) and a reason for the body."""
        h = self._st.require()
        self.answered = True
        check(lib.sot_auth_deny(h, self.id, status, None if reason is None else reason.encode()))

    def __repr__(self) -> str:
        return f"<AuthRequest {self.id} {self.path!r} from {self.peer_address}>"


def _run_auth(st: EngineState, callback, req: AuthRequest) -> None:
    verdict = callback(req)
    if verdict is True and not req.answered:
        req.allow()
    elif verdict is False and not req.answered:
        req.deny(403, "forbidden")


@_ffi.auth_cb
def _on_auth(opaque, request, path, headers, n, peer, subject):
    try:
        e = take(opaque, False)
        if e is None:
            return
        st = e.owner
        req = AuthRequest(st, request, _ffi.cstr(path) or "/", _headers(headers, n), _ffi.cstr(peer) or "",
                          _ffi.cstr(subject))
        before = st.pending
        run_user(st, "on_auth", _run_auth, st, e.callback, req)
        if st.pending is not before and not req.answered:
            # The callback raised before answering: refuse rather than leave the client
            # waiting for the handshake timeout.
            try:
                req.deny(500, "authentication callback failed")
            except StreamOtterError:
                pass
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_auth")


@_ffi.audit_cb
def _on_audit(opaque, line):
    try:
        e = take(opaque, False)
        if e is None:
            return
        text = _ffi.cstr(line) or ""
        try:
            event = json.loads(text)
        except ValueError:
            event = {"event": "unparsed", "text": text}
        run_user(e.owner, "on_audit", e.callback, event)
    except BaseException:  # pragma: no cover
        log.exception("streamotter: internal error in on_audit")


def _header_array(headers) -> tuple[object, int, list]:
    """A sot_header[] (and the bytes it points into, to keep alive) from a mapping or a
    sequence of (name, value) pairs; values are str, bytes or None."""
    if not headers:
        return None, 0, []
    items = list(headers.items()) if hasattr(headers, "items") else list(headers)
    arr = (_ffi.sot_header * len(items))()
    keep = []
    for i, (name, value) in enumerate(items):
        nb = name.encode() if isinstance(name, str) else bytes(name)
        keep.append(nb)
        arr[i].name = nb
        if value is None:
            arr[i].value = None
            arr[i].value_len = 0
        else:
            vb = value.encode() if isinstance(value, str) else bytes(value)
            buf = ctypes.create_string_buffer(vb, len(vb))
            keep.append(buf)
            arr[i].value = ctypes.cast(buf, ctypes.c_void_p)
            arr[i].value_len = len(vb)
    return arr, len(items), keep


def _blob(b) -> tuple[object, int]:
    if b is None:
        return None, 0
    if isinstance(b, str):
        b = b.encode()
    b = bytes(b)
    return b, len(b)


# --------------------------------------------------------------------------- Engine


class Engine:
    """An engine: created from a configuration, started on its own thread.

    Modes (`mode` key): "gateway" (default: WebSocket gateway bridged to Kafka, embedded
    Kafka when no kafka.bootstrap.servers), "client" (a loop for WebSocket clients only),
    "echo". Callback delivery (`callbacks` key):

    * "thread" (default): callbacks run on the engine's loop thread as events happen.
      Each callback takes the GIL, so while Python code runs on other threads the engine
      waits for the GIL (up to sys.getswitchinterval(), 5 ms by default, per switch), and
      while a callback runs every connection of the engine waits: keep callbacks short
      and never block in them.
    * "poll": callbacks are queued; they run on the thread that calls `poll()`, or, with
      asyncio, on the event loop's thread (the engine's fd is watched with
      loop.add_reader; the async methods attach the engine to the running loop).

    Server callbacks: `on_connect(conn, path, headers)`, `on_message(conn, data)` (str for
    text, bytes for binary), `on_close(conn, code, reason)`.

    An exception raised by any callback of the engine (or of its clients and consumers)
    is reported to `on_callback_error(exc)` (or logged on the "streamotter" logger) and
    raised again by the next call into the engine, its clients or consumers, or by
    close(); the engine keeps running. A hook that returns True marks it handled.
    """

    def __init__(
        self,
        conf: ConfLike = None,
        *,
        on_connect: Callable[[int, str, list], None] | None = None,
        on_message: Callable[[int, "str | bytes"], None] | None = None,
        on_close: Callable[[int, int, str], None] | None = None,
        on_auth: "Callable[[AuthRequest], bool | None] | None" = None,
        on_audit: Callable[[dict], None] | None = None,
        key_provider: "Callable[[str | None, str | None], tuple[str, bytes] | None] | None" = None,
        on_callback_error: Callable[[BaseException], object] | None = None,
        start: bool = True,
    ):
        self._st: EngineState | None = None
        err = ctypes.create_string_buffer(512)
        with conf_handle(conf) as c:
            h = lib.sot_engine_new(c, err, len(err))
        if not h:
            raise error_for(_ffi.SOT_ERR_CONFIG, err.value.decode("utf-8", "replace") or _ffi.last_error())
        poll_mode = lib.sot_engine_fd(h) >= 0
        self._st = EngineState(h, poll_mode, on_callback_error)
        self._server: _ServerCallbacks | None = None
        self._auth: _AuthCallback | None = None
        self._audit: _AuditCallback | None = None
        try:
            if on_connect or on_message or on_close:
                self.set_server_callbacks(on_connect=on_connect, on_message=on_message, on_close=on_close)
            if on_auth is not None:
                self.set_auth_callback(on_auth)
            if on_audit is not None:
                self.set_audit_callback(on_audit)
            if key_provider is not None:
                self.set_key_provider(key_provider)
            if start:
                self.start()
        except BaseException:
            self._shutdown()
            raise

    # ---- lifecycle

    def _h(self):
        st = self._st
        if st is None:
            raise error_for(_ffi.SOT_ERR_STATE, "the engine is closed")
        st.raise_pending()
        return st.require()

    def set_server_callbacks(self, *, on_connect=None, on_message=None, on_close=None) -> None:
        """Sets the gateway connection callbacks (before start())."""
        h = self._h()
        entry = _ServerCallbacks(self._st, on_connect, on_message, on_close)
        cbs = _ffi.sot_server_callbacks()
        cbs.size = ctypes.sizeof(cbs)
        if on_connect is not None:
            cbs.on_connect = _srv_connect
        if on_message is not None:
            cbs.on_message = _srv_message
        if on_close is not None:
            cbs.on_close = _srv_close
        rc = lib.sot_engine_set_server_callbacks(h, ctypes.byref(cbs), entry.id)
        if rc < 0:
            exc = error_for(rc)
            entry.release()
            raise exc
        old, self._server = self._server, entry
        if old is not None:
            old.release()

    def set_auth_callback(self, callback: "Callable[[AuthRequest], bool | None]") -> None:
        """Sets the custom authentication of upgrades (before start()): every valid
        upgrade waits until the AuthRequest passed to `callback` is answered with allow()
        or deny(), now or later, from any thread. Returning True allows (no identity),
        False denies with 403; None means "answered, or will be". If the callback raises
        before answering, the upgrade is refused with 500."""
        h = self._h()
        entry = _AuthCallback(self._st, callback)
        rc = lib.sot_engine_set_auth_callback(h, _on_auth, entry.id)
        if rc < 0:
            exc = error_for(rc)
            entry.release()
            raise exc
        old, self._auth = self._auth, entry
        if old is not None:
            old.release()

    def set_audit_callback(self, callback: Callable[[dict], None]) -> None:
        """Receives every audit event as a dict ("event": auth_success, auth_failure,
        denied, connection_open, connection_close, ...). Before start()."""
        h = self._h()
        entry = _AuditCallback(self._st, callback)
        rc = lib.sot_engine_set_audit_callback(h, _on_audit, entry.id)
        if rc < 0:
            exc = error_for(rc)
            entry.release()
            raise exc
        old, self._audit = self._audit, entry
        if old is not None:
            old.release()

    def set_key_provider(self, provider: "Callable[[str | None, str | None], tuple[str, bytes] | None]") -> None:
        """Supplies message-encryption keys (before start()), instead of encryption.key_file.
        `provider(key_id, channel)`: to encrypt, key_id is None and channel names the
        channel: return (active key id, 32 key bytes); to decrypt, key_id names the key and
        channel is None: return (key_id, 32 bytes). Return None when there is no such key.
        It runs on the engine's thread for every record (in both callback modes): keep it
        fast and thread-safe. An exception counts as "no key" and is reported like other
        callback errors."""
        h = self._h()
        st = self._st

        def trampoline(opaque, key_id, channel, out_key, out_id, out_id_size):
            try:
                got = provider(None if key_id is None else key_id.decode(),
                               None if channel is None else channel.decode())
                if got is None:
                    return 1
                kid, key = got
                key = bytes(key)
                kid_b = kid.encode()
                if len(key) != 32 or not kid_b or len(kid_b) >= out_id_size:
                    return 1
                ctypes.memmove(out_key, key, 32)
                if key_id is None:
                    ctypes.memmove(out_id, kid_b + b"\0", len(kid_b) + 1)
                return 0
            except BaseException as e:  # never let an exception cross into C
                try:
                    st.callback_failed(e, "key_provider")
                except Exception:
                    pass
                return 1

        cb = _ffi.key_cb(trampoline)
        rc = lib.sot_engine_set_key_provider(h, cb, None)
        if rc < 0:
            raise error_for(rc)
        self._key_cb = cb  # C holds it until the engine is destroyed

    def auth_allow(self, request: int, subject: str | None = None, roles=None, expires_at=None) -> None:
        """Answers upgrade `request` (AuthRequest.id) with allow; see AuthRequest.allow."""
        AuthRequest(self._st, request, "", [], "", None).allow(subject, roles, expires_at)

    def auth_deny(self, request: int, status: int = 403, reason: str | None = None) -> None:
        """Answers upgrade `request` with a refusal; see AuthRequest.deny."""
        AuthRequest(self._st, request, "", [], "", None).deny(status, reason)

    def start(self) -> "Engine":
        """Starts Kafka clients, the listener and the loop thread. StateError if started."""
        check(lib.sot_engine_start(self._h()))
        self._st.started = True
        return self

    def stop(self) -> None:
        """Graceful stop (blocks until done; bounded by shutdown.timeout_ms). In poll mode,
        the callbacks queued by the stop are run before it returns. InCallbackError from
        inside one of this engine's callbacks."""
        st = self._st
        h = self._h()
        check(lib.sot_engine_stop(h))
        if st.poll_mode:
            self._drain()
        st.raise_pending()

    def close(self) -> None:
        """Stops (if running) and frees the engine with every client and consumer created
        on it; their pending requests complete with RequestError("closed"). Raises a
        pending callback exception afterwards. Idempotent. From inside one of the engine's
        own callbacks, the stop and free happen right after that callback returns."""
        st = self._st
        self._shutdown()
        if st is not None:
            st.raise_pending()

    def _drain(self) -> None:
        st = self._st
        for _ in range(10_000):
            n = st.poll_once(0)
            if n is None or n <= 0:
                break

    def _shutdown(self) -> None:
        st = self._st
        if st is None:
            return
        with st.lock:
            h = st.handle
            if h is None:
                return
        inside = _core.in_callback_of(st)
        if st.poll_mode and st.started and not inside:
            # Stop first so that the answers the stop produces still reach Python.
            lib.sot_engine_stop(h)
            self._drain()
        self._detach()
        with st.lock:
            if st.handle is None:
                return
            st.handle = None
            st.zombies.clear()  # freed by sot_engine_destroy with every client
            children = list(st.children)
            for child in children:
                with child.lock:
                    child.handle = None
        with st.poll_lock:
            lib.sot_engine_destroy(h)
        closed = _core.closed_error("the engine was closed")
        for child in children:
            child.release_all(closed)
        st.children.clear()
        st.release_all(closed)
        self._server = self._auth = self._audit = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._shutdown()  # do not mask the exception that is propagating

    async def __aenter__(self) -> "Engine":
        self.attach()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.__exit__(exc_type, exc, tb)

    def __del__(self) -> None:
        try:
            self._shutdown()
        except Exception:
            pass

    # ---- properties

    @property
    def closed(self) -> bool:
        return self._st is None or self._st.handle is None

    @property
    def poll_mode(self) -> bool:
        """True for callbacks="poll"."""
        return self._st.poll_mode

    @property
    def port(self) -> int:
        """The TCP port the gateway listens on (port 0 resolved)."""
        return check(lib.sot_engine_port(self._h()))

    @property
    def bootstrap_servers(self) -> str | None:
        """Kafka bootstrap servers in use (the embedded cluster's when embedded)."""
        return _ffi.cstr(lib.sot_engine_bootstrap_servers(self._h()))

    def fileno(self) -> int:
        """The fd that is readable while callbacks wait (poll mode only, else StateError)."""
        return check(lib.sot_engine_fd(self._h()))

    # ---- poll mode

    def poll(self, timeout: float | None = 0.0, max_events: int = 0) -> int:
        """Runs waiting callbacks on this thread (poll mode); waits up to `timeout`
        seconds (None: forever) for the first one. Returns how many ran."""
        st = self._st
        h = self._h()
        if timeout is None or timeout > 0:
            fd = check(lib.sot_engine_fd(h))
            select.select([fd], [], [], timeout)
        n = st.poll_once(max_events)
        if n is None:
            raise error_for(_ffi.SOT_ERR_STATE, "the engine is closed")
        check(n)
        st.raise_pending()
        return n

    def wait(self, future: "concurrent.futures.Future", timeout: float | None = None):
        """future.result(timeout), polling meanwhile when the engine is in poll mode and
        not attached to an event loop."""
        st = self._st
        if not st.poll_mode or st.loop is not None:
            return future.result(timeout)
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while not future.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("timed out waiting for the engine")
            self.poll(0.05 if left is None else min(0.05, left))
        return future.result()

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Runs this engine's callbacks on `loop` (default: the running loop) by watching
        its fd with loop.add_reader. Poll mode only; a no-op in thread mode. The async
        methods call it for you."""
        st = self._st
        self._h()
        if not st.poll_mode:
            return
        loop = loop or asyncio.get_running_loop()
        if st.loop is loop:
            return
        if st.loop is not None and not st.loop.is_closed():
            raise error_for(_ffi.SOT_ERR_STATE, "the engine is attached to another event loop")
        fd = check(lib.sot_engine_fd(st.require()))
        loop.add_reader(fd, _on_readable, st)
        st.loop = loop
        st.reader_fd = fd

    def _detach(self) -> None:
        st = self._st
        loop, fd = st.loop, st.reader_fd
        st.loop, st.reader_fd = None, -1
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            loop.remove_reader(fd)
            return
        done = threading.Event()

        def remove():
            loop.remove_reader(fd)
            done.set()

        loop.call_soon_threadsafe(remove)
        done.wait(2.0)

    def _loop_for_async(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._st.poll_mode and self._st.loop is not loop:
            self.attach(loop)
        return loop

    # ---- gateway connections

    def send(self, conn: int, data: "str | bytes") -> None:
        """Sends a message to gateway connection `conn` (str: text, bytes: binary).
        NotFoundError when the connection is unknown or closed. Any thread."""
        b, text = bytes_arg(data)
        check(lib.sot_conn_send(self._h(), conn, b, len(b), int(text)))

    def close_connection(self, conn: int, code: int = 1000, reason: str | None = None) -> None:
        """Starts the closing handshake of `conn`. NotFoundError, InvalidArgError."""
        check(lib.sot_conn_close(self._h(), conn, code, None if reason is None else reason.encode()))

    # ---- Kafka

    def _publish(self, channel, value, key, partition, headers, callback, loop):
        h = self._h()
        entry = Completion(self._st, "publish callback", callback, loop)
        vb, vl = _blob(value if value is not None else b"")
        kb, kl = _blob(key)
        harr, n, keep = _header_array(headers)
        rc = lib.sot_engine_publish(h, channel.encode(), partition, kb, kl, vb, vl, harr, n,
                                    _on_delivery, entry.id)
        if rc < 0:
            exc = error_for(rc)
            entry.release()
            raise exc
        del keep
        return entry.future

    def publish(self, channel: str, value: "bytes | str", *, key: "bytes | str | None" = None,
                partition: int = -1, headers=None,
                callback: Callable[["StreamOtterError | None", "Delivery | None"], None] | None = None,
                ) -> "concurrent.futures.Future[Delivery]":
        """Produces one record to `channel` (a Kafka topic) through the engine's producer;
        subscribers receive it like any other record. Returns a Future of the Delivery;
        `callback(err, delivery)` runs too (on the callback thread). Any thread."""
        return self._publish(channel, value, key, partition, headers, callback, None)

    def publish_async(self, channel: str, value: "bytes | str", *, key=None, partition: int = -1,
                      headers=None) -> "asyncio.Future[Delivery]":
        """publish() for asyncio: returns an awaitable Future bound to the running loop."""
        return self._publish(channel, value, key, partition, headers, None, self._loop_for_async())

    # ---- factories

    def client(self, url: str, conf: ConfLike = None, **kwargs) -> "Client":
        """A WebSocket client on this engine (see Client)."""
        from .client import Client

        return Client(self, url, conf, **kwargs)

    def consumer(self, conf: ConfLike = None, on_record=None) -> "Consumer":
        """A Kafka consumer on this engine (see Consumer)."""
        from .consumer import Consumer

        return Consumer(self, conf, on_record)

    def __repr__(self) -> str:
        if self.closed:
            return "<streamotter.Engine closed>"
        mode = "poll" if self._st.poll_mode else "thread"
        return f"<streamotter.Engine callbacks={mode} started={self._st.started}>"


def _on_readable(st: EngineState) -> None:
    """asyncio reader callback: runs a batch of waiting callbacks on the loop thread. The
    library signals the fd again when more remain, so the loop stays responsive."""
    n = st.poll_once(1024)
    if n is None:
        return
    if n < 0 and st.loop is not None:
        try:
            st.loop.remove_reader(st.reader_fd)
        except Exception:
            pass
        st.loop = None
