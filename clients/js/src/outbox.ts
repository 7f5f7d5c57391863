/**
 * The outbox: publishes that wait for their `ack`. Each has a `cmid`
 * generated once and reused for every resend, so the relay stores it once
 * however often it is sent. Bounded; pure bookkeeping (the client sends).
 */

/** A publish as the outbox store keeps it. */
export interface OutboxEntry {
  cmid: string;
  room: string;
  body: unknown;
}

/**
 * Where unacked publishes are kept. The default keeps them in memory; a
 * persistent store (IndexedDB, AsyncStorage) lets publishes made before a
 * restart be sent after it (their promises are gone with the old page;
 * they are simply delivered).
 */
export interface OutboxStore {
  load(): OutboxEntry[] | Promise<OutboxEntry[]>;
  add(entry: OutboxEntry): void | Promise<void>;
  remove(cmid: string): void | Promise<void>;
}

/** The default store: in memory. Shared between clients, it hands unacked publishes on. */
export class MemoryOutbox implements OutboxStore {
  private readonly entries = new Map<string, OutboxEntry>();

  load(): OutboxEntry[] {
    return [...this.entries.values()];
  }

  add(entry: OutboxEntry): void {
    this.entries.set(entry.cmid, entry);
  }

  remove(cmid: string): void {
    this.entries.delete(cmid);
  }
}

/** One publish waiting in the client, with its promise's ends. */
export interface Pending<T> extends OutboxEntry {
  /** The `req` of the frame that carries it now, while in flight. */
  req: string | undefined;
  /** Not to be sent before this time (ms, the client's clock). */
  notBefore: number;
  settle: { resolve(value: T): void; reject(error: Error): void } | undefined;
}

export const DEFAULT_MAX_OUTBOX = 1000;

/** A random `cmid`: 22 base64url characters (132 random bits). */
export function newCmid(): string {
  const bytes = new Uint8Array(22);
  const crypto = (globalThis as { crypto?: { getRandomValues(array: Uint8Array): Uint8Array } }).crypto;
  if (crypto !== undefined) {
    crypto.getRandomValues(bytes);
  } else {
    for (let index = 0; index < bytes.length; index += 1) bytes[index] = Math.floor(Math.random() * 256);
  }
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  let text = "";
  for (const byte of bytes) text += alphabet[byte & 63];
  return text;
}

/** Publishes in submission order; the client sends what `sendable` gives. */
export class Outbox<T> {
  private readonly queue: Pending<T>[] = [];
  private nextReq = 0;

  constructor(readonly capacity: number = DEFAULT_MAX_OUTBOX) {}

  get size(): number {
    return this.queue.length;
  }

  /** Adds a publish; `false` when the outbox is full (nothing added). */
  add(entry: Pending<T>): boolean {
    if (this.queue.length >= this.capacity) return false;
    this.queue.push(entry);
    return true;
  }

  /** Publishes ready to go (not in flight, not waiting for a retry time), in order; each gets a fresh `req`. */
  sendable(now: number): Pending<T>[] {
    const ready: Pending<T>[] = [];
    for (const entry of this.queue) {
      if (entry.req === undefined && entry.notBefore <= now) {
        this.nextReq += 1;
        entry.req = `p${this.nextReq}`;
        ready.push(entry);
      }
    }
    return ready;
  }

  /** The earliest retry time among waiting publishes, if any waits for one. */
  nextRetryAt(now: number): number | undefined {
    let earliest: number | undefined;
    for (const entry of this.queue) {
      if (entry.req === undefined && entry.notBefore > now) {
        earliest = earliest === undefined ? entry.notBefore : Math.min(earliest, entry.notBefore);
      }
    }
    return earliest;
  }

  /** The publish a reply's `req` belongs to. */
  byReq(req: unknown): Pending<T> | undefined {
    if (typeof req !== "string") return undefined;
    return this.queue.find((entry) => entry.req === req);
  }

  /** Takes a publish out (acked, or rejected for good). */
  remove(entry: Pending<T>): void {
    const index = this.queue.indexOf(entry);
    if (index >= 0) this.queue.splice(index, 1);
  }

  /** Puts a publish back to be sent again after `delayMs`, same `cmid`. */
  retryLater(entry: Pending<T>, now: number, delayMs: number): void {
    entry.req = undefined;
    entry.notBefore = now + Math.max(0, delayMs);
  }

  /** The connection went: every publish in flight is to be sent again. */
  connectionLost(): void {
    for (const entry of this.queue) entry.req = undefined;
  }

  /** Every publish, oldest first (to settle them at close). */
  drain(): Pending<T>[] {
    return this.queue.splice(0, this.queue.length);
  }
}
