// The SDK against two relay nodes on one Redis behind a loopback proxy (one
// URL reaches whichever node is alive): a node killed mid-stream, a drain,
// publishes in flight when a node dies. Every assertion is exhaustive: the
// app's sequence equals the room's history id by id, each body is stored
// once, each promise settles once.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket from "ws";

import { RelayClient, type Message, type PresenceInfo, type PublishAck, type RelayError, type SignalFrame, type WebSocketConstructor } from "@chat-relay/client";
import { assertExactSequence, fullHistory, startProxy, startRedis, startRelay, stopAll, waitFor, type Relay } from "../../harness/relay.js";

const WS = WebSocket as unknown as WebSocketConstructor;
after(stopAll);

async function twoNodes(envA: Record<string, string> = {}) {
  const redis = await startRedis();
  const a = await startRelay({ REDIS_URL: redis.url, RELAY_PUBLISH_RATE: "100000", ...envA }, "node-a");
  const b = await startRelay({ REDIS_URL: redis.url, RELAY_PUBLISH_RATE: "100000" }, "node-b");
  const proxy = await startProxy([a.addr, b.addr]);
  return { a, b, proxy };
}

/** A client, and the node of its first connection (listened for from the start). */
function sdk(url: string): { client: RelayClient; firstNode: Promise<string> } {
  const client = new RelayClient({ url, WebSocket: WS, backoff: { minMs: 200, maxMs: 2000 } });
  const firstNode = new Promise<string>((resolve) => client.on("state", (state, detail) => state === "connected" && resolve(detail.node ?? "")));
  return { client, firstNode };
}

/** Settles every promise once, and counts. */
function track(promises: Array<Promise<PublishAck>>) {
  const outcome = { resolved: 0, rejected: 0, settledTwice: false, acks: [] as PublishAck[] };
  for (const promise of promises) {
    let settled = false;
    promise.then(
      (ack) => {
        outcome.settledTwice ||= settled;
        settled = true;
        outcome.resolved += 1;
        outcome.acks.push(ack);
      },
      () => {
        outcome.settledTwice ||= settled;
        settled = true;
        outcome.rejected += 1;
      },
    );
  }
  return outcome;
}

function assertEachBodyOnce(history: Array<{ body: unknown }>, total: number, key: string): void {
  const seen = history.map((message) => (message.body as Record<string, number>)[key]);
  assert.deepEqual([...seen].sort((x, y) => x! - y!), Array.from({ length: total }, (_, n) => n), "each body stored exactly once");
}

async function killHard(node: Relay): Promise<void> {
  node.kill("SIGKILL");
  await node.exited;
}

