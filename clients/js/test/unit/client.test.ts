// The connection state machine with a fake WebSocket and fake timers: the
// transitions and their codes, backoff and drain delays, resubscribe before
// flush, the outbox's answers, liveness, close().
import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";

import { RelayClient, type ConnectionState, type RelayError, type StateDetail, type WebSocketConstructor } from "@chat-relay/client";

class FakeSocket {
  static made: FakeSocket[] = [];
  readyState = 0;
  sent: Record<string, unknown>[] = [];
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  closedByClient: number | undefined;

  constructor(readonly url: string) {
    FakeSocket.made.push(this);
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code?: number): void {
    this.readyState = 3;
    this.closedByClient = code ?? 1000;
  }

  /** The relay accepts and says welcome. */
  welcome(node = "n1"): void {
    this.readyState = 1;
    this.onopen?.({});
    this.frame({ type: "welcome", node, user: null, limits: { max_message_bytes: 65536, max_replay: 1000, publish_rate: 50 } });
  }

  frame(frame: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  sentOfType(type: string): Record<string, unknown>[] {
    return this.sent.filter((frame) => frame["type"] === type);
  }
}

const WS = FakeSocket as unknown as WebSocketConstructor;

async function settle(): Promise<void> {
  for (let index = 0; index < 50; index += 1) await Promise.resolve();
}

function latest(): FakeSocket {
  const socket = FakeSocket.made[FakeSocket.made.length - 1];
  assert.ok(socket, "a socket was opened");
  return socket;
}

function record(client: RelayClient): Array<[ConnectionState, StateDetail]> {
  const states: Array<[ConnectionState, StateDetail]> = [];
  client.on("state", (state, detail) => states.push([state, detail]));
  return states;
}

beforeEach(() => {
  FakeSocket.made = [];
  mock.timers.enable({ apis: ["setTimeout", "Date"] });
});

afterEach(() => {
  mock.timers.reset();
});

/** History as the fake relay has it: empty. */
const emptyHistory = (async () => new Response(JSON.stringify({ messages: [], complete: true }), { status: 200 })) as typeof fetch;

async function connected(options: Partial<ConstructorParameters<typeof RelayClient>[0]> = {}) {
  const client = new RelayClient({ url: "ws://relay.test/v1/ws", WebSocket: WS, fetch: emptyHistory, ...options });
  const states = record(client);
  mock.timers.tick(0);
  await settle();
  latest().welcome();
  await settle();
  return { client, states, socket: latest() };
}

test("a listener attached after construction sees connecting, then connected with the node", async () => {
  const { client, states } = await connected();
  assert.deepEqual(
    states.map(([state, detail]) => [state, detail.code]),
    [
      ["connecting", "connect"],
      ["connected", "welcome"],
    ],
    "every transition has a code and a reason",
  );
  assert.ok(states.every(([, detail]) => detail.reason.length > 0));
  assert.equal(states[1]![1].node, "n1");
  client.close();
  assert.deepEqual(states[states.length - 1], ["closed", { code: 1000, reason: "closed by the app" }]);
});

test("an abnormal close reconnects after a full-jitter wait and resubscribes with since before flushing publishes", async () => {
  const { client, states, socket } = await connected({ backoff: { minMs: 500, maxMs: 20_000 } });
  const seen: string[] = [];
  client.subscribe("lobby", { onMessage: (message) => seen.push(message.id) });
  await settle();
  const subscribe = socket.sentOfType("subscribe")[0]!;
  assert.equal(subscribe["since"], undefined, "a room without a cursor subscribes live and takes the position it is given");
  socket.frame({ type: "subscribed", req: subscribe["req"], room: "lobby", replay: 0, position: "0-0" });
  socket.frame({ type: "message", room: "lobby", id: "5-0", prev: "0-0", from: null, ts: 1, body: 1 });
  socket.frame({ type: "message", room: "lobby", id: "6-0", prev: "5-0", from: null, ts: 1, body: 2 });
  socket.serverClose(1006);
  const [state, detail] = states[states.length - 1]!;
  assert.equal(state, "disconnected");
  assert.equal(detail.code, 1006);
  assert.ok(detail.delayMs! >= 0 && detail.delayMs! < 500, `first retry within [0, 500): ${detail.delayMs}`);
  const published = client.publish("lobby", { text: "while away" });
  mock.timers.tick(detail.delayMs!);
  await settle();
  const second = latest();
  assert.notEqual(second, socket);
  second.welcome("n2");
  await settle();
  const types = second.sent.map((frame) => frame["type"]);
  assert.deepEqual(types, ["subscribe", "publish"], "resubscribed before the queued publish");
  assert.equal(second.sent[0]!["since"], "6-0", "since = the last id handed to the app");
  const publish = second.sent[1]!;
  second.frame({ type: "ack", req: publish["req"], room: "lobby", id: "7-0", prev: "6-0", duplicate: false });
  assert.deepEqual(await published, { id: "7-0", prev: "6-0", duplicate: false });
  // The resume's replay repeats nothing the app saw.
  second.frame({ type: "subscribed", req: second.sent[0]!["req"], room: "lobby", recovered: true, replay: 1 });
  second.frame({ type: "message", room: "lobby", id: "6-0", prev: "5-0", from: null, ts: 1, body: 2 });
  second.frame({ type: "message", room: "lobby", id: "7-0", prev: "6-0", from: null, ts: 1, body: 3 });
  assert.deepEqual(seen, ["5-0", "6-0", "7-0"]);
  client.close();
});

test("a room without a cursor stores its position at once: a reconnect before its first message resumes from it", async () => {
  const stored = new Map<string, string>();
  const { client, states, socket } = await connected({
    cursors: { get: () => undefined, set: (room: string, id: string) => void stored.set(room, id) },
  });
  const seen: string[] = [];
  client.subscribe("lobby", { last: 2, onMessage: (message) => seen.push(message.id) });
  await settle();
  const subscribe = socket.sentOfType("subscribe")[0]!;
  assert.equal(subscribe["since"], undefined);
  assert.equal(subscribe["last"], 2, "the replay is the relay's, not an HTTP read");
  socket.frame({ type: "subscribed", req: subscribe["req"], room: "lobby", replay: 2, position: "3-0" });
  assert.equal(stored.get("lobby"), "3-0", "the position is the cursor before any message");
  socket.frame({ type: "message", room: "lobby", id: "4-0", prev: "3-0", from: null, ts: 1, body: 1 });
  socket.frame({ type: "message", room: "lobby", id: "5-0", prev: "4-0", from: null, ts: 1, body: 2 });
  assert.deepEqual(seen, ["4-0", "5-0"]);
  // A second room, dropped before its first message: resumed from its position.
  client.subscribe("quiet", {});
  await settle();
  const quiet = socket.sentOfType("subscribe")[1]!;
  socket.frame({ type: "subscribed", req: quiet["req"], room: "quiet", replay: 0, position: "9-0" });
  socket.serverClose(1006);
  const [, detail] = states[states.length - 1]!;
  mock.timers.tick(detail.delayMs!);
  await settle();
  const second = latest();
  second.welcome("n2");
  await settle();
  const since = Object.fromEntries(second.sentOfType("subscribe").map((frame) => [frame["room"], frame["since"]]));
  assert.deepEqual(since, { lobby: "5-0", quiet: "9-0" });
  client.close();
});

test("after a reconnect frame the client waits its delay_ms (plus a little jitter), not the backoff", async () => {
  const { client, states, socket } = await connected();
  socket.frame({ type: "reconnect", reason: "draining", delay_ms: 3000 });
  socket.serverClose(1012, "node draining");
  const [state, detail] = states[states.length - 1]!;
  assert.equal(state, "disconnected");
  assert.equal(detail.code, 1012);
  assert.ok(detail.delayMs! >= 3000 && detail.delayMs! < 3300, `${detail.delayMs}`);
  const before = FakeSocket.made.length;
  mock.timers.tick(2999);
  await settle();
  assert.equal(FakeSocket.made.length, before, "not before delay_ms");
  mock.timers.tick(detail.delayMs! - 2999);
  await settle();
  assert.equal(FakeSocket.made.length, before + 1);
  client.close();
});

test("close codes of a client bug are reported as errors and still retried", async () => {
  const { client, states, socket } = await connected();
  const errors: RelayError[] = [];
  client.on("error", (error) => errors.push(error));
  socket.serverClose(1008, "too many invalid frames");
  assert.equal(errors[0]?.code, "protocol_violation");
  assert.equal(errors[0]?.closeCode, 1008);
  const [, detail] = states[states.length - 1]!;
  mock.timers.tick(detail.delayMs!);
  await settle();
  assert.equal(FakeSocket.made.length, 2, "reconnected");
  client.close();
});

test("successive failures widen the backoff up to its maximum", async () => {
  const client = new RelayClient({ url: "ws://relay.test/v1/ws", WebSocket: WS, backoff: { minMs: 100, maxMs: 800 } });
  const states = record(client);
  mock.timers.tick(0);
  await settle();
  const delays: number[] = [];
  for (let attempt = 0; attempt < 8; attempt += 1) {
    latest().serverClose(1006);
    const detail = states[states.length - 1]![1];
    delays.push(detail.delayMs!);
    assert.ok(detail.delayMs! < Math.min(800, 100 * 2 ** attempt), `attempt ${attempt}: ${detail.delayMs}`);
    mock.timers.tick(detail.delayMs!);
    await settle();
  }
  assert.equal(FakeSocket.made.length, 9);
  client.close();
});

test("close() ends every reconnect and rejects unacked publishes with closed", async () => {
  const { client, states, socket } = await connected();
  const pending = client.publish("lobby", 1);
  socket.serverClose(1006);
  client.close();
  await assert.rejects(pending, (error: RelayError) => error.code === "closed");
  const made = FakeSocket.made.length;
  mock.timers.tick(60_000);
  await settle();
  assert.equal(FakeSocket.made.length, made, "no socket after close()");
  assert.equal(states[states.length - 1]![0], "closed");
  await assert.rejects(client.publish("lobby", 2), (error: RelayError) => error.code === "closed");
});

test("publish answers: rate_limited and unavailable are retried with the same cmid; client faults reject with their code", async () => {
  const { client, socket } = await connected({ maxOutbox: 3 });
  const limited = client.publish("r", "a");
  const unknown = client.publish("r", "b");
  const tooLarge = client.publish("r", "c");
  await settle();
  const full = client.publish("r", "d");
  await assert.rejects(full, (error: RelayError) => error.code === "outbox_full");
  const [a, b, c] = socket.sentOfType("publish");
  socket.frame({ type: "error", req: a!["req"], code: "rate_limited", message: "slow down", retry_after_ms: 200 });
  socket.frame({ type: "error", req: b!["req"], code: "unavailable", message: "no answer", retry_after_ms: 1000, stored: "unknown" });
  socket.frame({ type: "error", req: c!["req"], code: "too_large", message: "body over 65536 bytes", room: "r" });
  await assert.rejects(tooLarge, (error: RelayError) => error.code === "too_large" && error.room === "r");
  mock.timers.tick(200);
  const resentA = socket.sentOfType("publish")[3]!;
  assert.equal(resentA["cmid"], a!["cmid"], "same cmid after rate_limited");
  mock.timers.tick(800);
  const resentB = socket.sentOfType("publish")[4]!;
  assert.equal(resentB["cmid"], b!["cmid"], "an unknown outcome is retried with the same cmid");
  socket.frame({ type: "ack", req: resentA["req"], room: "r", id: "1-0", prev: "0-0", duplicate: false });
  socket.frame({ type: "ack", req: resentB["req"], room: "r", id: "2-0", prev: "1-0", duplicate: true });
  assert.deepEqual(await limited, { id: "1-0", prev: "0-0", duplicate: false });
  assert.deepEqual(await unknown, { id: "2-0", prev: "1-0", duplicate: true });
  client.close();
});

test("a silent connection is declared dead after twice the ping interval plus a margin, after a JSON ping", async () => {
  const { client, states, socket } = await connected({ pingIntervalMs: 1000 });
  mock.timers.tick(1200);
  assert.equal(socket.sentOfType("ping").length, 1, "a JSON ping once idle for the ping interval");
  mock.timers.tick(1800);
  assert.equal(states[states.length - 1]![0], "connected", "not yet: 3 s is the limit");
  mock.timers.tick(400);
  const [state, detail] = states[states.length - 1]!;
  assert.equal(state, "disconnected");
  assert.equal(detail.code, 4003);
  assert.ok(socket.closedByClient !== undefined, "the dead socket was closed");
  client.close();
});

test("a 4001 close asks the token function for a fresh token before reconnecting", async () => {
  let calls = 0;
  const token = async () => {
    calls += 1;
    return `token-${calls}`;
  };
  const { client, states, socket } = await connected({ token });
  assert.match(socket.url, /access_token=token-1/);
  socket.serverClose(4001, "token expired");
  mock.timers.tick(states[states.length - 1]![1].delayMs!);
  await settle();
  assert.match(latest().url, /access_token=token-2/);
  client.close();
});

test("a second subscribe to a room reports already_subscribed and keeps the first", async () => {
  const { client } = await connected();
  const errors: string[] = [];
  client.on("error", (error) => errors.push(String(error.code)));
  const first = client.subscribe("lobby");
  const second = client.subscribe("lobby");
  assert.equal(second, first);
  assert.deepEqual(errors, ["already_subscribed"]);
  client.close();
});
