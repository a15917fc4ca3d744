'use strict';
// StreamOtter for Node.js: EventEmitters and Promises over the N-API addon
// (src/addon.c), which dlopen()s libstreamotter.so.0. See README.md for the design.

const { EventEmitter } = require('node:events');
const path = require('node:path');

function loadAddon() {
  const candidates = [
    process.env.STREAMOTTER_ADDON,
    path.join(__dirname, '..', 'build', 'streamotter.node'), // make node-addon
    path.join(__dirname, '..', 'build', 'Release', 'streamotter.node'), // node-gyp / npm install
  ].filter(Boolean);
  const missing = [];
  for (const p of candidates) {
    try {
      return require(p);
    } catch (err) {
      // A file that exists but cannot load (libstreamotter not found, ...) is a real error.
      if (err.code === 'MODULE_NOT_FOUND' && String(err.message).includes(p)) {
        missing.push(p);
        continue;
      }
      throw err;
    }
  }
  throw new Error(
    `streamotter: the addon is not built (run \`make node-addon\` in the repository or ` +
      `\`npm install\` in bindings/node); looked for:\n  ${missing.join('\n  ')}`,
  );
}

const native = loadAddon();
const info = native.libraryInfo();

// ---------------------------------------------------------------------------------------
// Errors: one class per status code of the library's table (sot_err_count/sot_err_code_at).

/** Every error the library reports: `.code` is the numeric status (negative), `.codeName`
 *  its symbolic name from sot_err_name (e.g. "SOT_ERR_CONFIG"). Errors answered by the
 *  gateway or the client also carry `.reason`, the protocol's short word ("closed",
 *  "forbidden", "connect_failed", ...). */
class StreamOtterError extends Error {
  constructor(message, code, extra) {
    super(message || native.strerror(code));
    this.code = code;
    this.codeName = native.errName(code);
    if (extra) Object.assign(this, extra);
  }

  get name() {
    return this.constructor.name;
  }
}

function className(codeName) {
  // SOT_ERR_INVALID_ARG -> InvalidArgError, SOT_ERR_NOT_FOUND -> NotFoundError
  const words = codeName.replace(/^SOT_ERR_/, '').toLowerCase().split('_');
  return words.map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join('') + 'Error';
}

const errorsByCode = new Map();
const errors = { StreamOtterError };
const codes = {};
for (const s of info.statuses) {
  codes[s.name] = s.code;
  if (s.code >= 0) continue;
  const name = className(s.name);
  const cls = { [name]: class extends StreamOtterError {} }[name];
  errorsByCode.set(s.code, cls);
  errors[name] = cls;
}

function makeError(code, message, extra) {
  const cls = errorsByCode.get(code) || StreamOtterError;
  return new cls(message, code, extra);
}
native.setErrorFactory((code, message) => makeError(code, message));

const ERR = {
  INVALID_ARG: codes.SOT_ERR_INVALID_ARG,
  CONFIG: codes.SOT_ERR_CONFIG,
  STATE: codes.SOT_ERR_STATE,
  IO: codes.SOT_ERR_IO,
  NOT_FOUND: codes.SOT_ERR_NOT_FOUND,
  // Requests refused or cut short ("closed"): SOT_ERR_REFUSED where the library has it.
  REFUSED: codes.SOT_ERR_REFUSED !== undefined ? codes.SOT_ERR_REFUSED : codes.SOT_ERR_NOT_FOUND,
};

/** An exception thrown by user code (an event listener or a callback given to the
 *  binding) while the binding delivered an event. The binding catches it, reports it (see
 *  Engine 'error' / process warnings) and keeps delivering events. `.cause` is what was
 *  thrown; `.source` names the emitter ("engine", "client", "subscription", "consumer") and
 *  `.event` the event. */
class CallbackError extends Error {
  constructor(cause, source, event) {
    const what = cause instanceof Error ? cause.message : String(cause);
    super(`${source} '${event}' callback threw: ${what}`, { cause });
    this.source = source;
    this.event = event;
  }

  get name() {
    return 'CallbackError';
  }
}
errors.CallbackError = CallbackError;

// ---------------------------------------------------------------------------------------
// Helpers

const CLIENT_STATES = ['connecting', 'open', 'waiting', 'circuit_open', 'closed'];

const OFFSETS = {
  beginning: native.OFFSET_BEGINNING,
  end: native.OFFSET_END,
  stored: native.OFFSET_STORED,
};

