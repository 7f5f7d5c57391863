/**
 * `RelayClient`: one connection to the relay, kept up by the SDK, with the
 * subscriptions, cursors and outbox that make the relay's guarantees hold
 * on the client: each message handed to the app once, in order, across
 * reconnects and node changes; each publish stored once.
 *
 * The connection state machine: `connecting` -> `connected` (the relay's
 * `welcome` arrived) -> `disconnected` (with the close code and reason) ->
 * `connecting` again after a full-jitter backoff (or the `delay_ms` of a
 * `reconnect` frame), until `close()` makes it `closed` for good.
 */

import { DEFAULT_BACKOFF, backoffDelay, type BackoffOptions } from "./backoff.js";
import { RoomContinuity } from "./continuity.js";
import { compareIds } from "./ids.js";
import { MemoryCursors, type CursorStore } from "./cursors.js";
import { RelayError } from "./errors.js";
import { parseServerFrame, type AckFrame, type ClientFrame, type ErrorFrame, type Message, type SignalFrame } from "./frames.js";
import { PresenceSet, type PresenceInfo } from "./presence.js";
import { DEFAULT_MAX_OUTBOX, MemoryOutbox, Outbox, newCmid, type OutboxStore, type Pending } from "./outbox.js";

/** What the SDK needs of a WebSocket: the browser API, which `ws` also offers. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onopen: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onerror: ((event: any) => void) | null;
}

/** A WebSocket constructor: the global one, or `ws`'s in Node.js. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";

/** Why the state changed. */
export interface StateDetail {
  /**
   * `connecting`: `connect` or `reconnect`; `connected`: `welcome`;
   * `disconnected`: the WebSocket close code (1006 for an abnormal closure,
   * 4002 when the network went away, 4003 for a dead connection) or the SDK's
   * own word (`token_failed`, `open_failed`); `closed`: 1000.
   */
  code: number | string;
  /** For humans. */
  reason: string;
  /** Reconnect attempts since the last connection (`connecting`, `disconnected`). */
  attempt?: number;
  /** How long the SDK waits before the next attempt (`disconnected`). */
  delayMs?: number;
  /** The relay node serving the connection (`connected`). */
  node?: string;
}

/** A token, or a function that gets a fresh one (called on every connect, on 4001 and before `exp`). */
export type TokenSource = string | (() => string | Promise<string>);

export interface RelayClientOptions {
  /** `ws(s)://host:port/v1/ws`; the history endpoint's base is derived from it. */
  url: string;
  token?: TokenSource;
  /** Where the last delivered id of each room is kept (default: memory). */
  cursors?: CursorStore;
  /** Where unacked publishes wait (default: memory). */
  outbox?: OutboxStore;
  /** Full-jitter backoff bounds (default 500 ms to 20 s). */
  backoff?: BackoffOptions;
  /** For Node.js without a global WebSocket: `ws`'s constructor. */
  WebSocket?: WebSocketConstructor;
  /** The relay's ping interval (`RELAY_PING_SECS`, default 25 s): silence past twice this plus a margin is a dead connection. */
  pingIntervalMs?: number;
  /** Most publishes waiting for an ack (default 1,000); beyond it `publish` rejects with `outbox_full`. */
  maxOutbox?: number;
  /** Base of the HTTP endpoints, when it cannot be derived from `url`. */
  httpUrl?: string;
  /** `fetch` for the history endpoint (default: the global one). */
  fetch?: typeof fetch;
}

/** What `onSubscribed` is told after each (re)subscribe. */
export interface SubscribedInfo {
  /** Present when the subscribe resumed from a cursor: whether the relay had everything since. */
  recovered?: boolean;
  /** History messages that follow before live ones. */
  replay: number;
}

/** Messages were lost for good between `after` and `next`. */
export interface GapInfo {
  after: string;
  next?: string;
  /** Whether the SDK refilled from history part of the missing range (the rest is gone). */
  refilled: boolean;
}

export interface SubscribeOptions {
  /** Resume after this id (default: the cursor store's id for the room). */
  since?: string;
  /** Without a cursor: first deliver the last N messages. */
  last?: number;
  /** Join the room's presence and keep its member set current (`onPresence`). */
  presence?: boolean;
  /** The room's presence: a snapshot after every (re)subscribe, then each batch of changes (at most one a second). */
  onPresence?(presence: PresenceInfo): void;
  /** Signals (typing, read markers) sent to the room while subscribed; live only, never replayed. */
  onSignal?(signal: SignalFrame): void;
  /** Each message once, in order, across reconnects. */
  onMessage?(message: Message): void;
  onSubscribed?(info: SubscribedInfo): void;
  onGap?(info: GapInfo): void;
  /** The subscription failed for good (`forbidden`, `invalid_room`, ...). */
  onError?(error: RelayError): void;
}

