/** Types of the gateway's JavaScript client (src/index.js). */

/** A WebSocket constructor: the browser's, or `ws` from npm in Node. */
export interface WebSocketLike {
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface BackoffOptions {
  /** First wait, ms (default 250). */
  initialMs?: number;
  /** Longest wait, ms (default 10000). */
  maxMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** Random source in [0, 1) (default Math.random). */
  random?: () => number;
}

export interface ClientOptions {
  /** `ws://host:8080/ws`; the token is added as the `token` query parameter. */
  url: string;
  /** A JWT, or a function returning one (called for every connection and on `refresh_due`). */
  token: string | (() => string | Promise<string>);
  /** WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** Time a request may wait for its reply, including while offline (default 10000). */
  requestTimeoutMs?: number;
  /** Time from opening a socket to the welcome (default 10000). */
  connectTimeoutMs?: number;
  /** App requests waiting or in flight; more are rejected with `queue_full` (default 1000). */
  maxQueuedRequests?: number;
  /** Subscriptions held at once (default 1000). */
  maxSubscriptions?: number;
  /** Recent positions kept per channel to drop duplicates (default 256). */
  dedupWindow?: number;
  /**
   * Frames sent per second at most, and the burst above it (defaults 40 and 80: below the
   * gateway's default `limits.client_frames_per_sec` 50 and `client_frames_burst` 100).
   */
  maxFramesPerSec?: number;
  framesBurst?: number;
  /** Failed attempts in a row before giving up (state `closed`); default Infinity. */
  maxReconnectAttempts?: number;
}

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed';

export interface Welcome {
  type: 'welcome';
  conn_id: string;
  user: string;
  shard: number;
  heartbeat_ms: number;
  expires: number;
  channels: string[];
}

export interface Message<T = unknown> {
  type: 'message';
  channel: string;
  id: string;
  event?: string;
  data: T;
  priority: number;
  ts: number;
  pos: string;
  from?: string;
}

export interface Presence {
  channel: string;
  users: number;
  conns: number;
  /** User id -> number of connections. */
  members: Record<string, number>;
  /** Present (true) when the member list was capped. */
  truncated?: boolean;
}

export interface PresenceStats {
  channel: string;
  users: number;
  conns: number;
}

export interface JoinLeave {
  channel: string;
  users: string[];
}

export interface Disconnected {
  code: number;
  reason: string;
  /** Null when the client gives up (maxReconnectAttempts). */
  reconnectInMs: number | null;
  wasConnected?: boolean;
}

export interface ClientEvents {
  state: { state: ConnectionState; previous: ConnectionState };
  connected: Welcome;
  disconnected: Disconnected;
  message: Message;
  gap: { channel: string; since: string };
  join: JoinLeave;
  leave: JoinLeave;
  unsubscribed: { channel: string; reason: string };
  refreshed: { expires: number };
  error: GatewayError;
}

export interface SubscriptionEvents {
  message: Message;
  subscribed: { recovered: boolean | undefined; resumed: boolean };
  gap: { since: string };
  join: JoinLeave;
  leave: JoinLeave;
  unsubscribed: { reason: string };
  error: GatewayError;
}

declare class Emitter<E> {
  on<K extends keyof E>(event: K, fn: (arg: E[K]) => void): () => void;
  once<K extends keyof E>(event: K, fn: (arg: E[K]) => void): () => void;
  off<K extends keyof E>(event: K, fn: (arg: E[K]) => void): void;
}

export interface SubscribeOptions {
  /** Only messages whose `data` has one of the listed values for every key. */
  filter?: Record<string, Array<string | number | boolean | null>>;
  /** Start from this `pos` (e.g. one the app stored). */
  since?: string;
  /** Receive `join` / `leave` frames (the channel needs presence enabled: `bad_request` otherwise). */
  joinLeave?: boolean;
}

export declare class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  readonly state: 'subscribing' | 'subscribed' | 'unsubscribed' | 'failed';
  /** Resolves on the first successful subscribe; rejects if it fails for good. */
  readonly ready: Promise<Subscription>;
  readonly lastPos: string | undefined;
  presence(): Promise<Presence>;
  presenceStats(): Promise<PresenceStats>;
  unsubscribe(): Promise<void>;
}

export interface ClientStats {
  connects: number;
  reconnects: number;
  /** Messages dropped because their `pos` had been delivered already. */
  duplicates: number;
  gaps: number;
  refreshes: number;
}

export declare class Client extends Emitter<ClientEvents> {
  constructor(opts: ClientOptions);
  readonly state: ConnectionState;
  readonly welcome: Welcome | null;
  readonly stats: ClientStats;
  connect(): this;
  ready(): Promise<Welcome>;
  close(): void;
  subscribe(channel: string, opts?: SubscribeOptions): Subscription;
  getSubscription(channel: string): Subscription | undefined;
  lastPos(channel: string): string | undefined;
  publish(
    channel: string,
    data: unknown,
    opts?: { event?: string; priority?: 1 | 2 | 3 | 4 },
  ): Promise<{ pos: string }>;
  presence(channel: string): Promise<Presence>;
  presenceStats(channel: string): Promise<PresenceStats>;
  ping(): Promise<unknown>;
}

export declare class GatewayError extends Error {
  constructor(code: string, message: string);
  readonly code: string;
}

export declare class Backoff {
  constructor(opts?: BackoffOptions);
  attempt: number;
  next(): number;
  reset(): void;
}
