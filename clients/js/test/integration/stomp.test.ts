// STOMP with the clients Spring front ends use: @stomp/stompjs (over `ws`,
// and through sockjs-client) against the release binary, and a raw `ws`
// socket for what a library would hide (the legacy stomp.js's 1.1 with LF
// and frames split at 16 KiB, heart-beat timing, the close after ERROR).
// Every delivery check is exhaustive against the room's history.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Client, type IFrame, type IMessage } from "@stomp/stompjs";
import SockJS from "sockjs-client";
import WebSocket from "ws";

import { assertExactSequence, fullHistory, hs256, startProxy, startRedis, startRelay, stopAll, waitFor } from "../../harness/relay.js";

after(stopAll);

// stompjs looks for a global WebSocket when given a brokerURL.
Object.assign(globalThis, { WebSocket });

const SECRET = "a-stomp-test-secret-of-32-bytes!!!!";

interface Delivery {
  id: string;
  prev: string;
  headers: Record<string, string>;
  body: string;
}

function delivery(message: IMessage): Delivery {
  return { id: message.headers["message-id"]!, prev: message.headers["prev"]!, headers: { ...message.headers }, body: message.body };
}

/** A connected stompjs client (no reconnect unless asked). */
async function connectStomp(options: ConstructorParameters<typeof Client>[0] = {}): Promise<{ client: Client; connected: IFrame }> {
  const client = new Client({ reconnectDelay: 0, ...options });
  const connected = await new Promise<IFrame>((resolve, reject) => {
    client.onConnect = resolve;
    client.onStompError = (frame) => reject(new Error(`ERROR ${frame.headers["message"]}`));
    client.onWebSocketClose = (event: { code: number }) => reject(new Error(`closed ${event.code} before CONNECTED`));
    client.activate();
  });
  client.onWebSocketClose = () => {};
  return { client, connected };
}

function receipt(client: Client, id: string): Promise<IFrame> {
  return new Promise((resolve) => client.watchForReceipt(id, resolve));
}

/** A raw socket speaking STOMP text frames; collects what the server sends. */
async function rawSocket(url: string, protocols: string[]): Promise<{ socket: WebSocket; received: string[]; closed: Promise<{ code: number; at: number }> }> {
  const socket = new WebSocket(url, protocols);
  const received: string[] = [];
  socket.on("message", (data) => received.push(data.toString()));
  const closed = new Promise<{ code: number; at: number }>((resolve) => socket.on("close", (code) => resolve({ code, at: Date.now() })));
  await new Promise<void>((resolve, reject) => {
    socket.once("open", () => resolve());
    socket.once("error", reject);
  });
  return { socket, received, closed };
}

/** A JSON-protocol subscriber of `room` on `wsUrl`, collecting messages. */
async function jsonSubscriber(wsUrl: string, room: string): Promise<{ messages: Array<{ id: string; prev: string; body: unknown }>; close: () => void }> {
  const socket = new WebSocket(wsUrl);
  const messages: Array<{ id: string; prev: string; body: unknown }> = [];
  let subscribed!: () => void;
  const ready = new Promise<void>((resolve) => (subscribed = resolve));
  socket.on("message", (data) => {
    const frame = JSON.parse(data.toString()) as { type: string; id: string; prev: string; body: unknown };
    if (frame.type === "welcome") socket.send(JSON.stringify({ type: "subscribe", room }));
    if (frame.type === "subscribed") subscribed();
    if (frame.type === "message") messages.push(frame);
  });
  await ready;
  return { messages, close: () => socket.close() };
}