function confPairs(conf) {
  if (conf == null) return [];
  const entries = conf instanceof Map ? [...conf] : Array.isArray(conf) ? conf : Object.entries(conf);
  const pairs = [];
  for (const [k, v] of entries) {
    if (v === undefined) continue;
    pairs.push([String(k), String(v)]);
  }
  return pairs;
}

function toBytes(v) {
  if (Buffer.isBuffer(v) || ArrayBuffer.isView(v)) return v;
  if (v instanceof ArrayBuffer) return Buffer.from(v);
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  const json = JSON.stringify(v);
  if (json === undefined) throw new TypeError('the value cannot be encoded (undefined or a function)');
  return Buffer.from(json, 'utf8');
}

function flatHeaders(headers) {
  if (headers == null) return null;
  const entries = headers instanceof Map ? [...headers] : Array.isArray(headers) ? headers : Object.entries(headers);
  const flat = [];
  for (const [name, value] of entries) flat.push(String(name), value == null ? null : toBytes(value));
  return flat;
}

function headerObject(flat) {
  const out = {};
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const k = flat[i].toLowerCase();
    out[k] = k in out ? `${out[k]}, ${flat[i + 1]}` : flat[i + 1];
  }
  return out;
}

function fromJSON(from) {
  if (from == null) return null;
  if (from instanceof Date) return JSON.stringify({ timestamp: from.getTime() });
  return JSON.stringify(from); // "latest", "earliest", {offsets: {...}}, {timestamp: ms}
}

function offsetOf(offset) {
  if (typeof offset === 'string') {
    if (!(offset in OFFSETS)) throw new TypeError(`offset must be a number or one of ${Object.keys(OFFSETS)}`);
    return OFFSETS[offset];
  }
  if (typeof offset === 'bigint') return Number(offset);
  return offset;
}

// ---------------------------------------------------------------------------------------
// Engine

const {
  EV_CONNECT, EV_SMESSAGE, EV_SCLOSE, EV_DELIVERY, EV_OPEN, EV_CMESSAGE, EV_CCLOSE, EV_CERROR,
  EV_ACK, EV_SUBMSG, EV_RESULT, EV_RECORD, EV_DONE, EV_STOPPED, EV_FLUSH, EV_AUTH, EV_AUDIT,
} = native;

/**
 * One StreamOtter engine: a libuv loop on its own thread running the WebSocket gateway,
 * its Kafka clients, WebSocket clients and consumers.
 *
 * Events (server side, mode=gateway):
 *   'connect' (connId, path, headers, rawHeaders)
 *   'message' (connId, data, isText)   data: string for text, Buffer for binary
 *   'close'   (connId, code, reason)
 *   'audit'   (event)                   security audit events (auth_success, denied, ...)
 *   'error'   (CallbackError)           an exception thrown by one of your callbacks
 */
class Engine extends EventEmitter {
  constructor(conf = {}) {
    super();
    const pairs = confPairs(conf);
    for (const [k, v] of pairs) {
      if (k === 'callbacks' && v !== 'thread') {
        throw makeError(
          ERR.CONFIG,
          "'callbacks' must be 'thread' in the Node binding (events reach JavaScript through a napi_threadsafe_function)",
        );
      }
    }
    this._h = native.engineNew(pairs);
    this._state = 'new';
    this._nextId = 1;
    this._pending = new Map(); // request id -> { resolve, reject, owner }
    this._subs = new Map(); // subscription id -> Subscription
    this._clients = new Map(); // client id -> Client
    this._consumers = new Map(); // consumer id -> Consumer
    this._port = null;
    this._bootstrap = null;
    this._refed = true;
    this._stopping = null;
    this._dispatchFn = null;
    this._auth = null;
    this.on('newListener', (event) => {
      if (event === 'message') native.engineWantMessages(this._h, true);
      if (event === 'audit') native.engineWantAudit(this._h, true);
    });
    this.on('removeListener', (event) => {
      if (event === 'message' && this.listenerCount('message') === 0) native.engineWantMessages(this._h, false);
      if (event === 'audit' && this.listenerCount('audit') === 0) native.engineWantAudit(this._h, false);
    });
  }

