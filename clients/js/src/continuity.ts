/**
 * Continuity of one room on the client: every message's `prev` is checked
 * against the last id handed to the app. Pure logic, no I/O: the client
 * does the history reads this asks for.
 *
 * - An id at or below the last delivered one is dropped (a replay after a
 *   reconnect, a resend): the app never sees a duplicate.
 * - A `prev` that is not the last delivered id is a break: the message is
 *   held, and the missing range is to be read from history
 *   (`GET /v1/rooms/{room}/messages?after=`); messages that arrive meanwhile
 *   are held too, in order.
 * - When the history is read, what it holds of the range is delivered,
 *   then what was held; where the chain still breaks, messages were lost
 *   for good and that is reported once.
 */

import { compareIds } from "./ids.js";
import type { Message } from "./frames.js";

/** What to do with an arriving message. */
export type Verdict =
  | { kind: "deliver" }
  | { kind: "drop" }
  | { kind: "hold" }
  /** Held; read history after `after`, up to (not including) `until`. */
  | { kind: "refill"; after: string; until: string };

/** A loss found while refilling: nothing between `after` and `next` could be had. */
export interface Loss {
  after: string;
  next: string;
  /** Whether history supplied any of the missing range. */
  refilled: boolean;
}

/** What a finished refill delivers, in order, and what it found lost. */
export interface RefillOutcome {
  deliver: Message[];
  loss: Loss | undefined;
  /** A further break among the held messages: refill again. */
  again: { after: string; until: string } | undefined;
}

const DELIVER: Verdict = { kind: "deliver" };
const DROP: Verdict = { kind: "drop" };
const HOLD: Verdict = { kind: "hold" };

export class RoomContinuity {
  /** The id of the last message handed to the app, if any. */
  last: string | undefined;
  private held: Message[] = [];
  private refilling = false;

  constructor(last?: string) {
    this.last = last;
  }

  /** Whether a refill is under way. */
  get isRefilling(): boolean {
    return this.refilling;
  }

  /** Decides for one arriving message; a delivered one becomes `last`. */
  accept(message: Message): Verdict {
    // The common case first: the next link of the chain, no id arithmetic.
    if (!this.refilling && this.last !== undefined && message.prev === this.last) {
      this.last = message.id;
      return DELIVER;
    }
    if (this.last !== undefined && compareIds(message.id, this.last) <= 0) return DROP;
    if (this.refilling) {
      const newest = this.held[this.held.length - 1];
      if (newest !== undefined && compareIds(message.id, newest.id) <= 0) return DROP;
      this.held.push(message);
      return HOLD;
    }
    if (this.last === undefined) {
      this.last = message.id;
      return DELIVER;
    }
    this.refilling = true;
    this.held = [message];
    return { kind: "refill", after: this.last, until: message.id };
  }

  /**
   * Ends a refill with what history held after `last`, oldest first (it
   * may run past the held messages; those are skipped).
   */
  finishRefill(fetched: Message[]): RefillOutcome {
    const deliver: Message[] = [];
    const firstHeld = this.held[0];
    let cursor = this.last;
    let loss: Loss | undefined;
    let refilledAny = false;
    const take = (message: Message, fromHistory: boolean) => {
      if (cursor !== undefined && message.prev !== cursor && loss === undefined) {
        loss = { after: cursor, next: message.id, refilled: false };
      }
      if (fromHistory) refilledAny = true;
      deliver.push(message);
      cursor = message.id;
    };
    for (const message of fetched) {
      if (cursor !== undefined && compareIds(message.id, cursor) <= 0) continue;
      if (firstHeld !== undefined && compareIds(message.id, firstHeld.id) >= 0) break;
      take(message, true);
    }
    let again: RefillOutcome["again"];
    const held = this.held;
    this.held = [];
    this.refilling = false;
    for (let index = 0; index < held.length; index += 1) {
      const message = held[index]!;
      if (cursor !== undefined && compareIds(message.id, cursor) <= 0) continue;
      if (index > 0 && cursor !== undefined && message.prev !== cursor) {
        // A later break among the held ones: history may hold that range.
        this.held = held.slice(index);
        this.refilling = true;
        again = { after: cursor, until: message.id };
        break;
      }
      take(message, false);
    }
    if (loss !== undefined) loss.refilled = refilledAny;
    this.last = cursor;
    return { deliver, loss, again };
  }

  /** Forgets a refill under way (the connection was replaced; the resume resends). */
  reset(): void {
    this.held = [];
    this.refilling = false;
  }
}