test("stompjs: CONNECT without host, resume headers and receipts, cmid, bodies byte for byte, the same ids and order as a JSON subscriber", { timeout: 30_000 }, async () => {
  const relay = await startRelay({ RELAY_AUTH: "jwt", RELAY_JWT_SECRET: SECRET });
  const exp = Math.floor(Date.now() / 1000) + 600;
  const token = hs256(SECRET, { sub: "ann", exp, rooms: ["chat.*"] });
  const { client, connected } = await connectStomp({
    brokerURL: `ws://${relay.addr}/v1/stomp`,
    connectHeaders: { Authorization: `Bearer ${token}` },
  });
  assert.equal((client.webSocket as unknown as WebSocket | undefined)?.protocol, "v12.stomp", "the highest subprotocol stompjs offers");
  assert.equal(connected.headers["version"], "1.2");
  assert.equal(connected.headers["user-name"], "ann");
  assert.match(connected.headers["heart-beat"] ?? "", /^\d+,\d+$/);

  const json = await jsonSubscriber(`${relay.wsUrl}?access_token=${token}`, "chat.room.7");
  const stomp: Delivery[] = [];
  const subscribed = receipt(client, "sub-1");
  const subscription = client.subscribe("/topic/chat/room/7", (message) => stomp.push(delivery(message)), { receipt: "sub-1", ack: "client-individual" });
  const subReceipt = await subscribed;
  assert.equal(subReceipt.headers["replay"], "0");
  assert.equal(subReceipt.headers["position"], "0-0", "a room that never held a message stands at 0-0");

  // JSON, text, a JSON string literal (kept as text), unicode and a NUL-free multi-line text.
  const bodies = ['{"text":"hi","n":1}', "plain text, not JSON", '"quoted"', "ünïcødé ✓\nsecond line", "[1,2,3]"];
  const acks: IFrame[] = [];
  for (const [index, body] of bodies.entries()) {
    const done = receipt(client, `send-${index}`);
    client.publish({ destination: "/topic/chat/room/7", body, headers: { receipt: `send-${index}`, cmid: `c-${index}` } });
    acks.push(await done);
  }
  // The same cmid again: a duplicate, with the first id.
  const again = receipt(client, "again");
  client.publish({ destination: "/topic/chat/room/7", body: bodies[0]!, headers: { receipt: "again", cmid: "c-0" } });
  const duplicate = await again;
  assert.equal(duplicate.headers["duplicate"], "true");
  assert.equal(duplicate.headers["message-id"], acks[0]!.headers["message-id"]);
  assert.deepEqual(acks.map((ack) => ack.headers["duplicate"]), bodies.map(() => "false"));

  await waitFor("every message on both", () => stomp.length === bodies.length && json.messages.length === bodies.length);
  const history = await fullHistory(relay.httpUrl, "chat.room.7", token);
  assertExactSequence("stomp subscriber", stomp, history);
  assertExactSequence("json subscriber", json.messages, history);
  assert.deepEqual(stomp.map((message) => message.id), acks.map((ack) => ack.headers["message-id"]));
  assert.deepEqual(stomp.map((message) => message.body), bodies, "STOMP bodies come back byte for byte");
  assert.deepEqual(json.messages.map((message) => message.body), [{ text: "hi", n: 1 }, "plain text, not JSON", '"quoted"', "ünïcødé ✓\nsecond line", [1, 2, 3]]);
  for (const message of stomp) {
    assert.equal(message.headers["destination"], "/topic/chat/room/7");
    assert.equal(message.headers["from"], "ann");
    assert.equal(message.headers["ack"], message.id, "client-individual messages carry ack");
    assert.match(message.headers["ts"] ?? "", /^\d{13}$/);
  }
  assert.equal(stomp[1]!.headers["content-type"], "text/plain;charset=utf-8");
  assert.equal(stomp[0]!.headers["content-type"], "application/json");
  assert.equal(stomp[0]!.headers["cmid"], "c-0");

  // JSON protocol to STOMP: a string body arrives as its text, an object as its JSON.
  const fromJson = new WebSocket(`${relay.wsUrl}?access_token=${token}`);
  await new Promise((resolve) => fromJson.once("message", resolve));
  fromJson.send(JSON.stringify({ type: "publish", room: "chat.room.7", body: "from json" }));
  fromJson.send(JSON.stringify({ type: "publish", room: "chat.room.7", body: { a: [1, "x"] } }));
  await waitFor("the JSON publishes", () => stomp.length === bodies.length + 2);
  assert.deepEqual(stomp.slice(-2).map((message) => message.body), ["from json", '{"a":[1,"x"]}']);
  fromJson.close();

  // ACK and NACK are accepted; resume with since gives exactly the rest.
  client.ack(stomp[0]!.id, subscription.id);
  client.nack(stomp[1]!.id, subscription.id);
  const cursor = stomp[2]!.id;
  const resumed: Delivery[] = [];
  const unsubscribed = receipt(client, "unsub");
  subscription.unsubscribe({ receipt: "unsub" });
  await unsubscribed;
  const resumeReceipt = receipt(client, "resume");
  client.subscribe("/topic/chat/room/7", (message) => resumed.push(delivery(message)), { receipt: "resume", since: cursor, id: "again" });
  const resumedHeaders = (await resumeReceipt).headers;
  assert.equal(resumedHeaders["recovered"], "true");
  assert.equal(resumedHeaders["position"], cursor, "a recovered resume stands at since");
  assert.equal(resumedHeaders["replay"], String(history.length + 2 - 3));
  await waitFor("the replay", () => resumed.length === history.length + 2 - 3);
  assertExactSequence("resumed", [{ id: cursor, prev: stomp[2]!.prev }, ...resumed], (await fullHistory(relay.httpUrl, "chat.room.7", token)).slice(2));

  const disconnected = receipt(client, "bye");
  client.webSocket?.send("DISCONNECT\nreceipt:bye\n\n\0");
  await disconnected;
  await client.deactivate();
  json.close();
});