/** What `publish` resolves to: the relay's `ack`. */
export interface PublishAck {
  id: string;
  prev: string;
  /** The `cmid` had been stored already: `id` is the original's. */
  duplicate: boolean;
}

export interface PublishOptions {
  /** The idempotency key (default: a random one, kept for every resend). */
  cmid?: string;
}

export interface HistoryQuery {
  after?: string;
  before?: string;
  limit?: number;
}

export interface HistoryPage {
  messages: Message[];
  /** Continuity from `after` (or up to `before`) was verified by the relay. */
  complete: boolean;
  /** The page stopped at the relay's byte budget before `limit`: more follow right after it (before it, with `before`). */
  more: boolean;
}

type Events = {
  state: (state: ConnectionState, detail: StateDetail) => void;
  error: (error: RelayError) => void;
};

/** A room subscription; `unsubscribe()` ends it. */
export class Subscription {
  constructor(
    readonly room: string,
    private readonly leave: (subscription: Subscription) => void,
  ) {}

  unsubscribe(): void {
    this.leave(this);
  }
}

interface RoomState {
  handle: Subscription;
  options: SubscribeOptions;
  /** Kept when the subscription asked for presence. */
  presence: PresenceSet | undefined;
  continuity: RoomContinuity;
  /** Resolved once the cursor store was read. */
  cursorLoaded: Promise<void>;
  /** Bumped whenever a refill under way must be forgotten. */
  epoch: number;
}

const OPEN = 1;
/** Largest signal body, as JSON bytes (presence.md). */
const MAX_SIGNAL_BYTES = 1024;
/** Close codes that mean the client sent something it should not have. */
const CLIENT_BUG_CLOSES = new Set([1003, 1008, 1009]);
/** How long a connection may take from the first byte to `welcome`. */
const CONNECT_TIMEOUT_MS = 10_000;

export class RelayClient {
  private readonly options: RelayClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly cursors: CursorStore;
  private readonly outboxStore: OutboxStore;
  private readonly outbox: Outbox<PublishAck>;
  private readonly listeners: { [K in keyof Events]: Set<Events[K]> } = { state: new Set(), error: new Set() };
  private readonly rooms = new Map<string, RoomState>();
  private readonly pingIntervalMs: number;
  private readonly httpBase: string;
  private state: ConnectionState = "disconnected";
  private socket: WebSocketLike | undefined;
  /** Bumped for every socket; events of an older one are ignored. */
  private generation = 0;
  private attempt = 0;
  private closed = false;
  /** Subscribes of this connection are out: publishes may follow them. */
  private ready = false;
  private reconnectHintMs: number | undefined;
  private token: string | undefined;
  private lastReceivedAt = 0;
  private pingSentAt: number | undefined;
  private probeDeadline: number | undefined;
  private maxReplay = 1000;
  private nextReq = 0;
  private readonly subscribeReqs = new Map<string, string>();
  private timers: { reconnect?: ReturnType<typeof setTimeout>; liveness?: ReturnType<typeof setTimeout>; retry?: ReturnType<typeof setTimeout>; refresh?: ReturnType<typeof setTimeout> } = {};
  private readonly detachBrowserHooks: () => void;

  constructor(options: RelayClientOptions) {
    this.options = options;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.WS = WS ?? (class Missing {
      constructor() {
        throw new TypeError("no WebSocket: pass one as the WebSocket option (in Node.js 20: the `ws` package's)");
      }
    } as unknown as WebSocketConstructor);
    this.cursors = options.cursors ?? new MemoryCursors();
    this.outboxStore = options.outbox ?? new MemoryOutbox();
    this.outbox = new Outbox<PublishAck>(options.maxOutbox ?? DEFAULT_MAX_OUTBOX);
    this.pingIntervalMs = options.pingIntervalMs ?? 25_000;
    this.httpBase = options.httpUrl ?? httpBaseOf(options.url);
    this.detachBrowserHooks = this.attachBrowserHooks();
    // After the constructor, so a listener attached right after sees the first `connecting`.
    setTimeout(() => void this.start(), 0);
  }