  /** Decides every WebSocket upgrade before the 101 is sent (before start()).
   *  handler({id, path, headers, rawHeaders, peerAddress, tlsSubject}) returns, or resolves
   *  with: true | {allow: true, subject, roles (array or "a,b"), expiresAt (ms or Date;
   *  the connection is closed then)} to accept; false | {allow: false, status (400-599,
   *  default 401), reason} to refuse. A handler that throws (or rejects, or answers
   *  something else) is reported like any callback exception and the upgrade is refused
   *  with 500. Answers after "ws.handshake_timeout_ms" are too late (the client got 408). */
  setAuthHandler(handler) {
    if (this._state !== 'new') throw makeError(ERR.STATE, 'set the auth handler before start()');
    if (handler !== null && typeof handler !== 'function') throw new TypeError('the auth handler must be a function or null');
    if (handler && !info.hasAuth) throw makeError(ERR.STATE, 'authentication callbacks are not supported by this libstreamotter');
    this._auth = handler;
    return this;
  }

  /** 'new' | 'running' | 'stopping' | 'stopped' */
  get state() {
    return this._state;
  }

  /** The gateway's TCP port (port 0 resolved), null before start. */
  get port() {
    return this._port;
  }

  /** The Kafka bootstrap servers in use (the embedded cluster's when embedded). */
  get bootstrapServers() {
    return this._bootstrap;
  }

  /** Starts Kafka clients, binds the listen address and starts the engine thread. */
  start() {
    if (this._state !== 'new') throw makeError(ERR.STATE, `the engine is ${this._state}`);
    this._dispatchFn = (kind, id, a, b, c, d, e, f, g) => this._dispatch(kind, id, a, b, c, d, e, f, g);
    native.engineStart(this._h, this._dispatchFn, this._auth !== null);
    this._state = 'running';
    const i = native.engineInfo(this._h);
    this._port = i.port;
    this._bootstrap = i.bootstrapServers;
    if (!this._refed) native.engineRef(this._h, false);
    return this;
  }

  /** Graceful stop: consumers close, then the engine stops accepting, answers what Kafka
   *  already has, closes every WebSocket with 1001 and flushes. Resolves once every event
   *  of the engine was delivered; afterwards nothing of the engine keeps the process alive.
   *  Calling it again returns the same promise. */
  stop() {
    if (!this._stopping) this._stopping = this._stop();
    return this._stopping;
  }

  async _stop() {
    if (this._state === 'new') {
      this._state = 'stopped';
      native.engineDestroy(this._h);
      return;
    }
    if (this._state !== 'running') return;
    this._state = 'stopping';
    // Consumers close first (their blocking calls must not race the engine's own close),
    // and clients already closing finish their close.
    await Promise.allSettled([...this._consumers.values()].map((k) => k.close()));
    await Promise.allSettled([...this._clients.values()].filter((c) => c._closing).map((c) => c._closing));
    await new Promise((resolve, reject) => {
      const id = this._newId();
      this._pending.set(id, { resolve, reject, owner: null });
      native.engineStop(this._h, id);
    });
  }

  /** Like net.Server: an unref'd running engine does not keep the process alive. */
  unref() {
    this._refed = false;
    if (this._state === 'running' || this._state === 'stopping') native.engineRef(this._h, false);
    return this;
  }

  ref() {
    this._refed = true;
    if (this._state === 'running' || this._state === 'stopping') native.engineRef(this._h, true);
    return this;
  }

  /** Queues `data` to gateway connection `connId`: a string goes as a text message, a
   *  Buffer/Uint8Array as binary (or as text with {text: true}). Returns true when queued
   *  within the connection's buffer bound, false when queued over it; throws NotFoundError
   *  for an unknown or closed connection. */
  send(connId, data, { text } = {}) {
    const isText = text !== undefined ? !!text : typeof data === 'string';
    return native.connSend(this._h, connId, toBytes(data), isText) === 0;
  }

  /** Starts the closing handshake of a gateway connection. */
  closeConnection(connId, code = 1000, reason = '') {
    native.connClose(this._h, connId, code, reason);
  }

  /** Produces one record to `channel` (a Kafka topic) through the engine's producer.
   *  `value`: Buffer/Uint8Array/string as bytes, anything else as its JSON text.
   *  Resolves with {topic, partition, offset} once Kafka acknowledged it. */
  publish(channel, value, { key = null, partition = -1, headers = null } = {}) {
    return new Promise((resolve, reject) => {
      const id = this._newId();
      this._pending.set(id, { resolve, reject, owner: null });
      try {
        native.enginePublish(this._h, channel, partition, key == null ? null : toBytes(key), toBytes(value),
          flatHeaders(headers), id);
      } catch (err) {
        this._pending.delete(id);
        reject(err);
      }
    });
  }

