/**
 * The relay's wire frames (protocol v1), as TypeScript types. Server frames
 * are read with `parseServerFrame`, which checks the fields the SDK relies
 * on and passes anything else (frames of later protocol additions) through
 * as `unknown`-typed so it can be ignored.
 */

/** A room message, as delivered. */
export interface Message {
  type: "message";
  room: string;
  /** Its id in the room's history. */
  id: string;
  /** The id of the message before it in the room (`"0-0"` for the first). */
  prev: string;
  /** The publisher's authenticated subject, or null. */
  from: string | null;
  /** Server time, ms since the epoch. */
  ts: number;
  /** The publisher's client message id, if it gave one. */
  cmid?: string;
  body: unknown;
}

export interface WelcomeFrame {
  type: "welcome";
  node: string;
  user: string | null;
  limits: { max_message_bytes: number; max_replay: number; publish_rate: number };
}

export interface SubscribedFrame {
  type: "subscribed";
  req?: string | number;
  room: string;
  recovered?: boolean;
  replay: number;
  /** The id right before the first message delivered (absent from relays before positions). */
  position?: string;
  /** Present when the subscribe asked for presence. */
  presence?: { count: number; members: string[] };
}

export interface PresenceFrame {
  type: "presence";
  room: string;
  joined: string[];
  left: string[];
  count: number;
}

export interface SignalFrame {
  type: "signal";
  room: string;
  /** The sender's subject, or null. */
  from: string | null;
  body: unknown;
}

export interface AckFrame {
  type: "ack";
  req?: string | number;
  room: string;
  id: string;
  prev: string;
  duplicate: boolean;
}

export interface GapFrame {
  type: "gap";
  room: string;
  after: string | null;
  next?: string;
}

export interface ErrorFrame {
  type: "error";
  req?: string | number;
  code: string;
  message: string;
  room?: string;
  retry_after_ms?: number;
  /** For a publish answered `unavailable`: `false` (never stored) or `"unknown"`. */
  stored?: false | "unknown";
}

export interface ReconnectFrame {
  type: "reconnect";
  reason: string;
  delay_ms: number;
}

export interface SimpleReply {
  type: "unsubscribed" | "pong" | "refreshed";
  req?: string | number;
  room?: string;
  exp?: number;
}

export type ServerFrame =
  | Message
  | WelcomeFrame
  | SubscribedFrame
  | AckFrame
  | GapFrame
  | ErrorFrame
  | ReconnectFrame
  | PresenceFrame
  | SignalFrame
  | SimpleReply;

/** Client frames the SDK sends. */
export type ClientFrame =
  | { type: "subscribe"; room: string; since?: string; last?: number; presence?: boolean; req: string }
  | { type: "signal"; room: string; body: unknown; req: string }
  | { type: "unsubscribe"; room: string; req: string }
  | { type: "publish"; room: string; body: unknown; cmid: string; req: string }
  | { type: "ping"; req: string }
  | { type: "refresh"; token: string; req: string };

const KNOWN = new Set(["message", "welcome", "subscribed", "ack", "gap", "error", "reconnect", "unsubscribed", "pong", "refreshed", "presence", "signal"]);

/** Parses one text frame; `undefined` for anything that is not a known frame. */
export function parseServerFrame(text: string): ServerFrame | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const type = (value as { type?: unknown }).type;
  if (typeof type !== "string" || !KNOWN.has(type)) return undefined;
  if (type === "message") {
    const message = value as Partial<Message>;
    if (typeof message.room !== "string" || typeof message.id !== "string" || typeof message.prev !== "string") {
      return undefined;
    }
  }
  if (type === "presence") {
    const change = value as Partial<PresenceFrame>;
    if (typeof change.room !== "string" || !Array.isArray(change.joined) || !Array.isArray(change.left) || typeof change.count !== "number") {
      return undefined;
    }
  }
  if (type === "signal" && typeof (value as Partial<SignalFrame>).room !== "string") return undefined;
  return value as ServerFrame;
}