test("stompjs: a transaction's SENDs are published at COMMIT, in order, and not at all after ABORT; app routes name the room from the body", { timeout: 30_000 }, async () => {
  const relay = await startRelay({ RELAY_STOMP_APP_ROUTES: "/app/chat/message=chat.room.{roomId}" });
  const { client } = await connectStomp({ brokerURL: `ws://${relay.addr}/v1/stomp` });
  const seen: Delivery[] = [];
  const ready = receipt(client, "sub");
  client.subscribe("/topic/chat/room/42", (message) => seen.push(delivery(message)), { receipt: "sub" });
  await ready;
  const held = client.begin("tx-1");
  client.publish({ destination: "/topic/chat/room/42", body: "in tx 1", headers: { transaction: held.id } });
  client.publish({ destination: "/app/chat/message", body: JSON.stringify({ roomId: 42, message: "in tx 2" }), headers: { transaction: held.id } });
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(seen.length, 0, "nothing before COMMIT");
  const aborted = client.begin("tx-2");
  client.publish({ destination: "/topic/chat/room/42", body: "never", headers: { transaction: aborted.id } });
  aborted.abort();
  const committed = receipt(client, "commit");
  client.commit(held.id);
  client.webSocket?.send("SEND\ndestination:/app/chat/message\nreceipt:commit\n\n{\"roomId\":\"42\",\"message\":\"after\"}\0");
  await committed;
  await waitFor("three messages", () => seen.length === 3);
  assert.deepEqual(seen.map((message) => message.body), ["in tx 1", '{"roomId":42,"message":"in tx 2"}', '{"roomId":"42","message":"after"}']);
  assertExactSequence("subscriber", seen, await fullHistory(relay.httpUrl, "chat.room.42"));
  await client.deactivate();
});

