// The SDK against the release binary on the embedded memory broker:
// delivery, bad input answered with its code on a connection that stays
// usable, forbidden rooms, a cursor store handed to a new client, a gap
// after trimming, close().
import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket from "ws";

import { MemoryCursors, RelayClient, type ConnectionState, type GapInfo, type Message, type RelayError, type WebSocketConstructor } from "@chat-relay/client";
import { assertExactSequence, fullHistory, hs256, httpPublish, startRelay, stopAll, waitFor } from "../../harness/relay.js";

const WS = WebSocket as unknown as WebSocketConstructor;
after(stopAll);

function client(url: string, extra: Partial<ConstructorParameters<typeof RelayClient>[0]> = {}): RelayClient {
  return new RelayClient({ url, WebSocket: WS, ...extra });
}

test("messages arrive once, in order; bad input rejects with its code and the connection stays usable", { timeout: 30_000 }, async () => {
  const relay = await startRelay({ RELAY_MAX_MESSAGE_BYTES: "100" });
  const sdk = client(relay.wsUrl);
  const states: ConnectionState[] = [];
  sdk.on("state", (state) => states.push(state));
  const received: Message[] = [];
  sdk.subscribe("lobby", { onMessage: (message) => received.push(message) });
  const acks = await Promise.all([0, 1, 2].map((n) => sdk.publish("lobby", { n })));
  await assert.rejects(sdk.publish("not a room", 1), (error: RelayError) => error.code === "invalid_room");
  await assert.rejects(sdk.publish("lobby", "x".repeat(200)), (error: RelayError) => error.code === "too_large" && error.room === "lobby");
  const later = await sdk.publish("lobby", { n: 3 });
  await waitFor("four messages", () => received.length === 4);
  assert.deepEqual(received.map((message) => message.body), [{ n: 0 }, { n: 1 }, { n: 2 }, { n: 3 }]);
  assert.deepEqual(received.map((message) => message.id), [...acks.map((ack) => ack.id), later.id]);
  assertExactSequence("subscriber", received, await fullHistory(relay.httpUrl, "lobby"));
  assert.ok(!states.includes("disconnected"), `the connection stayed up: ${states.join(",")}`);
  sdk.close();
});

test("a token's room grants: publishing to a read-only room and subscribing to a foreign one reject with forbidden", { timeout: 30_000 }, async () => {
  const secret = "a-test-secret-of-at-least-32-bytes!!";
  const relay = await startRelay({ RELAY_AUTH: "jwt", RELAY_JWT_SECRET: secret });
  const exp = Math.floor(Date.now() / 1000) + 600;
  const sdk = client(relay.wsUrl, { token: () => hs256(secret, { sub: "ann", exp, rooms: ["team:*"], read: ["news"] }) });
  await assert.rejects(sdk.publish("news", 1), (error: RelayError) => error.code === "forbidden");
  const failed = new Promise<RelayError>((resolve) => sdk.subscribe("secret", { onError: resolve }));
  assert.equal((await failed).code, "forbidden");
  const ack = await sdk.publish("team:1", "hello");
  assert.equal(ack.duplicate, false);
  const page = await sdk.history("team:1", { limit: 10 });
  assert.deepEqual(page.messages.map((message) => message.body), ["hello"]);
  assert.equal(page.messages[0]!.from, "ann");
  sdk.close();
});

test("a new client with the same cursor store resumes where the old one stopped", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const cursors = new MemoryCursors();
  const first = client(relay.wsUrl, { cursors });
  const seenFirst: Message[] = [];
  first.subscribe("r", { onMessage: (message) => seenFirst.push(message) });
  await new Promise<void>((resolve) => first.on("state", (state) => state === "connected" && resolve()));
  await new Promise((resolve) => setTimeout(resolve, 100));
  for (let n = 0; n < 5; n += 1) await httpPublish(relay.httpUrl, "r", n);
  await waitFor("the first five", () => seenFirst.length === 5);
  first.close();
  for (let n = 5; n < 10; n += 1) await httpPublish(relay.httpUrl, "r", n);
  const second = client(relay.wsUrl, { cursors });
  const seenSecond: Message[] = [];
  const subscribed: Array<{ recovered?: boolean; replay: number }> = [];
  second.subscribe("r", { onMessage: (message) => seenSecond.push(message), onSubscribed: (info) => subscribed.push(info) });
  await waitFor("the next five", () => seenSecond.length === 5);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.deepEqual(subscribed[0], { recovered: true, replay: 5 });
  assertExactSequence("both clients", [...seenFirst, ...seenSecond], await fullHistory(relay.httpUrl, "r"));
  second.close();
});

