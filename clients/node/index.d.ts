// Type declarations of @bus/client (README.md here says what each call promises).
/// <reference types="node" />
import { EventEmitter } from 'node:events';
import * as protobuf from 'protobufjs';

export { protobuf };

/** The C++ client's bus::errc names, and this client's own unknown_type. */
export type ErrorCode =
  | 'no_responders' | 'timeout' | 'service_lost' | 'broker_unavailable' | 'expired'
  | 'no_such_client' | 'invalid_subject' | 'forbidden' | 'message_too_large'
  | 'fds_not_supported' | 'channel_closed' | 'request_failed' | 'bad_frame'
  | 'frame_too_large' | 'truncated_frame' | 'wrong_type' | 'bad_endpoint' | 'unknown_type';

export class BusError extends Error {
  code: ErrorCode;
  /** request_failed: the service's name for the error (an ERROR envelope's subject). */
  errorName?: string;
  /** The error's detail, as busd or the service gave it. */
  detail?: string;
  /** broker_unavailable in an 'error' event: how many messages could not be sent. */
  dropped?: number;
}

export type Headers = Record<string, string> | Map<string, string> | Array<[string, string]>;
/** Raw bytes, a UTF-8 string, a protobufjs message, or a plain object with `type`. */
export type Payload = Buffer | Uint8Array | string | protobuf.Message<object> | object | null | undefined;

export interface SendOptions {
  headers?: Headers;
  /** The protobuf type of a plain-object message: a full name (pkg.Msg) or a protobufjs Type. */
  type?: string | protobuf.Type;
}

export interface RequestOptions extends SendOptions {
  /** Milliseconds (default 5000); also the deadline busd enforces (deadline_unix_ns). */
  timeout?: number;
  signal?: AbortSignal;
}

export interface SubscribeOptions {
  /** A queue group: each message goes to one member of the group. */
  queue?: string;
  /** Unsubscribe after this many messages. */
  max?: number;
  /** Messages held for a reader that lags; beyond, dropped with a local slow_consumer event. */
  pending?: number;
  /** Called for each message instead of the async iterator. */
  callback?: (err: Error | null, msg: Msg) => void;
}

export interface ServeOptions {
  /** The type a handler's plain-object reply is encoded with. */
  type?: string | protobuf.Type;
  headers?: Headers;
}

export interface ConnectOptions {
  /** unix://PATH; default BUS_ENDPOINT, else unix://<runtime dir>/busd.sock. */
  endpoint?: string;
  /** Shown by `bus ls clients` (default: the script's file name). */
  name?: string;
  /** Milliseconds to wait for busd's welcome (default 5000). */
  timeout?: number;
  heartbeat?: number;
  reconnectMin?: number;
  reconnectMax?: number;
  /** Bytes of a frame's body (default 8 MiB, busd's default limits.max_message_size). */
  maxMessageSize?: number;
  /** Queued bytes past which publish() returns false (default 128 KiB). */
  highWaterMark?: number;
  pending?: number;
  /** Milliseconds close() waits for what is queued to be written (default 2000). */
  linger?: number;
  /** .proto files whose types this program sends and decodes (loaded with keepCase). */
  protos?: string | string[];
  includeDirs?: string[];
  /** protobufjs Roots to find types in. */
  root?: protobuf.Root | protobuf.Root[];
}

export class Msg {
  readonly subject: string;
  readonly data: Buffer;
  readonly typeUrl: string;
  /** The protobuf type's full name, '' for raw bytes. */
  readonly type: string;
  readonly headers: Map<string, string>;
  /** The sender's client id (stamped by busd). */
  readonly source: string;
  readonly id: number;
  readonly sid: number;
  readonly fdCount: number;
  string(): string;
  json(): any;
  /** Decoded through its type (this program's, else busd's registry), in the CLI's JSON shape. */
  decode(): Promise<any>;
}

export class Request extends Msg {
  readonly requester: string;
  /** When the requester stops waiting, ms since the epoch (0: not said). */
  readonly deadline: number;
  readonly answered: boolean;
  respond(message: Payload, options?: SendOptions): boolean;
  fail(name: string, detail?: string): boolean;
}

export class Subscription implements AsyncIterableIterator<Msg> {
  readonly sid: number;
  readonly pattern: string;
  readonly queue: string;
  readonly received: number;
  readonly dropped: number;
  /** Resolves when the subscription has ended. */
  readonly closed: Promise<void>;
  unsubscribe(): void;
  next(): Promise<IteratorResult<Msg>>;
  return(): Promise<IteratorResult<Msg>>;
  [Symbol.asyncIterator](): AsyncIterableIterator<Msg>;
}

export interface Service {
  readonly service: string;
  stop(): void;
}

export interface Types {
  add(rootOrFiles: protobuf.Root | string | string[], options?: { includeDirs?: string[] }): Types;
  find(name: string): protobuf.Type | null;
  resolve(name: string): Promise<protobuf.Type>;
}

export interface ConnectedInfo {
  endpoint: string;
  clientId: string;
  brokerId: string;
  version: string;
}

export interface SlowConsumerInfo {
  dropped: number;
  /** true: this client dropped for a subscription whose reader lags; false: busd dropped. */
  local: boolean;
  subscription?: Subscription;
}

export class Client extends EventEmitter {
  readonly endpoint: string;
  /** The id busd gave this client. */
  readonly id: string;
  readonly brokerId: string;
  readonly welcomed: boolean;
  readonly closed: boolean;
  readonly queuedBytes: number;
  readonly types: Types;

  publish(subject: string, message?: Payload, options?: SendOptions): boolean;
  subscribe(pattern: string, options?: SubscribeOptions): Subscription;
  request(service: string, message?: Payload, options?: RequestOptions): Promise<Msg>;
  serve(service: string, handler: (req: Request) => Payload | Promise<Payload>, options?: ServeOptions): Service;
  unserve(service: string): void;
  sendTo(clientId: string, message?: Payload, options?: SendOptions): boolean;
  flush(timeout?: number): Promise<void>;
  /** $sys.<what>: 'clients', 'subscriptions', 'services', 'stats', 'types', 'queues'. */
  sys(what: string, payload?: Payload): Promise<any>;
  drain(timeout?: number): Promise<void>;
  close(): Promise<void>;

  on(event: 'connected', listener: (info: ConnectedInfo) => void): this;
  on(event: 'disconnected', listener: (why: BusError | Error) => void): this;
  on(event: 'slow_consumer', listener: (info: SlowConsumerInfo) => void): this;
  on(event: 'error', listener: (error: BusError | Error) => void): this;
  on(event: 'direct', listener: (msg: Msg) => void): this;
  on(event: 'drain' | 'closed', listener: () => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export function connect(options?: ConnectOptions): Promise<Client>;
export function defaultEndpoint(): string;
