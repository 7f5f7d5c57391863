// The demo chat in headless Chromium (Debian's, driven by playwright-core):
// two pages on two nodes chat; a node is killed; a page is reloaded; a page
// goes offline and back. Each time both pages show exactly the room's
// history, id by id, each message once.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { chromium, type Browser, type Page } from "playwright-core";

import { serveChat, type ChatServer } from "../../harness/chat-server.js";
import { assertExactSequence, fullHistory, repoRoot, startProxy, startRedis, startRelay, stopAll } from "../../harness/relay.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
let browser: Browser | undefined;
let chat: ChatServer | undefined;
after(async () => {
  await browser?.close();
  await chat?.close();
  await stopAll();
});

async function shown(page: Page): Promise<Array<{ id: string; prev: string }>> {
  return await page.$$eval("#messages li[data-id]", (items) =>
    items.map((item) => ({ id: (item as HTMLElement).dataset["id"]!, prev: (item as HTMLElement).dataset["prev"]! })),
  );
}

async function waitForCount(page: Page, count: number): Promise<void> {
  await page.waitForFunction((wanted) => document.querySelectorAll("#messages li[data-id]").length >= wanted, count, { timeout: 30_000 });
}

async function waitForState(page: Page, state: string): Promise<void> {
  await page.waitForSelector(`#state[data-state="${state}"]`, { timeout: 30_000 });
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill('input[name="text"]', text);
  await page.press('input[name="text"]', "Enter");
}

test("two pages on two nodes chat through a node kill, a reload and an offline spell, each message once", { timeout: 180_000 }, async () => {
  const redis = await startRedis();
  const one = await startRelay({ REDIS_URL: redis.url }, "node-1");
  const two = await startRelay({ REDIS_URL: redis.url }, "node-2");
  const first = await startProxy([one.addr, two.addr]);
  const second = await startProxy([two.addr, one.addr]);
  chat = await serveChat();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const annContext = await browser.newContext();
  const bobContext = await browser.newContext();
  const ann = await annContext.newPage();
  const bob = await bobContext.newPage();
  const url = (proxy: { wsUrl: string }, name: string) => `${chat!.url}?relay=${encodeURIComponent(proxy.wsUrl)}&room=demo&name=${name}`;
  await ann.goto(url(first, "ann"));
  await bob.goto(url(second, "bob"));
  await waitForState(ann, "connected");
  await waitForState(bob, "connected");
  assert.match((await ann.textContent("#node")) ?? "", /node-1/);
  assert.match((await bob.textContent("#node")) ?? "", /node-2/);
  // Presence across the two nodes, and bob's typing shown to ann.
  await ann.waitForSelector('#here[data-members="ann,bob"]', { timeout: 30_000 });
  await bob.waitForSelector('#here[data-members="ann,bob"]', { timeout: 30_000 });
  await bob.type('input[name="text"]', "typing");
  await ann.waitForFunction(() => document.querySelector("#typing")?.textContent === "bob is typing…", undefined, { timeout: 10_000 });
  await bob.fill('input[name="text"]', "");

  const history = () => fullHistory(two.httpUrl, "demo");
  const bothExact = async (count: number) => {
    await waitForCount(ann, count);
    await waitForCount(bob, count);
    const stored = await history();
    assert.equal(stored.length, count);
    assertExactSequence("ann's page", await shown(ann), stored);
    assertExactSequence("bob's page", await shown(bob), stored);
  };

  for (let n = 0; n < 4; n += 1) {
    await say(ann, `ann ${n}`);
    await say(bob, `bob ${n}`);
  }
  await bothExact(8);

  // ann's node dies: her page reconnects through its proxy to node 2.
  one.kill("SIGKILL");
  await one.exited;
  for (let n = 4; n < 7; n += 1) {
    await say(ann, `ann ${n}`);
    await say(bob, `bob ${n}`);
  }
  await waitForState(ann, "connected");
  assert.match((await ann.textContent("#node")) ?? "", /node-2/);
  await bothExact(14);

  // bob reloads: the transcript and the cursor come back from localStorage.
  await bob.reload();
  await waitForState(bob, "connected");
  await say(ann, "after the reload");
  await bothExact(15);

  // ann goes offline and comes back; both keep talking meanwhile.
  await annContext.setOffline(true);
  await waitForState(ann, "disconnected");
  await say(bob, "while ann is offline");
  await say(ann, "sent while offline");
  await new Promise((resolve) => setTimeout(resolve, 500));
  await annContext.setOffline(false);
  await waitForState(ann, "connected");
  await bothExact(17);
  const annText = (await ann.textContent("#messages")) ?? "";
  assert.ok(annText.includes("while ann is offline") && annText.includes("sent while offline"), annText);

  const shots = join(repoRoot, "clients/js/.test-build");
  mkdirSync(shots, { recursive: true });
  await ann.screenshot({ path: join(shots, "chat-demo.png") });
});