test("ERROR then close: a refused SEND, a bad token and a bad frame each get an ERROR saying why, then the server closes", { timeout: 30_000 }, async () => {
  const relay = await startRelay({ RELAY_AUTH: "jwt", RELAY_JWT_SECRET: SECRET });
  const exp = Math.floor(Date.now() / 1000) + 600;
  const token = hs256(SECRET, { sub: "bob", exp, rooms: ["mine"] });

  // A bystander on the same node, untouched by all that follows.
  const bystander = await connectStomp({ brokerURL: `ws://${relay.addr}/v1/stomp`, connectHeaders: { passcode: token } });
  const unharmed: Delivery[] = [];
  const watching = receipt(bystander.client, "watch");
  bystander.client.subscribe("/topic/mine", (message) => unharmed.push(delivery(message)), { receipt: "watch" });
  await watching;

  // stompjs does not close after ERROR: the server does.
  const { client } = await connectStomp({ brokerURL: `ws://${relay.addr}/v1/stomp`, connectHeaders: { passcode: token } });
  const closed = new Promise<number>((resolve) => (client.onWebSocketClose = (event: { code: number }) => resolve(event.code)));
  const error = new Promise<IFrame>((resolve) => (client.onStompError = resolve));
  client.publish({ destination: "/topic/theirs", body: "x", headers: { receipt: "r-1" } });
  const frame = await error;
  assert.match(frame.headers["message"] ?? "", /does not allow publishing to theirs/);
  assert.equal(frame.headers["receipt-id"], "r-1");
  assert.equal(await closed, 1008);
  await client.deactivate();

  // A bad token at CONNECT.
  const raw = await rawSocket(`ws://${relay.addr}/v1/stomp`, ["v12.stomp"]);
  raw.socket.send("CONNECT\naccept-version:1.2\npasscode:not-a-jwt\n\n\0");
  assert.equal((await raw.closed).code, 4001);
  assert.match(raw.received.join(""), /^ERROR\n/);

  // The upgrade's access_token serves a CONNECT without credentials; the
  // token's grants still hold (reading a room it does not list).
  const viaUrl = await rawSocket(`ws://${relay.addr}/v1/stomp?access_token=${token}`, ["v12.stomp"]);
  viaUrl.socket.send("CONNECT\naccept-version:1.2\n\n\0");
  await waitFor("CONNECTED", () => viaUrl.received.some((text) => text.startsWith("CONNECTED")));
  assert.match(viaUrl.received[0]!, /\nuser-name:bob\n/);
  viaUrl.socket.send("SUBSCRIBE\nid:1\ndestination:/topic/theirs\n\n\0");
  assert.equal((await viaUrl.closed).code, 1008);
  assert.match(viaUrl.received.at(-1) ?? "", /^ERROR\nmessage:your token does not allow reading theirs/);

  // An invalid access_token on the upgrade is refused before it.
  await assert.rejects(rawSocket(`ws://${relay.addr}/v1/stomp?access_token=nope`, []), /401/);

  // An undefined escape: a protocol error, and the close says so.
  const bad = await rawSocket(`ws://${relay.addr}/v1/stomp`, ["v12.stomp"]);
  bad.socket.send(`CONNECT\naccept-version:1.2\npasscode:${token}\n\n\0`);
  await waitFor("CONNECTED", () => bad.received.some((text) => text.startsWith("CONNECTED")));
  bad.socket.send("SUBSCRIBE\nid:1\ndestination:/topic/mi\\tne\n\n\0");
  assert.equal((await bad.closed).code, 1002);
  assert.match(bad.received.at(-1) ?? "", /^ERROR\nmessage:[^\n]*\\\\t/);

  const published = receipt(bystander.client, "still-here");
  bystander.client.publish({ destination: "/topic/mine", body: "still here", headers: { receipt: "still-here" } });
  await published;
  await waitFor("the bystander's message", () => unharmed.length === 1);
  assert.equal(unharmed[0]!.body, "still here");
  assert.ok(bystander.client.connected, "the bystander's connection stayed up");
  await bystander.client.deactivate();
});

test("heart-beats: the server sends them as negotiated and drops a client silent past twice its interval", { timeout: 30_000 }, async () => {
  const relay = await startRelay({ RELAY_PING_SECS: "1" });
  const talker = await rawSocket(`ws://${relay.addr}/v1/stomp`, ["v12.stomp"]);
  talker.socket.send("CONNECT\naccept-version:1.2\nheart-beat:0,500\n\n\0");
  await waitFor("CONNECTED", () => talker.received.length > 0);
  assert.match(talker.received[0]!, /heart-beat:1000,1000/);
  await waitFor("two server heart-beats", () => talker.received.filter((text) => text === "\n").length >= 2, 5_000);

  const silent = await rawSocket(`ws://${relay.addr}/v1/stomp`, ["v12.stomp"]);
  const start = Date.now();
  silent.socket.send("CONNECT\naccept-version:1.2\nheart-beat:500,0\n\n\0");
  // It promised a beat every max(500, 1000) ms and sends none: gone after 2 s.
  const { at } = await silent.closed;
  assert.ok(at - start >= 1900 && at - start < 6000, `dropped after ${at - start} ms`);
  talker.socket.close();
});