  /** A WebSocket client (streamotter.v1, reconnecting) on this engine's loop, connecting
   *  right away. `conf`: client.*, reconnect.*, circuit.* keys. */
  client(url, conf = {}) {
    if (this._state !== 'running') throw makeError(ERR.STATE, `the engine is ${this._state}`);
    const id = this._newId();
    const c = new Client(this, id, url, conf);
    this._clients.set(id, c);
    try {
      native.clientStart(c._h);
    } catch (err) {
      this._clients.delete(id);
      native.clientDestroy(c._h);
      c._destroyed = true;
      throw err;
    }
    return c;
  }

  /** A Kafka consumer whose records arrive as onRecord(record) calls. `conf`: kafka.* keys
   *  (kafka.group.id for group consumption). */
  consumer(conf, onRecord) {
    if (typeof conf === 'function') [conf, onRecord] = [{}, conf];
    if (typeof onRecord !== 'function') throw new TypeError('consumer(conf, onRecord): onRecord must be a function');
    if (this._state !== 'running') throw makeError(ERR.STATE, `the engine is ${this._state}`);
    const id = this._newId();
    const k = new Consumer(this, id, conf, onRecord);
    this._consumers.set(id, k);
    return k;
  }

  /** Counters of the event bridge: events posted by the engine thread, dispatched to
   *  JavaScript, dropped (out of memory only), and the backlog still queued between the
   *  two (the queue is unbounded: listeners slower than the engine make it grow). */
  stats() {
    const s = native.engineStats(this._h);
    s.backlog = s.posted - s.dispatched;
    return s;
  }

  // -- internals ----------------------------------------------------------------------

  _newId() {
    return this._nextId++;
  }

  _take(id) {
    const p = this._pending.get(id);
    if (p) {
      this._pending.delete(id);
      if (p.owner) p.owner._pendingIds.delete(id);
    }
    return p;
  }

  /** Resolves once every event queued before this call was dispatched. */
  _flush() {
    return new Promise((resolve) => {
      const id = this._newId();
      this._pending.set(id, { resolve, reject: resolve, owner: null });
      if (!native.flush(this._h, id)) {
        this._pending.delete(id);
        resolve();
      }
    });
  }

  /** Calls every listener of `event` on `target`; one that throws is reported and the
   *  others still run. */
  _emitSafe(target, source, event, args) {
    const listeners = target.rawListeners(event);
    for (let i = 0; i < listeners.length; i++) {
      try {
        listeners[i].apply(target, args);
      } catch (err) {
        this._callbackError(err, source, event);
      }
    }
  }

  _callSafe(fn, thisArg, arg, source, event) {
    try {
      fn.call(thisArg, arg);
    } catch (err) {
      this._callbackError(err, source, event);
    }
  }

  /** An exception in user code: an 'error' event on the engine when it has 'error'
   *  listeners, else a process warning. The engine keeps running either way. */
  _callbackError(err, source, event) {
    const e = new CallbackError(err, source, event);
    if (this.listenerCount('error') > 0 && !(source === 'engine' && event === 'error')) {
      try {
        this.emit('error', e);
        return;
      } catch (err2) {
        process.emitWarning(new CallbackError(err2, 'engine', 'error'));
      }
    }
    process.emitWarning(e);
  }

