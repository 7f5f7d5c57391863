// examples/spring-stomp-chat (a page written as the Spring STOMP tutorials
// write it: SockJS to /ws-stomp, /topic/chat/room/{id}, /app/chat/message)
// in headless Chromium against two relay nodes on Redis, with no Spring
// server: two pages chat, one page's node is killed (-9) and it resumes on
// the other; both pages then show exactly the room's history, id by id.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { chromium, type Browser, type Page } from "playwright-core";

import { serveChat, type ChatServer } from "../../harness/chat-server.js";
import { assertExactSequence, fullHistory, startProxy, startRedis, startRelay, stopAll } from "../../harness/relay.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
let browser: Browser | undefined;
let page: ChatServer | undefined;
after(async () => {
  await browser?.close();
  await page?.close();
  await stopAll();
});

const STOMP_ENV = {
  RELAY_STOMP_ENDPOINTS: "/ws-stomp",
  RELAY_STOMP_APP_ROUTES: "/app/chat/message=chat.room.{roomId}",
};

async function shown(chat: Page): Promise<Array<{ id: string; prev: string; text: string }>> {
  return await chat.$$eval("#messages li[data-id]", (items) =>
    items.map((item) => ({ id: (item as HTMLElement).dataset["id"]!, prev: (item as HTMLElement).dataset["prev"]!, text: item.textContent ?? "" })),
  );
}

async function waitForCount(chat: Page, count: number): Promise<void> {
  await chat.waitForFunction((wanted) => document.querySelectorAll("#messages li[data-id]").length >= wanted, count, { timeout: 30_000 });
}

async function say(chat: Page, text: string): Promise<void> {
  await chat.fill('input[name="text"]', text);
  await chat.press('input[name="text"]', "Enter");
}

test("the Spring tutorial chat page runs on the relay: two pages chat through a node kill, each message once", { timeout: 120_000 }, async () => {
  const redis = await startRedis();
  const one = await startRelay({ REDIS_URL: redis.url, ...STOMP_ENV }, "node-1");
  const two = await startRelay({ REDIS_URL: redis.url, ...STOMP_ENV }, "node-2");
  const first = await startProxy([one.addr, two.addr]);
  const second = await startProxy([two.addr, one.addr]);
  page = await serveChat(0, "spring-stomp-chat");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const ann = await (await browser.newContext()).newPage();
  const bob = await (await browser.newContext()).newPage();
  const url = (proxy: { httpUrl: string }, name: string) => `${page!.url}?server=${encodeURIComponent(proxy.httpUrl)}&room=42&name=${name}`;
  await ann.goto(url(first, "ann"));
  await bob.goto(url(second, "bob"));
  await ann.waitForSelector('#state[data-state="connected"]', { timeout: 30_000 });
  await bob.waitForSelector('#state[data-state="connected"]', { timeout: 30_000 });

  const bothExact = async (count: number) => {
    await waitForCount(ann, count);
    await waitForCount(bob, count);
    const stored = await fullHistory(two.httpUrl, "chat.room.42");
    assert.equal(stored.length, count);
    assertExactSequence("ann's page", await shown(ann), stored);
    assertExactSequence("bob's page", await shown(bob), stored);
    return stored;
  };

  for (let n = 0; n < 3; n += 1) {
    await say(ann, `ann ${n}`);
    await say(bob, `bob ${n}`);
  }
  const before = await bothExact(6);
  assert.deepEqual(before[0]?.body, { type: "TALK", roomId: "42", sender: "ann", message: "ann 0" });

  // Ann's node dies; bob keeps talking while her page reconnects to node 2.
  one.kill("SIGKILL");
  await ann.waitForSelector('#state[data-state="reconnecting"]', { timeout: 30_000 });
  for (let n = 3; n < 6; n += 1) await say(bob, `bob ${n}`);
  await ann.waitForSelector('#state[data-state="connected"]', { timeout: 30_000 });
  await say(ann, "ann is back");
  const after = await bothExact(10);
  assert.deepEqual(
    (await shown(ann)).map((message) => message.text),
    after.map((message) => {
      const chat = message.body as { sender: string; message: string };
      return `${chat.sender}: ${chat.message}`;
    }),
  );
});
