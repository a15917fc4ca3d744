// Type declarations for the StreamOtter Node.js binding (lib/index.js).
/// <reference types="node" />
import { EventEmitter } from 'node:events';

export type Conf = Record<string, string | number | boolean | undefined> | Map<string, unknown> | Array<[string, unknown]>;
export type Bytes = Buffer | Uint8Array | ArrayBuffer | string;
export type Headers = Record<string, Bytes | null> | Map<string, Bytes | null> | Array<[string, Bytes | null]>;
export type ClientState = 'connecting' | 'open' | 'waiting' | 'circuit_open' | 'closed';
export type StartPosition = 'latest' | 'earliest' | { offsets: Record<number, number> } | { timestamp: number } | Date;

export interface Delivery {
  topic: string;
  partition: number;
  offset: number;
}

export interface Ack {
  partition: number;
  offset: number;
}

export interface Message {
  channel: string;
  partition: number;
  offset: number;
  /** ms since the epoch, -1 when unknown */
  timestamp: number;
  key: string | null;
  /** the value parsed from `json` (undefined when the value is not JSON) */
  data: unknown;
  json: string | null;
  /** the whole streamotter.v1 "message" frame */
  frame: string;
}

export interface KafkaRecord {
  topic: string;
  partition: number;
  offset: number;
  timestamp: number;
  key: Buffer | null;
  value: Buffer | null;
  headers: Array<{ name: string; value: Buffer | null }>;
}

export interface Health {
  state: ClientState;
  score: number;
  rttMs: number;
  missedPongs: number;
  consecutiveFailures: number;
  reconnects: number;
}

export interface EngineStats {
  posted: number;
  dispatched: number;
  dropped: number;
  backlog: number;
}

export class StreamOtterError extends Error {
  constructor(message: string | undefined, code: number, extra?: object);
  /** the library's numeric status (negative) */
  code: number;
  /** sot_err_name(code), e.g. "SOT_ERR_CONFIG" */
  codeName: string;
  /** the gateway's or client's word for request and connection errors ("closed", ...) */
  reason?: string;
}

export class CallbackError extends Error {
  cause: unknown;
  source: 'engine' | 'client' | 'subscription' | 'consumer';
  event: string;
}

export const errors: {
  StreamOtterError: typeof StreamOtterError;
  CallbackError: typeof CallbackError;
  InvalidArgError: typeof StreamOtterError;
  ConfigError: typeof StreamOtterError;
  StateError: typeof StreamOtterError;
  KafkaError: typeof StreamOtterError;
  IoError: typeof StreamOtterError;
  NomemError: typeof StreamOtterError;
  InternalError: typeof StreamOtterError;
  NotFoundError: typeof StreamOtterError;
  InCallbackError: typeof StreamOtterError;
  BadHandleError: typeof StreamOtterError;
  RefusedError: typeof StreamOtterError;
  [name: string]: typeof StreamOtterError | typeof CallbackError;
};
export const codes: Record<string, number>;

export interface AuthRequest {
  id: number;
  path: string;
  headers: Record<string, string>;
  rawHeaders: string[];
  peerAddress: string;
  tlsSubject: string | null;
}

export type AuthAnswer =
  | boolean
  | { allow: true; subject?: string; roles?: string[] | string; expiresAt?: number | Date }
  | { allow: false; status?: number; reason?: string };

export class Engine extends EventEmitter {
  constructor(conf?: Conf);
  setAuthHandler(handler: ((request: AuthRequest) => AuthAnswer | Promise<AuthAnswer>) | null): this;
  readonly state: 'new' | 'running' | 'stopping' | 'stopped';
  readonly port: number | null;
  readonly bootstrapServers: string | null;
  start(): this;
  stop(): Promise<void>;
  ref(): this;
  unref(): this;
  send(connId: number, data: Bytes, opts?: { text?: boolean }): boolean;
  closeConnection(connId: number, code?: number, reason?: string): void;
  publish(channel: string, value: unknown, opts?: { key?: Bytes | null; partition?: number; headers?: Headers | null }): Promise<Delivery>;
  client(url: string, conf?: Conf): Client;
  consumer(conf: Conf, onRecord: (record: KafkaRecord) => void): Consumer;
  consumer(onRecord: (record: KafkaRecord) => void): Consumer;
  stats(): EngineStats;

  on(event: 'connect', listener: (connId: number, path: string, headers: Record<string, string>, rawHeaders: string[]) => void): this;
  on(event: 'message', listener: (connId: number, data: string | Buffer, isText: boolean) => void): this;
  on(event: 'close', listener: (connId: number, code: number, reason: string) => void): this;
  on(event: 'audit', listener: (event: { event: string; [field: string]: unknown }) => void): this;
  on(event: 'error', listener: (err: CallbackError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export class Client extends EventEmitter {
  readonly url: string;
  readonly protocol: string | null;
  readonly state: ClientState;
  readonly isOpen: boolean;
  lastError: StreamOtterError | null;
  health(): Health;
  publish(channel: string, data: unknown, opts?: { key?: string | null; raw?: boolean }): Promise<Ack>;
  subscribe(channel: string, opts: { from?: StartPosition }, onMessage: (message: Message) => void): Promise<Subscription>;
  subscribe(channel: string, onMessage: (message: Message) => void): Promise<Subscription>;
  unsubscribe(channel: string): Promise<void>;
  send(data: Bytes, opts?: { text?: boolean }): void;
  close(code?: number, reason?: string): Promise<void>;

  on(event: 'open', listener: (subprotocol: string | null) => void): this;
  on(event: 'close', listener: (code: number, reason: string) => void): this;
  on(event: 'error', listener: (err: StreamOtterError) => void): this;
  on(event: 'message', listener: (data: string | Buffer, isText: boolean) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export class Subscription {
  readonly client: Client;
  readonly channel: string;
  unsubscribe(): Promise<void>;
}

export class Consumer {
  subscribe(topics: string | string[]): this;
  assign(topic: string, partition: number, offset?: number | 'beginning' | 'end' | 'stored'): this;
  seek(topic: string, partition: number, offset: number | 'beginning' | 'end' | 'stored'): Promise<void>;
  seekTime(topic: string, time: number | Date): Promise<void>;
  commit(): Promise<void>;
  close(): Promise<void>;
}

export const OFFSET_BEGINNING: number;
export const OFFSET_END: number;
export const OFFSET_STORED: number;
export const version: string;
export const versionNumber: number;
export const runtimeInfo: string;
export const libraryPath: string;
export const deepbind: boolean;