test("legacy stomp.js 1.1: v11.stomp, LF only, frames over 16 KiB split across WebSocket messages are reassembled", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const legacy = await rawSocket(`ws://${relay.addr}/v1/stomp`, ["v10.stomp", "v11.stomp"]);
  assert.equal(legacy.socket.protocol, "v11.stomp");
  legacy.socket.send("CONNECT\naccept-version:1.1,1.0\nheart-beat:10000,10000\n\n\0");
  await waitFor("CONNECTED", () => legacy.received.length > 0);
  assert.match(legacy.received[0]!, /^CONNECTED\nversion:1\.1\n/);
  legacy.socket.send("SUBSCRIBE\nid:sub-0\ndestination:/topic/big\nreceipt:s\n\n\0");
  await waitFor("the receipt", () => legacy.received.some((text) => text.startsWith("RECEIPT")));
  const body = JSON.stringify({ pad: "y".repeat(40_000) });
  const frame = `SEND\ndestination:/topic/big\ncontent-length:${Buffer.byteLength(body)}\n\n${body}\0`;
  for (let offset = 0; offset < frame.length; offset += 16 * 1024) legacy.socket.send(frame.slice(offset, offset + 16 * 1024));
  await waitFor("the MESSAGE", () => legacy.received.some((text) => text.startsWith("MESSAGE")));
  const message = legacy.received.find((text) => text.startsWith("MESSAGE"))!;
  assert.ok(message.endsWith(`\n\n${body}\0`), "the body arrives whole");
  for (const text of legacy.received) assert.ok(!text.includes("\r"), "the server writes LF line ends only");
  const [stored] = await fullHistory(relay.httpUrl, "big");
  assert.deepEqual(stored?.body, JSON.parse(body));
  legacy.socket.close();
});

test("SockJS at a Spring path (RELAY_STOMP_ENDPOINTS): info, then stompjs through sockjs-client", { timeout: 30_000 }, async () => {
  const relay = await startRelay({ RELAY_STOMP_ENDPOINTS: "/ws-stomp" });
  const info = (await (await fetch(`${relay.httpUrl}/ws-stomp/info`)).json()) as Record<string, unknown>;
  assert.equal(info["websocket"], true);
  assert.equal(info["cookie_needed"], false);
  assert.deepEqual(info["origins"], ["*:*"]);
  assert.equal(typeof info["entropy"], "number");
  const { client } = await connectStomp({ webSocketFactory: () => new SockJS(`${relay.httpUrl}/ws-stomp`) });
  const seen: Delivery[] = [];
  const ready = receipt(client, "sub");
  client.subscribe("/topic/chat/room/1", (message) => seen.push(delivery(message)), { receipt: "sub" });
  await ready;
  for (let n = 0; n < 20; n += 1) client.publish({ destination: "/topic/chat/room/1", body: `line ${n} with a NUL-free "quote"` });
  await waitFor("twenty messages", () => seen.length === 20);
  assertExactSequence("sockjs subscriber", seen, await fullHistory(relay.httpUrl, "chat.room.1"));
  assert.deepEqual(seen.map((message) => message.body), Array.from({ length: 20 }, (_, n) => `line ${n} with a NUL-free "quote"`));
  await client.deactivate();
});

