// `npm run demo` when it cannot start (its page port is taken): one line
// saying what to do, exit 1, and nothing it started left running (the
// Redis and the two relays it had already started are stopped).
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";

import { repoRoot } from "../../harness/relay.js";

function running(name: string): number {
  try {
    return execFileSync("pgrep", ["-x", name], { encoding: "utf8" }).split("\n").filter((line) => line.trim() !== "").length;
  } catch {
    return 0; // pgrep exits 1 when nothing matches
  }
}

test("the demo with its port taken says what to do in one line and leaves nothing running", { timeout: 30_000 }, async () => {
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, "127.0.0.1", resolve));
  const port = (busy.address() as { port: number }).port;
  const before = { redis: running("redis-server"), relays: running("chat-relay") };
  const demo = spawn(process.execPath, [join(repoRoot, "clients/js/.test-build/harness/demo.js")], {
    env: { ...process.env, CHAT_DEMO_PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  demo.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => demo.once("exit", resolve));
  busy.close();
  assert.equal(code, 1, stderr);
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line, no stack trace: ${stderr}`);
  assert.match(lines[0]!, /CHAT_DEMO_PORT=/);
  assert.deepEqual({ redis: running("redis-server"), relays: running("chat-relay") }, before, "nothing left running");
});