  _dispatch(kind, id, a, b, c, d, e, f, g) {
    switch (kind) {
      case EV_SUBMSG: {
        const sub = this._subs.get(id);
        if (sub) {
          let data;
          if (f !== null) {
            try {
              data = JSON.parse(f);
            } catch {
              data = undefined;
            }
          }
          const msg = { channel: a, partition: b, offset: c, timestamp: d, key: e, data, json: f, frame: g };
          this._callSafe(sub._onMessage, sub, msg, 'subscription', 'message');
        }
        return;
      }
      case EV_ACK: {
        const p = this._take(id);
        if (!p) return;
        if (a === 0) p.resolve({ partition: d, offset: e });
        else p.reject(makeError(a, c || b, { reason: b }));
        return;
      }
      case EV_CMESSAGE: {
        const cl = this._clients.get(id);
        if (cl) this._emitSafe(cl, 'client', 'message', [a, b !== 0]);
        return;
      }
      case EV_SMESSAGE:
        this._emitSafe(this, 'engine', 'message', [a, b, c !== 0]);
        return;
      case EV_CONNECT:
        this._emitSafe(this, 'engine', 'connect', [a, b, headerObject(c), c]);
        return;
      case EV_SCLOSE:
        this._emitSafe(this, 'engine', 'close', [a, b, c]);
        return;
      case EV_DELIVERY: {
        const p = this._take(id);
        if (!p) return;
        if (a === 0) p.resolve({ topic: c, partition: d, offset: e });
        else p.reject(makeError(a, b, { topic: c }));
        return;
      }
      case EV_OPEN: {
        const cl = this._clients.get(id);
        if (cl) cl._onOpen(a);
        return;
      }
      case EV_CCLOSE: {
        const cl = this._clients.get(id);
        if (cl) cl._onClose(a, b);
        return;
      }
      case EV_CERROR: {
        const cl = this._clients.get(id);
        if (cl) cl._onError(a, b);
        return;
      }
      case EV_RESULT: {
        const p = this._take(id);
        if (p) {
          // unsubscribe
          if (a === 0) p.resolve();
          else p.reject(makeError(a, c || b, { reason: b }));
          return;
        }
        const sub = this._subs.get(id);
        if (sub) sub._onResult(a, b, c);
        return;
      }
      case EV_RECORD: {
        const k = this._consumers.get(id);
        if (!k) return;
        const headers = [];
        for (let i = 0; i + 1 < g.length; i += 2) headers.push({ name: g[i], value: g[i + 1] });
        const rec = { topic: a, partition: b, offset: c, timestamp: d, key: e, value: f, headers };
        this._callSafe(k._onRecord, k, rec, 'consumer', 'record');
        return;
      }
      case EV_DONE:
      case EV_FLUSH: {
        const p = this._take(id);
        if (!p) return;
        if (kind === EV_FLUSH || a >= 0) p.resolve(a);
        else p.reject(makeError(a, b));
        return;
      }
      case EV_AUTH:
        this._onAuth(id, a, b, c, d);
        return;
      case EV_AUDIT: {
        let event;
        try {
          event = JSON.parse(a);
        } catch {
          event = { event: 'unparsed', json: a };
        }
        this._emitSafe(this, 'engine', 'audit', [event]);
        return;
      }
      case EV_STOPPED: {
        const p = this._take(id);
        this._finish();
        if (p) {
          if (a >= 0) p.resolve();
          else p.reject(makeError(a, b));
        }
        return;
      }
      default:
        return;
    }
  }

  _onAuth(request, path, peerAddress, tlsSubject, flat) {
    const req = { id: request, path, headers: headerObject(flat), rawHeaders: flat, peerAddress, tlsSubject };
    let answer;
    try {
      answer = this._auth(req);
    } catch (err) {
      this._authFailed(request, err);
      return;
    }
    if (answer && typeof answer.then === 'function') {
      answer.then((a) => this._authAnswer(request, a), (err) => this._authFailed(request, err));
    } else {
      this._authAnswer(request, answer);
    }
  }

  _authFailed(request, err) {
    this._callbackError(err, 'engine', 'auth');
    if (this._state === 'running') native.authDeny(this._h, request, 500, 'authentication failed');
  }

  _authAnswer(request, a) {
    if (this._state !== 'running') return;
    try {
      if (a === true) {
        native.authAllow(this._h, request, null, null, 0);
      } else if (a === false || a == null) {
        native.authDeny(this._h, request, 401, 'unauthorized');
      } else if (typeof a === 'object' && a.allow === true) {
        const roles = Array.isArray(a.roles) ? a.roles.join(',') : a.roles == null ? null : String(a.roles);
        const exp = a.expiresAt instanceof Date ? a.expiresAt.getTime() : Number(a.expiresAt || 0);
        native.authAllow(this._h, request, a.subject == null ? null : String(a.subject), roles, exp);
      } else if (typeof a === 'object' && a.allow === false) {
        native.authDeny(this._h, request, a.status || 401, a.reason == null ? null : String(a.reason));
      } else {
        throw new TypeError('the auth handler must answer true, false, {allow: true, ...} or {allow: false, ...}');
      }
    } catch (err) {
      this._authFailed(request, err);
    }
  }

