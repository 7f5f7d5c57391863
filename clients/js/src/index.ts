/**
 * @chat-relay/client: the client half of chat-relay's guarantees. See
 * README.md for the API and the reconnect and resume behaviour.
 */

export {
  RelayClient,
  Subscription,
  httpBaseOf,
  type ConnectionState,
  type GapInfo,
  type HistoryPage,
  type HistoryQuery,
  type PublishAck,
  type PublishOptions,
  type RelayClientOptions,
  type StateDetail,
  type SubscribeOptions,
  type SubscribedInfo,
  type TokenSource,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
export { RoomContinuity, type Loss, type RefillOutcome, type Verdict } from "./continuity.js";
export { LocalStorageCursors, MemoryCursors, type CursorStore, type KeyValueStorage } from "./cursors.js";
export { RelayError, type ErrorCode, type SdkErrorCode, type WireErrorCode } from "./errors.js";
export type { AckFrame, ClientFrame, ErrorFrame, GapFrame, Message, PresenceFrame, ReconnectFrame, ServerFrame, SignalFrame, SubscribedFrame, WelcomeFrame } from "./frames.js";
export { PresenceSet, type PresenceInfo } from "./presence.js";
export { compareIds, isMessageId } from "./ids.js";
export { MemoryOutbox, Outbox, newCmid, type OutboxEntry, type OutboxStore, type Pending } from "./outbox.js";
