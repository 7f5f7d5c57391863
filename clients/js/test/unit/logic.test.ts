// Pure logic of the SDK: backoff bounds, the client-side continuity check,
// the outbox. No sockets, no timers.
import assert from "node:assert/strict";
import { test } from "node:test";

import { LocalStorageCursors, Outbox, PresenceSet, RoomContinuity, backoffDelay, compareIds, newCmid, type Message, type Pending, type PublishAck } from "@chat-relay/client";

function message(id: string, prev: string): Message {
  return { type: "message", room: "r", id, prev, from: null, ts: 0, body: id };
}

test("backoff waits are within [0, min(max, min * 2^n)], and reach both ends", () => {
  const options = { minMs: 500, maxMs: 20_000 };
  for (let attempt = 0; attempt < 12; attempt += 1) {
    const ceiling = Math.min(20_000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, options, () => 0), 0);
    assert.equal(backoffDelay(attempt, options, () => 0.999999), Math.floor(0.999999 * ceiling));
    for (let sample = 0; sample < 200; sample += 1) {
      const wait = backoffDelay(attempt, options);
      assert.ok(wait >= 0 && wait < ceiling, `attempt ${attempt}: ${wait} outside [0, ${ceiling})`);
    }
  }
  assert.equal(backoffDelay(1000, options, () => 0.5), 10_000, "the cap holds for any attempt");
  const spread = new Set(Array.from({ length: 100 }, () => backoffDelay(3, options)));
  assert.ok(spread.size > 50, "full jitter: a crowd spreads out, not in lock step");
});

test("message ids compare by their two numbers, not as text", () => {
  assert.ok(compareIds("9-0", "10-0") < 0);
  assert.ok(compareIds("10-2", "10-10") < 0);
  assert.equal(compareIds("5-1", "5-1"), 0);
});

test("continuity delivers a chain, drops what was delivered, and holds after a break", () => {
  const room = new RoomContinuity("1-0");
  assert.deepEqual(room.accept(message("2-0", "1-0")), { kind: "deliver" });
  assert.deepEqual(room.accept(message("2-0", "1-0")), { kind: "drop" }, "a duplicate is dropped");
  assert.deepEqual(room.accept(message("1-5", "1-0")), { kind: "drop" }, "an older id is dropped");
  assert.deepEqual(room.accept(message("5-0", "4-0")), { kind: "refill", after: "2-0", until: "5-0" });
  assert.deepEqual(room.accept(message("6-0", "5-0")), { kind: "hold" });
  assert.deepEqual(room.accept(message("6-0", "5-0")), { kind: "drop" }, "held once");
  const outcome = room.finishRefill([message("3-0", "2-0"), message("4-0", "3-0"), message("5-0", "4-0")]);
  assert.deepEqual(outcome.deliver.map((m) => m.id), ["3-0", "4-0", "5-0", "6-0"]);
  assert.equal(outcome.loss, undefined, "history held the whole range");
  assert.equal(room.last, "6-0");
  assert.equal(room.isRefilling, false);
});

test("a range history no longer holds is one loss, then everything after it in order", () => {
  const room = new RoomContinuity("1-0");
  assert.equal(room.accept(message("9-0", "8-0")).kind, "refill");
  // History kept 7-0 and 8-0 only: 2-0 to 6-0 were trimmed.
  const outcome = room.finishRefill([message("7-0", "6-0"), message("8-0", "7-0")]);
  assert.deepEqual(outcome.deliver.map((m) => m.id), ["7-0", "8-0", "9-0"]);
  assert.deepEqual(outcome.loss, { after: "1-0", next: "7-0", refilled: true });
  const total = new RoomContinuity("1-0");
  total.accept(message("9-0", "8-0"));
  const nothing = total.finishRefill([]);
  assert.deepEqual(nothing.deliver.map((m) => m.id), ["9-0"]);
  assert.deepEqual(nothing.loss, { after: "1-0", next: "9-0", refilled: false });
});

test("a second break among held messages asks for a second refill", () => {
  const room = new RoomContinuity("1-0");
  room.accept(message("3-0", "2-0"));
  room.accept(message("6-0", "5-0"));
  const first = room.finishRefill([message("2-0", "1-0")]);
  assert.deepEqual(first.deliver.map((m) => m.id), ["2-0", "3-0"]);
  assert.deepEqual(first.again, { after: "3-0", until: "6-0" });
  assert.ok(room.isRefilling);
  const second = room.finishRefill([message("4-0", "3-0"), message("5-0", "4-0")]);
  assert.deepEqual(second.deliver.map((m) => m.id), ["4-0", "5-0", "6-0"]);
  assert.equal(second.again, undefined);
});