test("resume on another node: a STOMP subscriber whose node is killed (-9) reconnects with since and misses nothing, doubles nothing", { timeout: 60_000 }, async () => {
  const redis = await startRedis();
  const a = await startRelay({ REDIS_URL: redis.url, RELAY_PUBLISH_RATE: "100000" }, "node-a");
  const b = await startRelay({ REDIS_URL: redis.url, RELAY_PUBLISH_RATE: "100000" }, "node-b");
  const proxy = await startProxy([a.addr, b.addr]);
  const received: Delivery[] = [];
  let connects = 0;
  let subscribedOnce = false;
  const client = new Client({ brokerURL: `ws://127.0.0.1:${proxy.port}/v1/stomp`, reconnectDelay: 200 });
  client.onConnect = () => {
    connects += 1;
    // What a front end adds for resume: the last id it saw.
    const since = received.at(-1)?.id;
    client.watchForReceipt(`sub-${connects}`, () => (subscribedOnce = true));
    const headers: Record<string, string> = { receipt: `sub-${connects}` };
    if (since !== undefined) headers["since"] = since;
    client.subscribe("/topic/room/k", (message) => received.push(delivery(message)), headers);
  };
  client.activate();
  await waitFor("subscribed", () => subscribedOnce);
  const publisher = await connectStomp({ brokerURL: `ws://${b.addr}/v1/stomp` });
  let sent = 0;
  const publishing = (async () => {
    while (sent < 300) {
      publisher.client.publish({ destination: "/topic/room/k", body: JSON.stringify({ n: sent }) });
      sent += 1;
      if (sent === 100) a.kill("SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  await publishing;
  await waitFor("a reconnect on node b", () => connects === 2, 20_000);
  await waitFor("all 300", () => received.length >= 300, 20_000);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const history = await fullHistory(`http://${b.addr}`, "room.k");
  assert.equal(history.length, 300);
  assertExactSequence("resumed STOMP subscriber", received, history);
  await client.deactivate();
  await publisher.client.deactivate();
});

test("the JSON protocol's limits hold on STOMP: body and frame sizes, the publish rate, a slow consumer (4000 after what was in flight), drain (1012)", { timeout: 60_000 }, async () => {
  const relay = await startRelay({ RELAY_MAX_MESSAGE_BYTES: "1000", RELAY_MAX_FRAME_BYTES: "8192", RELAY_PUBLISH_RATE: "5" });
  // Large bodies fill the kernel's buffers quickly for the slow consumer.
  const queued = await startRelay({ RELAY_OUTBOUND_QUEUE: "16", RELAY_DRAIN_SECS: "1" });
  const connect = async (node = relay) => {
    const raw = await rawSocket(`ws://${node.addr}/v1/stomp`, ["v12.stomp"]);
    raw.socket.send("CONNECT\naccept-version:1.2\n\n\0");
    await waitFor("CONNECTED", () => raw.received.some((text) => text.startsWith("CONNECTED")));
    return raw;
  };
  const errorOf = (raw: { received: string[] }) => raw.received.find((text) => text.startsWith("ERROR")) ?? "";

  const big = await connect();
  big.socket.send(`SEND\ndestination:/topic/limits\n\n${JSON.stringify({ pad: "x".repeat(2000) })}\0`);
  assert.equal((await big.closed).code, 1009);
  assert.match(errorOf(big), /code:too_large/);

  // One WebSocket message over the frame limit is refused by the WebSocket
  // layer (1009, as on /v1/ws); a STOMP frame that grows past it over
  // several messages gets an ERROR first.
  const huge = await connect();
  huge.socket.send(`SEND\ndestination:/topic/limits\n\n${"y".repeat(10_000)}`);
  assert.equal((await huge.closed).code, 1009);
  const split = await connect();
  split.socket.send("SEND\ndestination:/topic/limits\n\n");
  for (let n = 0; n < 3; n += 1) split.socket.send("y".repeat(4000));
  assert.equal((await split.closed).code, 1009);
  assert.match(errorOf(split), /larger than 8192 bytes/);

  const eager = await connect();
  for (let n = 0; n < 30; n += 1) eager.socket.send(`SEND\ndestination:/topic/limits\n\n${n}\0`);
  assert.equal((await eager.closed).code, 1008);
  assert.match(errorOf(eager), /code:rate_limited/);

  // A subscriber that stops reading: its socket is paused, the room keeps going.
  const slow = await connect(queued);
  slow.socket.send("SUBSCRIBE\nid:0\ndestination:/topic/firehose\nreceipt:s\n\n\0");
  await waitFor("subscribed", () => slow.received.some((text) => text.startsWith("RECEIPT")));
  const tcp = (slow.socket as unknown as { _socket: { pause(): void; resume(): void } })._socket;
  tcp.pause();
  const pad = "z".repeat(40_000);
  const metric = async () => {
    const text = await (await fetch(`${queued.httpUrl}/metrics`)).text();
    return Number(/^relay_slow_consumer_closes_total (\d+)/m.exec(text)?.[1] ?? "0");
  };
  for (let n = 0; n < 400 && (await metric()) === 0; n += 1) {
    // HTTP publishes: the STOMP publisher would meet the rate limit.
    await fetch(`${queued.httpUrl}/v1/rooms/firehose/messages`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ body: { n, pad } }) });
  }
  assert.ok((await metric()) >= 1, "the paused subscriber was marked slow");
  tcp.resume();
  const { code } = await slow.closed;
  assert.equal(code, 4000);
  const messages = slow.received
    .filter((text) => text.startsWith("MESSAGE"))
    .map((text) => ({ id: /\nmessage-id:([^\n]+)/.exec(text)![1]!, prev: /\nprev:([^\n]+)/.exec(text)![1]! }));
  assert.ok(messages.length > 0 && messages.length < 400, `${messages.length} messages before the close`);
  assertExactSequence("slow subscriber", messages, (await fullHistory(queued.httpUrl, "firehose")).slice(0, messages.length));

  // Drain: the node closes STOMP connections with 1012 (no ERROR: the close says it).
  const draining = await connect(queued);
  queued.kill("SIGTERM");
  assert.equal((await draining.closed).code, 1012);
  assert.equal(errorOf(draining), "");
});

test("UNSUBSCRIBE then SUBSCRIBE again with since: nothing of the old subscription leaks into the new one", { timeout: 60_000 }, async () => {
  const relay = await startRelay({ RELAY_MAX_CONNECTIONS_PER_CLIENT: "0" });
  const raw = await rawSocket(`ws://${relay.addr}/v1/stomp`, ["v12.stomp"]);
  raw.socket.send("CONNECT\naccept-version:1.2\n\n\0");
  await waitFor("CONNECTED", () => raw.received.some((text) => text.startsWith("CONNECTED")));
  raw.socket.send("SUBSCRIBE\nid:old\ndestination:/topic/race\nreceipt:s\n\n\0");
  await waitFor("subscribed", () => raw.received.some((text) => text.startsWith("RECEIPT")));
  // Hold the socket so that the node's queue for it fills up.
  const tcp = (raw.socket as unknown as { _socket: { pause(): void; resume(): void } })._socket;
  tcp.pause();
  const pad = "r".repeat(20_000);
  for (let n = 0; n < 300; n += 1) {
    await fetch(`${relay.httpUrl}/v1/rooms/race/messages`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ body: { n, pad } }) });
  }
  raw.socket.send("UNSUBSCRIBE\nid:old\nreceipt:u\n\n\0");
  tcp.resume();
  await waitFor("the UNSUBSCRIBE receipt", () => raw.received.some((text) => text.includes("receipt-id:u")));
  const parse = (text: string) => ({
    subscription: /\nsubscription:([^\n]+)/.exec(text)![1]!,
    id: /\nmessage-id:([^\n]+)/.exec(text)![1]!,
    prev: /\nprev:([^\n]+)/.exec(text)![1]!,
  });
  const before = raw.received.filter((text) => text.startsWith("MESSAGE")).map(parse);
  const since = before.at(-1)?.id ?? "0-0";
  raw.socket.send(`SUBSCRIBE\nid:new\ndestination:/topic/race\nsince:${since}\n\n\0`);
  const history = await fullHistory(relay.httpUrl, "race");
  await waitFor("the rest", () => raw.received.filter((text) => text.startsWith("MESSAGE")).length >= before.length + history.filter((message) => message.id > since).length, 20_000);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const after = raw.received.filter((text) => text.startsWith("MESSAGE")).map(parse).slice(before.length);
  assert.ok(before.every((message) => message.subscription === "old"));
  assert.ok(after.every((message) => message.subscription === "new"), "no old message under the new id");
  const rest = history.slice(history.findIndex((message) => message.id === since) + 1);
  assertExactSequence("the new subscription", [{ id: since, prev: "" }, ...after].slice(since === "0-0" ? 1 : 0), since === "0-0" ? history : [history.find((message) => message.id === since)!, ...rest]);
  raw.socket.close();
});