test("a resume past what a small history holds gives exactly one onGap, then the rest in order", { timeout: 30_000 }, async () => {
  const relay = await startRelay({ RELAY_HISTORY_MAXLEN: "10" });
  const cursors = new MemoryCursors();
  const first = client(relay.wsUrl, { cursors });
  const early: Message[] = [];
  first.subscribe("small", { onMessage: (message) => early.push(message) });
  await new Promise<void>((resolve) => first.on("state", (state) => state === "connected" && resolve()));
  await new Promise((resolve) => setTimeout(resolve, 100));
  await httpPublish(relay.httpUrl, "small", "first");
  await waitFor("the first message", () => early.length === 1);
  first.close();
  for (let n = 0; n < 40; n += 1) await httpPublish(relay.httpUrl, "small", n);
  const second = client(relay.wsUrl, { cursors });
  const later: Message[] = [];
  const gaps: GapInfo[] = [];
  const subscribed: Array<{ recovered?: boolean; replay: number }> = [];
  second.subscribe("small", { onMessage: (message) => later.push(message), onGap: (gap) => gaps.push(gap), onSubscribed: (info) => subscribed.push(info) });
  const held = await fullHistory(relay.httpUrl, "small");
  await waitFor("what the history still holds", () => later.length === held.length);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(subscribed[0]?.recovered, false);
  assert.equal(gaps.length, 1, `exactly one onGap: ${JSON.stringify(gaps)}`);
  assert.equal(gaps[0]!.after, early[0]!.id);
  assert.equal(gaps[0]!.next, held[0]!.id);
  assert.deepEqual(later.map((message) => message.id), held.map((message) => message.id));
  second.close();
});

test("a resume heavier than the relay's replay budget is refilled page by page: every message once, no onGap", { timeout: 30_000 }, async () => {
  // Bodies of about 900 bytes; a replay or a page holds at most 5,096 bytes
  // (max_message_bytes + 4096, the least the relay allows): about 5 a page.
  const relay = await startRelay({ RELAY_MAX_MESSAGE_BYTES: "1000", RELAY_MAX_REPLAY_BYTES: "5096" });
  const cursors = new MemoryCursors();
  const first = client(relay.wsUrl, { cursors });
  const early: Message[] = [];
  first.subscribe("heavy", { onMessage: (message) => early.push(message) });
  await new Promise<void>((resolve) => first.on("state", (state) => state === "connected" && resolve()));
  await new Promise((resolve) => setTimeout(resolve, 100));
  await httpPublish(relay.httpUrl, "heavy", "first");
  await waitFor("the first message", () => early.length === 1);
  first.close();
  for (let n = 0; n < 30; n += 1) await httpPublish(relay.httpUrl, "heavy", { n, pad: "x".repeat(900) });
  const reader = client(relay.wsUrl);
  const page = await reader.history("heavy", { after: early[0]!.id, limit: 100 });
  reader.close();
  assert.ok(page.more && page.messages.length < 10 && page.complete, `a page ends at the byte budget: ${page.messages.length}, more ${page.more}`);
  const second = client(relay.wsUrl, { cursors });
  const later: Message[] = [];
  const gaps: GapInfo[] = [];
  const subscribed: Array<{ recovered?: boolean; replay: number }> = [];
  second.subscribe("heavy", { onMessage: (message) => later.push(message), onGap: (gap) => gaps.push(gap), onSubscribed: (info) => subscribed.push(info) });
  await waitFor("all thirty", () => later.length === 30);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(subscribed[0]?.recovered, false, "the replay was cut at its byte budget");
  assert.ok((subscribed[0]?.replay ?? 30) < 10, `replay ${subscribed[0]?.replay}`);
  assert.deepEqual(gaps, [], "nothing was lost: the SDK refilled from history");
  assertExactSequence("resumed client", [...early, ...later], await fullHistory(relay.httpUrl, "heavy"));
  second.close();
});

test("close() stops reconnecting, even when the relay comes back", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const sdk = client(relay.wsUrl, { backoff: { minMs: 50, maxMs: 200 } });
  const states: ConnectionState[] = [];
  sdk.on("state", (state) => states.push(state));
  await waitFor("connected", () => states.includes("connected"));
  sdk.close();
  const count = states.length;
  relay.kill("SIGKILL");
  await relay.exited;
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.deepEqual(states.slice(count - 1), ["closed"], "nothing after closed");
});

test("a token function's fresh token is sent as refresh before exp: no 4001, messages keep flowing", { timeout: 30_000 }, async () => {
  const secret = "a-test-secret-of-at-least-32-bytes!!";
  const relay = await startRelay({ RELAY_AUTH: "jwt", RELAY_JWT_SECRET: secret, RELAY_JWT_LEEWAY_SECS: "0" });
  let issued = 0;
  const sdk = client(relay.wsUrl, {
    token: () => {
      issued += 1;
      return hs256(secret, { sub: "ann", exp: Math.floor(Date.now() / 1000) + 5, rooms: ["*"] });
    },
  });
  const states: ConnectionState[] = [];
  sdk.on("state", (state) => states.push(state));
  const received: Message[] = [];
  sdk.subscribe("r", { onMessage: (message) => received.push(message) });
  await waitFor("connected", () => states.includes("connected"));
  for (let n = 0; n < 8; n += 1) {
    await sdk.publish("r", n);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  await waitFor("eight messages", () => received.length === 8);
  assert.ok(issued >= 3, `tokens were refreshed before they expired: ${issued} issued`);
  assert.deepEqual(states, ["connecting", "connected"], "the 5 s tokens never expired on the connection");
  sdk.close();
});