test("a reset forgets what was held; the resume sends it again", () => {
  const room = new RoomContinuity("1-0");
  room.accept(message("5-0", "4-0"));
  room.reset();
  assert.equal(room.isRefilling, false);
  assert.equal(room.last, "1-0");
  assert.deepEqual(room.accept(message("2-0", "1-0")), { kind: "deliver" });
});

function pending(cmid: string): Pending<PublishAck> {
  return { cmid, room: "r", body: cmid, req: undefined, notBefore: 0, settle: undefined };
}

test("the outbox is bounded and sends in order, each once per connection", () => {
  const outbox = new Outbox<PublishAck>(3);
  assert.ok(outbox.add(pending("a")) && outbox.add(pending("b")) && outbox.add(pending("c")));
  assert.equal(outbox.add(pending("d")), false, "full at its capacity");
  const sent = outbox.sendable(0);
  assert.deepEqual(sent.map((entry) => entry.cmid), ["a", "b", "c"]);
  const firstReq = sent[0]!.req;
  assert.deepEqual(outbox.sendable(0), [], "in flight: not sent twice");
  const b = sent[1]!;
  assert.equal(outbox.byReq(b.req), b);
  outbox.remove(b);
  outbox.connectionLost();
  const again = outbox.sendable(0);
  assert.deepEqual(again.map((entry) => entry.cmid), ["a", "c"], "resent after a reconnect, same cmids, same order");
  assert.notEqual(again[0]!.req, firstReq, "a fresh req on the new connection");
});

test("a publish to retry waits for its time, keeping its cmid", () => {
  const outbox = new Outbox<PublishAck>(10);
  outbox.add(pending("a"));
  const [a] = outbox.sendable(0);
  outbox.retryLater(a!, 1000, 250);
  assert.deepEqual(outbox.sendable(1100), []);
  assert.equal(outbox.nextRetryAt(1100), 1250);
  assert.deepEqual(outbox.sendable(1250).map((entry) => entry.cmid), ["a"]);
});

test("cmids are random, 22 base64url characters, within the relay's 64-byte limit", () => {
  const seen = new Set<string>();
  for (let index = 0; index < 1000; index += 1) {
    const cmid = newCmid();
    assert.match(cmid, /^[A-Za-z0-9_-]{22}$/);
    seen.add(cmid);
  }
  assert.equal(seen.size, 1000);
});

test("LocalStorageCursors keeps one key per room under its prefix", () => {
  const items = new Map<string, string>();
  const storage = { getItem: (key: string) => items.get(key) ?? null, setItem: (key: string, value: string) => void items.set(key, value) };
  const cursors = new LocalStorageCursors("app:", storage);
  assert.equal(cursors.get("lobby"), undefined);
  cursors.set("lobby", "5-1");
  cursors.set("team:1", "7-0");
  assert.equal(cursors.get("lobby"), "5-1");
  assert.deepEqual([...items.entries()], [["app:lobby", "5-1"], ["app:team:1", "7-0"]]);
  const full = { getItem: () => null, setItem: () => { throw new Error("QuotaExceededError"); } };
  assert.doesNotThrow(() => new LocalStorageCursors("x:", full).set("r", "1-0"), "a full storage costs only the resume");
  assert.throws(() => new LocalStorageCursors(), /needs localStorage/);
});

test("the CommonJS build exports the same API as the ESM one", async () => {
  const { createRequire } = await import("node:module");
  const required = createRequire(import.meta.url)("@chat-relay/client") as Record<string, unknown>;
  const imported = (await import("@chat-relay/client")) as Record<string, unknown>;
  assert.deepEqual(Object.keys(required).sort(), Object.keys(imported).sort());
  assert.equal(typeof required["RelayClient"], "function");
});

test("a presence set starts from each snapshot and applies batches as set operations", () => {
  const presence = new PresenceSet();
  const snapshot = presence.reset({ count: 3, members: ["ann", "bo"] });
  assert.deepEqual([[...snapshot.members], snapshot.complete, snapshot.snapshot], [["ann", "bo"], false, true]);
  const change = presence.apply({ joined: ["cy"], left: ["ann"], count: 3 });
  assert.deepEqual([[...change.members].sort(), change.joined, change.left, change.snapshot], [["bo", "cy"], ["cy"], ["ann"], false]);
  const again = presence.apply({ joined: ["bo"], left: ["zed"], count: 2 });
  assert.deepEqual([[...again.members].sort(), again.complete], [["bo", "cy"], true], "a repeated join or an unknown leave changes nothing");
  assert.equal(change.members.size, 2);
  const healed = presence.reset({ count: 1, members: ["dee"] });
  assert.deepEqual([...healed.members], ["dee"], "a reconnect's snapshot replaces the set");
});