  /** The connection's state now. */
  get connectionState(): ConnectionState {
    return this.state;
  }

  /** Listens to `state` or `error`; returns a function that stops listening. */
  on<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    this.listeners[event].add(listener);
    return () => this.off(event, listener);
  }

  off<K extends keyof Events>(event: K, listener: Events[K]): void {
    this.listeners[event].delete(listener);
  }

  /**
   * Subscribes to a room (one subscription per room), restored on every
   * reconnect with `since` = the last id handed to `onMessage`.
   */
  subscribe(room: string, options: SubscribeOptions = {}): Subscription {
    const existing = this.rooms.get(room);
    if (existing !== undefined) {
      this.emitError(new RelayError("already_subscribed", `already subscribed to ${room}; unsubscribe the first subscription, or keep using it`, { room }));
      return existing.handle;
    }
    const handle = new Subscription(room, (subscription) => this.leave(subscription));
    const continuity = new RoomContinuity(options.since);
    const presence = options.presence === true ? new PresenceSet() : undefined;
    const state: RoomState = { handle, options, presence, continuity, cursorLoaded: Promise.resolve(), epoch: 0 };
    if (options.since === undefined) {
      state.cursorLoaded = Promise.resolve()
        .then(() => this.cursors.get(room))
        .then(
          (id) => {
            if (id !== undefined && id !== null && continuity.last === undefined) continuity.last = id;
          },
          (error: unknown) => this.emitError(new RelayError("internal", `the cursor store failed to read ${room}: ${String(error)}`, { room })),
        );
    }
    this.rooms.set(room, state);
    if (this.ready) void this.sendSubscribe(state);
    return handle;
  }

  /**
   * Publishes `body` to `room`; resolves with the relay's ack once it is
   * stored. Waits while disconnected and is resent with the same `cmid`
   * after any reconnect until acked.
   */
  publish(room: string, body: unknown, options: PublishOptions = {}): Promise<PublishAck> {
    return new Promise<PublishAck>((resolve, reject) => {
      if (this.closed) {
        reject(new RelayError("closed", "this client was closed; make a new RelayClient to publish", { room }));
        return;
      }
      const cmid = options.cmid ?? newCmid();
      const entry: Pending<PublishAck> = { cmid, room, body, req: undefined, notBefore: 0, settle: { resolve, reject } };
      if (!this.outbox.add(entry)) {
        reject(new RelayError("outbox_full", `${this.outbox.capacity} publishes are waiting for the relay already (maxOutbox); wait for some to be acknowledged`, { room }));
        return;
      }
      void Promise.resolve()
        .then(() => this.outboxStore.add({ cmid, room, body }))
        .catch(() => undefined);
      this.flush();
    });
  }

  /**
   * Sends a signal (typing, a read marker) to the room's live subscribers.
   * Signals are never stored or retried: `false` when there is no
   * connection now (send a fresh one later if it still matters). A refusal
   * by the relay (`rate_limited`, `forbidden`) arrives as an `error` event.
   * Throws a `too_large` RelayError for a body over 1 KiB as JSON.
   */
  signal(room: string, body: unknown): boolean {
    const size = new TextEncoder().encode(JSON.stringify(body) ?? "null").length;
    if (size > MAX_SIGNAL_BYTES) {
      throw new RelayError("too_large", `the signal body is ${size} bytes as JSON; signals are at most ${MAX_SIGNAL_BYTES}: send less, or publish a message`, { room });
    }
    if (this.closed || this.socket === undefined || !this.ready) return false;
    this.send({ type: "signal", room, body, req: this.req("g") });
    return true;
  }

  /** A page of a room's presence members over HTTP, sorted; `next` is the `after` of the next page (null on the last). */
  async presenceMembers(room: string, query: { after?: string; limit?: number } = {}): Promise<{ count: number; members: string[]; next: string | null }> {
    const params = new URLSearchParams();
    if (query.after !== undefined) params.set("after", query.after);
    if (query.limit !== undefined) params.set("limit", String(query.limit));
    const search = params.toString();
    return await this.getJson(`/v1/rooms/${encodeURIComponent(room)}/presence${search === "" ? "" : `?${search}`}`, room);
  }

  /** A page of a room's history over HTTP, oldest first. */
  async history(room: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    const params = new URLSearchParams();
    if (query.after !== undefined) params.set("after", query.after);
    if (query.before !== undefined) params.set("before", query.before);
    if (query.limit !== undefined) params.set("limit", String(query.limit));
    const search = params.toString();
    const path = `/v1/rooms/${encodeURIComponent(room)}/messages${search === "" ? "" : `?${search}`}`;
    const page = await this.getJson<{ messages?: unknown; complete?: unknown; more?: unknown }>(path, room);
    if (!Array.isArray(page.messages) || typeof page.complete !== "boolean") {
      throw new RelayError("http_failed", `the answer to ${path} is not a page of messages`, { room });
    }
    return { messages: page.messages as Message[], complete: page.complete, more: page.more === true };
  }

  /** GETs a relay endpoint with the current token; a relay error body becomes its RelayError. */
  private async getJson<T>(path: string, room: string): Promise<T> {
    const fetcher = this.options.fetch ?? (globalThis as { fetch?: typeof fetch }).fetch;
    if (fetcher === undefined) throw new RelayError("http_failed", "no fetch: pass one as the fetch option");
    const headers: Record<string, string> = {};
    const token = this.token ?? (typeof this.options.token === "string" ? this.options.token : undefined);
    if (token !== undefined) headers["authorization"] = `Bearer ${token}`;
    const url = `${this.httpBase}${path}`;
    let response: Response;
    try {
      response = await fetcher(url, { headers });
    } catch (error) {
      throw new RelayError("http_failed", `request to ${url} failed: ${String(error)}`, { room });
    }
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (!response.ok) {
      const error = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
      throw new RelayError(error?.code ?? "http_failed", error?.message ?? `request to ${url} failed with HTTP ${response.status}`, { room });
    }
    if (typeof parsed !== "object" || parsed === null) {
      throw new RelayError("http_failed", `the answer from ${url} is not a JSON object`, { room });
    }
    return parsed as T;
  }

  /** Ends the connection and every reconnect; publishes not yet acked reject with `closed`. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.detachBrowserHooks();
    for (const timer of Object.values(this.timers)) if (timer !== undefined) clearTimeout(timer);
    this.timers = {};
    this.dropSocket(1000, "closed by the app");
    for (const entry of this.outbox.drain()) {
      entry.settle?.reject(new RelayError("closed", "the client was closed before the relay acknowledged this publish", { room: entry.room }));
    }
    this.setState("closed", { code: 1000, reason: "closed by the app" });
  }

  // ----- connection -------------------------------------------------------

  private async start(): Promise<void> {
    if (this.closed) return;
    try {
      const saved = await this.outboxStore.load();
      const known = new Set<string>();
      // Publishes made before the store was read are already in the outbox.
      for (const entry of saved) {
        if (known.has(entry.cmid)) continue;
        known.add(entry.cmid);
        this.outbox.add({ ...entry, req: undefined, notBefore: 0, settle: undefined });
      }
    } catch (error) {
      this.emitError(new RelayError("internal", `the outbox store failed to load: ${String(error)}`));
    }
    void this.open();
  }

  private async open(): Promise<void> {
    if (this.closed) return;
    this.setState(
      "connecting",
      this.attempt === 0
        ? { code: "connect", reason: "opening the connection", attempt: 0 }
        : { code: "reconnect", reason: "opening a new connection after a loss", attempt: this.attempt },
    );
    let token: string | undefined;
    try {
      token = await this.currentToken();
    } catch (error) {
      this.emitError(new RelayError("token_failed", `the token function failed: ${String(error)}; retrying`));
      this.scheduleReconnect(undefined, "token_failed", "the token function failed");
      return;
    }
    if (this.closed) return;
    this.token = token;
    let socket: WebSocketLike;
    try {
      socket = new this.WS(withToken(this.options.url, token));
    } catch (error) {
      this.emitError(new RelayError("internal", `cannot open a WebSocket to ${this.options.url}: ${String(error)}`));
      this.scheduleReconnect(undefined, "open_failed", String(error));
      return;
    }
    const generation = ++this.generation;
    this.socket = socket;
    this.ready = false;
    this.lastReceivedAt = Date.now();
    this.pingSentAt = undefined;
    this.probeDeadline = Date.now() + CONNECT_TIMEOUT_MS;
    socket.onmessage = (event: { data: unknown }) => {
      if (generation !== this.generation) return;
      this.lastReceivedAt = Date.now();
      this.pingSentAt = undefined;
      if (this.state === "connected") this.probeDeadline = undefined;
      if (typeof event.data === "string") this.receive(event.data);
    };
    socket.onclose = (event: { code?: number; reason?: string }) => {
      if (generation !== this.generation) return;
      this.lost(event.code ?? 1006, event.reason || "the connection closed");
    };
    socket.onerror = () => {
      // A close event follows; it carries what there is to say.
    };
    this.scheduleLiveness();
  }

  /** Drops the socket without waiting for its close event. */
  private dropSocket(code: number, reason: string): void {
    const socket = this.socket;
    this.socket = undefined;
    this.generation += 1;
    this.ready = false;
    if (this.timers.liveness !== undefined) clearTimeout(this.timers.liveness);
    if (socket !== undefined) {
      socket.onmessage = null;
      socket.onclose = null;
      try {
        // A reason past 123 bytes makes browsers throw and keep the socket
        // open; the reason is the app's (state detail), not the relay's.
        socket.close(code, reason.length <= 100 ? reason : undefined);
      } catch {
        // Already closing.
      }
    }
  }

  /** The connection is gone: report it, forget what was in flight, schedule the next attempt. */
  private lost(code: number, reason: string): void {
    this.dropSocket(1000, reason);
    this.outbox.connectionLost();
    this.subscribeReqs.clear();
    for (const room of this.rooms.values()) {
      room.continuity.reset();
      room.epoch += 1;
    }
    if (this.timers.refresh !== undefined) clearTimeout(this.timers.refresh);
    if (this.closed) return;
    if (CLIENT_BUG_CLOSES.has(code)) {
      this.emitError(new RelayError("protocol_violation", `the relay closed the connection with ${code} (${reason}): the client sent something it should not; reconnecting`, { closeCode: code }));
    }
    const hint = this.reconnectHintMs;
    this.reconnectHintMs = undefined;
    this.scheduleReconnect(hint, code, reason);
  }

  private scheduleReconnect(hintMs: number | undefined, code: number | string, reason: string): void {
    if (this.closed) return;
    const delayMs =
      hintMs !== undefined
        ? hintMs + Math.floor(Math.random() * Math.min(1000, Math.max(100, hintMs / 10)))
        : backoffDelay(this.attempt, this.options.backoff ?? DEFAULT_BACKOFF);
    this.attempt += 1;
    this.setState("disconnected", { code, reason, attempt: this.attempt, delayMs });
    if (this.timers.reconnect !== undefined) clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => {
      this.timers.reconnect = undefined;
      void this.open();
    }, delayMs);
  }

  /** Drops the connection now and connects again at once (the network came back). */
  private reconnectNow(reason: string): void {
    if (this.closed) return;
    if (this.timers.reconnect !== undefined) clearTimeout(this.timers.reconnect);
    this.timers.reconnect = undefined;
    if (this.socket !== undefined) {
      this.lost(4002, reason);
      if (this.timers.reconnect !== undefined) clearTimeout(this.timers.reconnect);
      this.timers.reconnect = undefined;
    }
    this.attempt = 0;
    void this.open();
  }

  /** Checks that the relay still speaks: a JSON ping when idle; silence past the limit is a dead connection. */
  private scheduleLiveness(): void {
    if (this.timers.liveness !== undefined) clearTimeout(this.timers.liveness);
    const every = Math.max(100, Math.min(5000, Math.floor(this.pingIntervalMs / 5)));
    this.timers.liveness = setTimeout(() => {
      this.timers.liveness = undefined;
      if (this.socket === undefined || this.closed) return;
      const now = Date.now();
      const idle = now - this.lastReceivedAt;
      const margin = Math.min(10_000, Math.max(1000, this.pingIntervalMs / 2));
      if (idle > 2 * this.pingIntervalMs + margin || (this.probeDeadline !== undefined && now > this.probeDeadline)) {
        this.lost(4003, `nothing received for ${idle} ms: the connection is dead`);
        return;
      }
      if (this.state === "connected" && idle >= this.pingIntervalMs && this.pingSentAt === undefined) {
        this.pingSentAt = now;
        this.send({ type: "ping", req: this.req("k") });
      }
      this.scheduleLiveness();
    }, every);
  }

  private attachBrowserHooks(): () => void {
    const target = globalThis as { addEventListener?: (name: string, listener: () => void) => void; removeEventListener?: (name: string, listener: () => void) => void; document?: { visibilityState?: string; addEventListener?: (name: string, listener: () => void) => void; removeEventListener?: (name: string, listener: () => void) => void } };
    if (typeof target.addEventListener !== "function" || target.document === undefined) return () => undefined;
    const online = () => this.reconnectNow("the network came back");
    const offline = () => {
      if (this.socket !== undefined) this.lost(4002, "the network went away");
    };
    const visible = () => {
      if (target.document?.visibilityState !== "visible" || this.closed) return;
      if (this.socket === undefined) {
        this.reconnectNow("the page became visible");
      } else if (this.state === "connected") {
        // A phone may have slept with a dead socket: ask, and give it a few seconds.
        this.probeDeadline = Date.now() + 5000;
        this.send({ type: "ping", req: this.req("k") });
      }
    };
    target.addEventListener("online", online);
    target.addEventListener("offline", offline);
    target.document.addEventListener?.("visibilitychange", visible);
    return () => {
      target.removeEventListener?.("online", online);
      target.removeEventListener?.("offline", offline);
      target.document?.removeEventListener?.("visibilitychange", visible);
    };
  }

  private async currentToken(): Promise<string | undefined> {
    const source = this.options.token;
    if (source === undefined || typeof source === "string") return source;
    return await source();
  }

  // ----- frames -----------------------------------------------------------

  private receive(text: string): void {
    const frame = parseServerFrame(text);
    if (frame === undefined) return;
    switch (frame.type) {
      case "welcome":
        this.attempt = 0;
        this.probeDeadline = undefined;
        this.maxReplay = Math.max(1, frame.limits?.max_replay ?? 1000);
        this.setState("connected", { code: "welcome", reason: `the relay node ${frame.node} said welcome`, node: frame.node });
        this.scheduleRefresh();
        void this.resubscribeThenFlush(this.generation);
        return;
      case "message":
        this.onRoomMessage(frame);
        return;
      case "subscribed": {
        const room = this.rooms.get(frame.room);
        if (room === undefined) return;
        // A room without a cursor takes the subscription's position as its
        // cursor at once: a reconnect before its first message resumes
        // exactly, and a `last: N` replay chains from it.
        if (room.continuity.last === undefined && typeof frame.position === "string") {
          room.continuity.last = frame.position;
          this.storeCursor(frame.room, frame.position);
        }
        this.callSafely(() => room.options.onSubscribed?.({ ...(frame.recovered === undefined ? {} : { recovered: frame.recovered }), replay: frame.replay }));
        const snapshot = frame.presence;
        if (room.presence !== undefined && snapshot !== undefined) {
          const info = room.presence.reset(snapshot);
          this.callSafely(() => room.options.onPresence?.(info));
        }
        return;
      }
      case "presence": {
        const room = this.rooms.get(frame.room);
        if (room?.presence === undefined) return;
        const info = room.presence.apply(frame);
        this.callSafely(() => room.options.onPresence?.(info));
        return;
      }
      case "signal": {
        const room = this.rooms.get(frame.room);
        if (room !== undefined) this.callSafely(() => room.options.onSignal?.(frame));
        return;
      }
      case "ack":
        this.onAck(frame);
        return;
      case "error":
        this.onError(frame);
        return;
      case "reconnect":
        this.reconnectHintMs = Math.max(0, frame.delay_ms);
        return;
      case "refreshed":
        if (typeof frame.exp === "number") this.scheduleRefresh(frame.exp);
        return;
      default:
        // gap frames are seen by the continuity check itself: the next
        // message does not chain. unsubscribed and pong need nothing.
        return;
    }
  }

  private async resubscribeThenFlush(generation: number): Promise<void> {
    for (const room of [...this.rooms.values()]) {
      await this.sendSubscribe(room);
      if (generation !== this.generation) return;
    }
    this.ready = true;
    this.flush();
  }

  private async sendSubscribe(room: RoomState): Promise<void> {
    await room.cursorLoaded;
    if (this.socket === undefined || this.rooms.get(room.handle.room) !== room) return;
    const req = this.req("s");
    this.subscribeReqs.set(req, room.handle.room);
    const since = room.continuity.last;
    const frame: ClientFrame = { type: "subscribe", room: room.handle.room, req };
    if (since !== undefined) frame.since = since;
    else if (room.options.last !== undefined) frame.last = room.options.last;
    if (room.presence !== undefined) frame.presence = true;
    this.send(frame);
  }

  private leave(subscription: Subscription): void {
    const room = this.rooms.get(subscription.room);
    if (room === undefined || room.handle !== subscription) return;
    this.rooms.delete(subscription.room);
    room.epoch += 1;
    if (this.socket !== undefined) this.send({ type: "unsubscribe", room: subscription.room, req: this.req("u") });
  }

  private onRoomMessage(message: Message): void {
    const room = this.rooms.get(message.room);
    if (room === undefined) return;
    const verdict = room.continuity.accept(message);
    if (verdict.kind === "deliver") this.deliver(room, message);
    else if (verdict.kind === "refill") void this.refill(room, verdict.after, verdict.until);
  }

  /** Hands a message to the app, then records it as the room's cursor (this is the hot path). */
  private deliver(room: RoomState, message: Message): void {
    const onMessage = room.options.onMessage;
    if (onMessage !== undefined) {
      try {
        onMessage(message);
      } catch (error) {
        rethrowLater(error);
      }
    }
    this.storeCursor(message.room, message.id);
  }

  /** Writes a room's cursor; a failing store is reported, never thrown. */
  private storeCursor(room: string, id: string): void {
    let written: void | Promise<void>;
    try {
      written = this.cursors.set(room, id);
    } catch (error) {
      this.cursorFailed(room, error);
      return;
    }
    if (written !== undefined) written.catch((error: unknown) => this.cursorFailed(room, error));
  }

  private cursorFailed(room: string, error: unknown): void {
    this.emitError(new RelayError("internal", `the cursor store failed to write ${room}: ${String(error)}`, { room }));
  }

  /** Reads the missing range `(after, until)` from history, then delivers it and what was held. */
  private async refill(room: RoomState, after: string, until: string): Promise<void> {
    const epoch = room.epoch;
    const fetched: Message[] = [];
    let cursor = after;
    let failures = 0;
    for (;;) {
      let page: HistoryPage;
      try {
        page = await this.history(room.handle.room, { after: cursor, limit: this.maxReplay });
      } catch (error) {
        if (room.epoch !== epoch || this.closed) return;
        failures += 1;
        if (failures === 3) this.emitError(error instanceof RelayError ? error : new RelayError("http_failed", String(error)));
        await sleep(backoffDelay(Math.min(failures, 5), { minMs: 200, maxMs: 5000 }) + 50);
        if (room.epoch !== epoch || this.closed) return;
        continue;
      }
      if (room.epoch !== epoch) return;
      let reached = false;
      for (const message of page.messages) {
        if (compareIds(message.id, until) >= 0) {
          reached = true;
          break;
        }
        fetched.push(message);
        cursor = message.id;
      }
      // A page ends early at the relay's byte budget (`more`): read on.
      if (reached || (page.messages.length < this.maxReplay && !page.more) || page.messages.length === 0) break;
    }
    const outcome = room.continuity.finishRefill(fetched);
    if (outcome.loss !== undefined) {
      const loss = outcome.loss;
      this.callSafely(() => room.options.onGap?.({ after: loss.after, next: loss.next, refilled: loss.refilled }));
    }
    for (const message of outcome.deliver) this.deliver(room, message);
    if (outcome.again !== undefined) void this.refill(room, outcome.again.after, outcome.again.until);
  }

  private flush(): void {
    if (!this.ready || this.socket === undefined) return;
    const now = Date.now();
    for (const entry of this.outbox.sendable(now)) {
      this.send({ type: "publish", room: entry.room, body: entry.body, cmid: entry.cmid, req: entry.req ?? "" });
    }
    const next = this.outbox.nextRetryAt(now);
    if (this.timers.retry !== undefined) clearTimeout(this.timers.retry);
    this.timers.retry = undefined;
    if (next !== undefined) {
      this.timers.retry = setTimeout(() => {
        this.timers.retry = undefined;
        this.flush();
      }, next - now);
    }
  }

  private onAck(frame: AckFrame): void {
    const entry = this.outbox.byReq(frame.req);
    if (entry === undefined) return;
    this.outbox.remove(entry);
    void Promise.resolve()
      .then(() => this.outboxStore.remove(entry.cmid))
      .catch(() => undefined);
    entry.settle?.resolve({ id: frame.id, prev: frame.prev, duplicate: frame.duplicate });
  }

  private onError(frame: ErrorFrame): void {
    const entry = this.outbox.byReq(frame.req);
    if (entry !== undefined) {
      if (frame.code === "rate_limited" || frame.code === "unavailable") {
        // `unavailable` with stored "unknown" may have been stored: the
        // same cmid tells, so it is retried and never reported as failed.
        this.outbox.retryLater(entry, Date.now(), frame.retry_after_ms ?? 1000);
        this.flush();
        return;
      }
      this.outbox.remove(entry);
      void Promise.resolve()
        .then(() => this.outboxStore.remove(entry.cmid))
        .catch(() => undefined);
      entry.settle?.reject(new RelayError(frame.code, frame.message, { room: entry.room }));
      return;
    }
    const subscribedRoom = typeof frame.req === "string" ? this.subscribeReqs.get(frame.req) : undefined;
    const roomName = subscribedRoom ?? (frame.code === "forbidden" ? frame.room : undefined);
    const room = roomName === undefined ? undefined : this.rooms.get(roomName);
    if (room !== undefined) {
      if (frame.code === "unavailable" && subscribedRoom !== undefined) {
        // The store could not be read: subscribe again shortly.
        setTimeout(() => {
          if (this.rooms.get(room.handle.room) === room && this.ready) void this.sendSubscribe(room);
        }, frame.retry_after_ms ?? 1000);
        return;
      }
      this.rooms.delete(room.handle.room);
      room.epoch += 1;
      const error = new RelayError(frame.code, frame.message, { room: room.handle.room });
      this.callSafely(() => room.options.onError?.(error));
      this.emitError(error);
      return;
    }
    this.emitError(new RelayError(frame.code, frame.message, frame.room === undefined ? {} : { room: frame.room }));
  }

  /** Before the token's `exp`, a fresh one from the token function is sent as `refresh`. */
  private scheduleRefresh(exp?: number): void {
    if (this.timers.refresh !== undefined) clearTimeout(this.timers.refresh);
    this.timers.refresh = undefined;
    if (typeof this.options.token !== "function") return;
    const expiresAt = (exp ?? expiryOf(this.token)) ?? undefined;
    if (expiresAt === undefined) return;
    const left = expiresAt * 1000 - Date.now();
    const wait = Math.max(1000, left - Math.min(60_000, Math.max(2000, left / 5)));
    this.timers.refresh = setTimeout(() => {
      this.timers.refresh = undefined;
      void (async () => {
        let token: string | undefined;
        try {
          token = await this.currentToken();
        } catch (error) {
          this.emitError(new RelayError("token_failed", `the token function failed before expiry: ${String(error)}`));
          return;
        }
        if (token === undefined || this.socket === undefined) return;
        this.token = token;
        this.send({ type: "refresh", token, req: this.req("r") });
      })();
    }, wait);
  }

  // ----- helpers ----------------------------------------------------------

  private send(frame: ClientFrame): void {
    const socket = this.socket;
    if (socket === undefined || socket.readyState !== OPEN) return;
    try {
      socket.send(JSON.stringify(frame));
    } catch {
      // The close event follows.
    }
  }

  private req(prefix: string): string {
    this.nextReq += 1;
    return `${prefix}${this.nextReq}`;
  }

  private setState(state: ConnectionState, detail: StateDetail): void {
    this.state = state;
    for (const listener of [...this.listeners.state]) this.callSafely(() => listener(state, detail));
  }

  private emitError(error: RelayError): void {
    for (const listener of [...this.listeners.error]) this.callSafely(() => listener(error));
  }

  /** Runs an app callback; what it throws never breaks the SDK's own work. */
  private callSafely(callback: () => void): void {
    try {
      callback();
    } catch (error) {
      rethrowLater(error);
    }
  }
}

/** What an app callback threw surfaces as an uncaught error, outside the SDK's stack. */
function rethrowLater(error: unknown): void {
  setTimeout(() => {
    throw error;
  }, 0);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `http(s)://host/base` of the HTTP endpoints, from the WebSocket URL. */
export function httpBaseOf(url: string): string {
  const parsed = new URL(url);
  const protocol = parsed.protocol === "wss:" ? "https:" : parsed.protocol === "ws:" ? "http:" : parsed.protocol;
  const path = parsed.pathname.replace(/\/v1\/ws\/?$/, "").replace(/\/$/, "");
  return `${protocol}//${parsed.host}${path}`;
}

function withToken(url: string, token: string | undefined): string {
  if (token === undefined) return url;
  const parsed = new URL(url);
  parsed.searchParams.set("access_token", token);
  return parsed.toString();
}

/** A JWT's `exp` (seconds), read without verifying it. */
function expiryOf(token: string | undefined): number | undefined {
  const payload = token?.split(".")[1];
  if (payload === undefined) return undefined;
  try {
    const json = JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "="))) as { exp?: unknown };
    return typeof json.exp === "number" ? json.exp : undefined;
  } catch {
    return undefined;
  }
}