  /** After sot_engine_stop returned and every event before it was dispatched: destroy the
   *  native engine (releasing the thread-safe function) and settle what is left. */
  _finish() {
    native.engineDestroy(this._h);
    this._state = 'stopped';
    for (const cl of [...this._clients.values()]) cl._finish('the engine stopped');
    for (const k of [...this._consumers.values()]) k._closed = true;
    this._consumers.clear();
    for (const [id, p] of [...this._pending]) {
      this._pending.delete(id);
      p.reject(makeError(ERR.STATE, 'the engine stopped', { reason: 'closed' }));
    }
    this._subs.clear();
  }
}

if (Symbol.asyncDispose) {
  Engine.prototype[Symbol.asyncDispose] = function dispose() {
    return this.stop();
  };
}

// ---------------------------------------------------------------------------------------
// Client

/**
 * A WebSocket client (streamotter.v1) living on an engine's loop. It reconnects by
 * itself (exponential backoff with full jitter, circuit breaker) and resubscribes.
 *
 * Events:
 *   'open'    (subprotocol)
 *   'close'   (code, reason)        one per 'open'
 *   'error'   (StreamOtterError)    connection failures, the circuit opening, gateway
 *                                   errors not tied to a request; `.reason` is the word
 *                                   ("connect_failed", "circuit_open", ...). Only emitted
 *                                   when listened to (the client keeps reconnecting).
 *   'message' (data, isText)        every raw message the server sends (only delivered
 *                                   while a listener is attached)
 */
class Client extends EventEmitter {
  constructor(engine, id, url, conf) {
    super();
    this._engine = engine;
    this._id = id;
    this.url = url;
    this.protocol = null;
    this._open = false;
    this._closing = null;
    this._closeWaiters = [];
    this._destroyed = false;
    this._pendingIds = new Set();
    this._subs = new Map(); // subscription id -> Subscription
    this.lastError = null;
    this._h = native.clientNew(engine._h, url, confPairs(conf), id);
    this.on('newListener', (event) => {
      if (event === 'message') native.clientWantRaw(this._h, true);
    });
    this.on('removeListener', (event) => {
      if (event === 'message' && this.listenerCount('message') === 0) native.clientWantRaw(this._h, false);
    });
  }

  /** 'connecting' | 'open' | 'waiting' | 'circuit_open' | 'closed' */
  get state() {
    return this.health().state;
  }

  get isOpen() {
    return this._open;
  }

  /** {state, score (0..100), rttMs, missedPongs, consecutiveFailures, reconnects} */
  health() {
    if (this._destroyed) {
      return { state: 'closed', score: 0, rttMs: 0, missedPongs: 0, consecutiveFailures: 0, reconnects: 0 };
    }
    const h = native.clientHealth(this._h);
    h.state = CLIENT_STATES[h.state] || String(h.state);
    return h;
  }

  /** Publishes `data` (any JSON value; with {raw: true} a string of JSON text) to
   *  `channel`. Resolves with {partition, offset} once Kafka acknowledged it; rejects with
   *  `.reason` "closed" if the client closes first. */
  publish(channel, data, { key = null, raw = false } = {}) {
    const json = raw ? String(data) : JSON.stringify(data);
    if (json === undefined) return Promise.reject(new TypeError('publish: data cannot be encoded as JSON'));
    return this._request((id) => native.clientPublish(this._h, channel, key == null ? null : String(key), json, id));
  }

  /** Subscribes to `channel` from `opts.from` ("latest" (default), "earliest",
   *  {offsets: {partition: offset}}, {timestamp: ms} or a Date). onMessage(message) runs
   *  for every message until unsubscribe/close, with message = {channel, partition, offset,
   *  timestamp, key, data (parsed JSON), json (its text), frame}. Resolves with a
   *  Subscription when the gateway accepted it. */
  subscribe(channel, opts, onMessage) {
    if (typeof opts === 'function') [opts, onMessage] = [{}, opts];
    if (typeof onMessage !== 'function') {
      return Promise.reject(new TypeError('subscribe(channel, [opts], onMessage): onMessage must be a function'));
    }
    if (this._destroyed || this._closing) return Promise.reject(makeError(ERR.STATE, 'the client is closed'));
    return new Promise((resolve, reject) => {
      const eng = this._engine;
      const id = eng._newId();
      const sub = new Subscription(this, id, channel, onMessage, resolve, reject);
      let from;
      try {
        from = fromJSON(opts && opts.from);
      } catch (err) {
        reject(err);
        return;
      }
      eng._subs.set(id, sub);
      this._subs.set(id, sub);
      try {
        native.clientSubscribe(this._h, channel, from, id);
      } catch (err) {
        eng._subs.delete(id);
        this._subs.delete(id);
        reject(err);
      }
    });
  }

