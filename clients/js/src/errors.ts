/**
 * The one error type of the SDK: every rejected promise and every `error`
 * event carries a stable `code` (the relay's wire code, or one of the
 * SDK's own below) and a message that says what to do.
 */

/** Codes the SDK itself produces, beside the relay's wire codes. */
export type SdkErrorCode =
  /** More publishes are waiting than `maxOutbox` allows. */
  | "outbox_full"
  /** `close()` was called before the publish was acknowledged. */
  | "closed"
  /** The relay closed the connection with a code that means a client bug (1003, 1008, 1009). */
  | "protocol_violation"
  /** A subscription to this room exists already. */
  | "already_subscribed"
  /** The token function failed. */
  | "token_failed"
  /** An HTTP request (history) failed without an error body. */
  | "http_failed";

/** Codes of the relay's wire protocol (docs/protocol.md). */
export type WireErrorCode =
  | "bad_request"
  | "invalid_room"
  | "too_large"
  | "forbidden"
  | "rate_limited"
  | "unavailable"
  | "not_subscribed"
  | "unauthorized"
  | "not_found"
  | "method_not_allowed"
  | "overloaded"
  | "internal";

export type ErrorCode = WireErrorCode | SdkErrorCode;

/** An error with the code that caused it. */
export class RelayError extends Error {
  /** The wire code (`invalid_room`, `too_large`, ...) or the SDK's own. */
  readonly code: ErrorCode | string;
  /** The room concerned, when there is one. */
  readonly room: string | undefined;
  /** The WebSocket close code, for `protocol_violation`. */
  readonly closeCode: number | undefined;

  constructor(code: ErrorCode | string, message: string, details: { room?: string; closeCode?: number } = {}) {
    super(message);
    this.name = "RelayError";
    this.code = code;
    this.room = details.room;
    this.closeCode = details.closeCode;
  }
}