test("kill -9 of the node mid-stream: the subscriber sees the history exactly, each publish is stored once", { timeout: 90_000 }, async () => {
  const { a, b, proxy } = await twoNodes();
  const { client: subscriber, firstNode: subscriberNode } = sdk(proxy.wsUrl);
  const { client: publisher, firstNode: publisherNode } = sdk(proxy.wsUrl);
  const received: Message[] = [];
  subscriber.subscribe("stream", { onMessage: (message) => received.push(message) });
  assert.equal(await subscriberNode, "node-a");
  assert.equal(await publisherNode, "node-a");
  await new Promise((resolve) => setTimeout(resolve, 200));
  const TOTAL = 300;
  const promises: Array<Promise<PublishAck>> = [];
  for (let n = 0; n < TOTAL; n += 1) {
    promises.push(publisher.publish("stream", { n }));
    if (n === 150) await killHard(a);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const outcome = track(promises);
  await waitFor("every publish settled", () => outcome.resolved + outcome.rejected === TOTAL, 30_000);
  assert.deepEqual({ resolved: outcome.resolved, rejected: outcome.rejected, twice: outcome.settledTwice }, { resolved: TOTAL, rejected: 0, twice: false });
  const history = await fullHistory(b.httpUrl, "stream");
  assertEachBodyOnce(history, TOTAL, "n");
  await waitFor("the subscriber caught up", () => received.length >= history.length, 30_000);
  assertExactSequence("subscriber", received, history);
  assert.equal(history[0]!.prev, "0-0");
  subscriber.close();
  publisher.close();
});

test("a drain: every client reconnects after its own delay spread over the window, and misses nothing", { timeout: 90_000 }, async () => {
  const { a, b, proxy } = await twoNodes({ RELAY_DRAIN_SECS: "4" });
  const CLIENTS = 30;
  const clients: RelayClient[] = [];
  const received: Message[][] = [];
  const reconnectAt: number[] = [];
  let sigtermAt = 0;
  for (let index = 0; index < CLIENTS; index += 1) {
    const { client, firstNode } = sdk(proxy.wsUrl);
    const mine: Message[] = [];
    received.push(mine);
    client.subscribe("drain", { onMessage: (message) => mine.push(message) });
    let drained = false;
    client.on("state", (state, detail) => {
      if (state === "disconnected" && detail.code === 1012) drained = true;
      if (state === "connecting" && drained && reconnectAt.length < CLIENTS * 2) {
        drained = false;
        reconnectAt.push(Date.now() - sigtermAt);
      }
    });
    clients.push(client);
    assert.equal(await firstNode, "node-a");
  }
  await new Promise((resolve) => setTimeout(resolve, 300));
  proxy.backends = [b.addr];
  sigtermAt = Date.now();
  a.kill("SIGTERM");
  const { client: publisher } = sdk(`ws://${b.addr}/v1/ws`);
  const promises: Array<Promise<PublishAck>> = [];
  for (let n = 0; n < 60; n += 1) {
    promises.push(publisher.publish("drain", { n }));
    await new Promise((resolve) => setTimeout(resolve, 80));
  }
  await Promise.all(promises);
  assert.equal(await a.exited, 0, "the drained node exits 0");
  await waitFor("every client reconnected", () => reconnectAt.length === CLIENTS, 15_000);
  const sorted = [...reconnectAt].sort((x, y) => x - y);
  const spread = sorted[sorted.length - 1]! - sorted[0]!;
  assert.ok(spread > 2000, `reconnects spread over the 4 s window, not a burst: ${sorted.join(",")}`);
  for (let bucket = 0; bucket < 5000; bucket += 500) {
    const inBucket = sorted.filter((at) => at >= bucket && at < bucket + 500).length;
    assert.ok(inBucket <= CLIENTS / 2, `at most half reconnect in one half-second: ${inBucket} in [${bucket}, ${bucket + 500})`);
  }
  const history = await fullHistory(b.httpUrl, "drain");
  await waitFor("every client has every message", () => received.every((mine) => mine.length >= history.length), 20_000);
  received.forEach((mine, index) => assertExactSequence(`client ${index}`, mine, history));
  for (const client of clients) client.close();
  publisher.close();
});

test("publishes in flight when their node dies: each body stored once, each promise settled once", { timeout: 90_000 }, async () => {
  const { a, b, proxy } = await twoNodes();
  const { client: publisher, firstNode } = sdk(proxy.wsUrl);
  assert.equal(await firstNode, "node-a");
  const TOTAL = 200;
  const promises = Array.from({ length: TOTAL }, (_, n) => publisher.publish("burst", { n }));
  const outcome = track(promises);
  // The burst is on its way (some acked, some not) when the node dies.
  await new Promise((resolve) => setTimeout(resolve, 5));
  await killHard(a);
  await waitFor("every publish settled", () => outcome.resolved + outcome.rejected === TOTAL, 30_000);
  assert.deepEqual({ resolved: outcome.resolved, rejected: outcome.rejected, twice: outcome.settledTwice }, { resolved: TOTAL, rejected: 0, twice: false });
  const history = await fullHistory(b.httpUrl, "burst");
  assertEachBodyOnce(history, TOTAL, "n");
  const ids = new Set(outcome.acks.map((ack) => ack.id));
  assert.equal(ids.size, TOTAL, "every ack names its own stored message");
  for (const message of history) assert.ok(ids.has(message.id), `${message.id} was acked`);
  publisher.close();
});

test("presence and signals across two nodes: onPresence keeps the member set current, onSignal gets typing, nothing is stored", { timeout: 30_000 }, async () => {
  const redis = await startRedis();
  const a = await startRelay({ REDIS_URL: redis.url, RELAY_PUBLISH_RATE: "100000" }, "node-a");
  const b = await startRelay({ REDIS_URL: redis.url, RELAY_PUBLISH_RATE: "100000" }, "node-b");
  const ann = new RelayClient({ url: `${a.wsUrl}?user=ann`, WebSocket: WS });
  const seen: PresenceInfo[] = [];
  const signals: SignalFrame[] = [];
  ann.subscribe("room", { presence: true, onPresence: (info) => seen.push(info), onSignal: (signal) => signals.push(signal) });
  await waitFor("ann's snapshot", () => seen.length === 1);
  assert.deepEqual([...seen[0]!.members], ["ann"]);
  assert.equal(seen[0]!.snapshot, true);
  const bo = new RelayClient({ url: `${b.wsUrl}?user=bo`, WebSocket: WS });
  let boReady = false;
  bo.subscribe("room", { presence: true, onPresence: () => { boReady = true; } });
  await waitFor("bo in ann's member set", () => seen.at(-1)?.members.has("bo") === true);
  const joined = seen.at(-1)!;
  assert.deepEqual([joined.count, joined.joined, joined.complete], [2, ["bo"], true]);
  await waitFor("bo subscribed", () => boReady);
  assert.equal(bo.signal("room", { typing: true }), true);
  await waitFor("bo's signal at ann", () => signals.length === 1);
  assert.deepEqual(signals[0], { type: "signal", room: "room", from: "bo", body: { typing: true } });
  assert.throws(() => bo.signal("room", "x".repeat(2000)), (error: RelayError) => error.code === "too_large");
  assert.equal((await fullHistory(a.httpUrl, "room")).length, 0, "signals are never stored");
  const page = await ann.presenceMembers("room", { limit: 1 });
  assert.deepEqual([page.count, page.members, page.next], [2, ["ann"], "ann"]);
  bo.close();
  await waitFor("bo left ann's member set", () => seen.at(-1)?.left.includes("bo") === true);
  assert.deepEqual([...seen.at(-1)!.members], ["ann"]);
  ann.close();
});