  /** Ends the subscriptions of `channel`: their onMessage is not called again once this
   *  returns. Resolves with the gateway's answer. */
  unsubscribe(channel) {
    for (const [id, sub] of this._subs) {
      if (sub.channel === channel) {
        this._subs.delete(id);
        this._engine._subs.delete(id);
        sub._settle(null);
      }
    }
    return this._request((id) => native.clientUnsubscribe(this._h, channel, id));
  }

  /** Sends a raw message on the current connection (dropped while disconnected). */
  send(data, { text } = {}) {
    if (this._destroyed) throw makeError(ERR.STATE, 'the client is closed');
    const isText = text !== undefined ? !!text : typeof data === 'string';
    native.clientSend(this._h, toBytes(data), isText);
  }

  /** Closes for good (no reconnect) with `code` and `reason`; pending publishes and
   *  subscriptions are answered with "closed". Resolves when the client is closed and
   *  freed and every event of it was delivered. */
  close(code = 1000, reason = '') {
    if (this._closing) return this._closing;
    const eng = this._engine;
    if (!this._destroyed && eng._state === 'running') {
      try {
        native.clientClose(this._h, code, reason);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    this._closing = this._closeRest();
    return this._closing;
  }

  async _closeRest() {
    const eng = this._engine;
    if (!this._destroyed && eng._state === 'running') {
      if (this._open) await this._waitClosed(3000);
      native.clientDestroy(this._h);
      await eng._flush();
      this._finish('the client was closed');
    } else if (eng._state === 'stopping') {
      await eng._stopping;
    }
  }

  _waitClosed(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(t);
        const i = self._closeWaiters.indexOf(done);
        if (i >= 0) self._closeWaiters.splice(i, 1);
        resolve();
      }
      this._closeWaiters.push(done);
    });
  }

  _request(call) {
    return new Promise((resolve, reject) => {
      if (this._destroyed || this._closing) {
        reject(makeError(ERR.STATE, 'the client is closed', { reason: 'closed' }));
        return;
      }
      const eng = this._engine;
      const id = eng._newId();
      eng._pending.set(id, { resolve, reject, owner: this });
      this._pendingIds.add(id);
      try {
        call(id);
      } catch (err) {
        eng._pending.delete(id);
        this._pendingIds.delete(id);
        reject(err);
      }
    });
  }

  _onOpen(subprotocol) {
    this._open = true;
    this.protocol = subprotocol;
    this._engine._emitSafe(this, 'client', 'open', [subprotocol]);
  }

  _onClose(code, reason) {
    if (!this._open) return;
    this._open = false;
    for (const w of [...this._closeWaiters]) w();
    this._engine._emitSafe(this, 'client', 'close', [code, reason]);
  }

  _onError(word, message) {
    const err = makeError(ERR.IO, message || word, { reason: word });
    this.lastError = err;
    if (this.listenerCount('error') > 0) this._engine._emitSafe(this, 'client', 'error', [err]);
  }

  /** The native client is gone: settle everything still waiting. */
  _finish(why) {
    if (this._finished) return;
    this._finished = true;
    this._destroyed = true;
    const eng = this._engine;
    eng._clients.delete(this._id);
    for (const id of [...this._pendingIds]) {
      const p = eng._take(id);
      if (p) p.reject(makeError(ERR.REFUSED, why, { reason: 'closed' }));
    }
    for (const [id, sub] of this._subs) {
      eng._subs.delete(id);
      sub._settle(makeError(ERR.REFUSED, why, { reason: 'closed' }));
    }
    this._subs.clear();
    if (this._open) this._onClose(1006, why); // keep 'open' and 'close' paired
    for (const w of [...this._closeWaiters]) w();
  }
}

/** One subscription of a client; `unsubscribe()` ends it. */
class Subscription {
  constructor(client, id, channel, onMessage, resolve, reject) {
    this.client = client;
    this.channel = channel;
    this._id = id;
    this._onMessage = onMessage;
    this._resolve = resolve;
    this._reject = reject;
  }

  unsubscribe() {
    return this.client.unsubscribe(this.channel);
  }

  _settle(err) {
    const { _resolve: resolve, _reject: reject } = this;
    this._resolve = this._reject = null;
    if (!resolve) return;
    if (err) reject(err);
    else resolve(this);
  }

  _onResult(status, word, message) {
    if (status === 0) {
      this._settle(null);
      return;
    }
    const err = makeError(status, message || word, { reason: word });
    this.client._subs.delete(this._id);
    this.client._engine._subs.delete(this._id);
    if (this._resolve) this._settle(err);
    else this.client._onError(word, message);
  }
}

// ---------------------------------------------------------------------------------------
// Consumer

/** A Kafka consumer on an engine. Records arrive as onRecord({topic, partition, offset,
 *  timestamp, key, value, headers}) with Buffers (or null) for key, value and header
 *  values. Blocking operations (seek, seekTime, commit, close) run on libuv's thread pool,
 *  one at a time per consumer, and return Promises. */
class Consumer {
  constructor(engine, id, conf, onRecord) {
    this._engine = engine;
    this._id = id;
    this._onRecord = onRecord;
    this._closed = false;
    this._closing = null;
    this._chain = Promise.resolve();
    this._h = native.consumerNew(engine._h, confPairs(conf), id);
  }

  /** Joins the consumer group (kafka.group.id) for these topics. */
  subscribe(topics) {
    this._check();
    native.consumerSubscribe(this._h, Array.isArray(topics) ? topics : [topics]);
    return this;
  }

  /** Adds topic/partition to the assignment, starting at `offset` (a number, or
   *  "beginning" | "end" | "stored"). */
  assign(topic, partition, offset = 'stored') {
    this._check();
    native.consumerAssign(this._h, topic, partition, offsetOf(offset));
    return this;
  }

  /** Replays (or skips) an assigned partition from `offset`. */
  seek(topic, partition, offset) {
    return this._work('seek', topic, partition, offsetOf(offset));
  }

  /** Moves every assigned partition of `topic` to the first record at or after `time`
   *  (ms since the epoch or a Date). */
  seekTime(topic, time) {
    return this._work('seekTime', topic, 0, time instanceof Date ? time.getTime() : Number(time));
  }

  /** Commits the position of everything delivered so far. */
  commit() {
    return this._work('commit', null, 0, 0);
  }

  /** Leaves the group and frees the consumer; no record is delivered after it resolves. */
  close() {
    if (this._closing) return this._closing;
    if (this._closed) return Promise.resolve();
    this._closing = this._work('destroy', null, 0, 0, true).then(() => {
      this._closed = true;
      this._engine._consumers.delete(this._id);
    });
    return this._closing;
  }

  _check() {
    if (this._closed || this._closing) throw makeError(ERR.STATE, 'the consumer is closed');
  }

  _work(op, topic, partition, offset, closing = false) {
    const eng = this._engine;
    if (!closing && (this._closed || this._closing)) return Promise.reject(makeError(ERR.STATE, 'the consumer is closed'));
    const run = () =>
      new Promise((resolve, reject) => {
        if (this._closed) {
          reject(makeError(ERR.STATE, 'the consumer is closed'));
          return;
        }
        const id = eng._newId();
        eng._pending.set(id, { resolve, reject, owner: null });
        try {
          native.consumerWork(this._h, op, topic, partition, offset, id);
        } catch (err) {
          eng._pending.delete(id);
          reject(err);
        }
      });
    const p = this._chain.then(run, run);
    this._chain = p.catch(() => {});
    return p.then(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------

module.exports = {
  Engine,
  Client,
  Consumer,
  Subscription,
  StreamOtterError,
  CallbackError,
  errors,
  codes,
  OFFSET_BEGINNING: native.OFFSET_BEGINNING,
  OFFSET_END: native.OFFSET_END,
  OFFSET_STORED: native.OFFSET_STORED,
  /** The library's version ("0.1.0") and number ((major << 16) | (minor << 8) | patch). */
  version: info.version,
  versionNumber: info.versionNumber,
  /** The libuv, OpenSSL and librdkafka the engine actually runs on (sot_runtime_info). */
  runtimeInfo: info.runtimeInfo,
  /** The file the addon loaded libstreamotter from, and whether RTLD_DEEPBIND was used. */
  libraryPath: info.path,
  deepbind: info.deepbind,
};
