// Real parts for the integration and browser tests: the relay's release
// binary as processes on 127.0.0.1, Debian's redis-server (the binary the
// Rust tests' Redis image packs), and a loopback TCP proxy that sends each
// connection to the first backend that accepts it, so one URL reaches
// whichever node is alive. Everything started here is stopped by `stopAll`.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, connect, type Server, type Socket, type AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { createHmac } from "node:crypto";

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "../../../..");
const started: Array<() => Promise<void> | void> = [];

export function relayBinary(): string {
  const binary = join(repoRoot, "target/release/chat-relay");
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run cargo build --release first (scripts/test does)`);
  return binary;
}

export interface Relay {
  readonly addr: string;
  readonly wsUrl: string;
  readonly httpUrl: string;
  readonly process: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly log: string[];
  kill(signal: NodeJS.Signals): void;
}

export async function startRelay(env: Record<string, string> = {}, nodeId = "sdk-test"): Promise<Relay> {
  const clean: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !name.startsWith("RELAY_") && name !== "REDIS_URL") clean[name] = value;
  }
  const child = spawn(relayBinary(), [], {
    env: {
      ...clean,
      RELAY_LISTEN: "127.0.0.1:0",
      RELAY_LOG_FORMAT: "json",
      RELAY_NODE_ID: nodeId,
      RELAY_AUTH: "none",
      RELAY_MAX_CONNECTIONS_PER_CLIENT: "0",
      RUST_LOG: "info",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  // Stopped with the rest even when it never comes up.
  const kill = (signal: NodeJS.Signals): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  started.push(async () => {
    kill("SIGKILL");
    await exited;
  });
  const log: string[] = [];
  const lines = createInterface({ input: child.stdout! });
  const addr = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${nodeId} did not log its listen address in 10 s`)), 10_000);
    lines.on("line", (line) => {
      log.push(line);
      try {
        const entry = JSON.parse(line) as { listen?: string };
        if (entry.listen !== undefined) {
          clearTimeout(timer);
          resolve(entry.listen);
        }
      } catch {
        // not JSON
      }
    });
    void exited.then((code) => reject(new Error(`${nodeId} exited (${code}) before listening`)));
  });
  const relay: Relay = {
    addr,
    wsUrl: `ws://${addr}/v1/ws`,
    httpUrl: `http://${addr}`,
    process: child,
    exited,
    log,
    kill,
  };
  return relay;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface Redis {
  readonly url: string;
}

export async function startRedis(): Promise<Redis> {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => resolve());
    // A binary that never started has nothing to wait for.
    child.once("error", () => resolve());
  });
  // Stopped with the rest even when it never comes up.
  started.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("redis-server did not start in 10 s (is Debian's redis-server installed?)")), 10_000);
    child.once("error", (error) => reject(new Error(`cannot start redis-server: ${error.message}; install Debian's redis-server`)));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (line.includes("Ready to accept connections")) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { url: `redis://127.0.0.1:${port}` };
}

/** A loopback proxy: each connection goes to the first of `backends` that accepts it. */
export interface Proxy {
  readonly port: number;
  readonly wsUrl: string;
  readonly httpUrl: string;
  /** The backends, in order of preference; may be changed. */
  backends: string[];
  close(): Promise<void>;
}

export async function startProxy(backends: string[]): Promise<Proxy> {
  const open = new Set<Socket>();
  const server: Server = createServer((client) => {
    open.add(client);
    client.on("close", () => open.delete(client));
    client.on("error", () => client.destroy());
    client.pause();
    const tryBackend = (index: number) => {
      const address = proxy.backends[index];
      if (address === undefined) {
        client.destroy();
        return;
      }
      const [host, port] = address.split(":") as [string, string];
      const upstream = connect({ host, port: Number(port) });
      upstream.once("connect", () => {
        open.add(upstream);
        upstream.on("close", () => {
          open.delete(upstream);
          client.destroy();
        });
        client.on("close", () => upstream.destroy());
        upstream.on("error", () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      upstream.once("error", () => {
        if (upstream.connecting || !open.has(upstream)) tryBackend(index + 1);
      });
    };
    tryBackend(0);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const proxy: Proxy = {
    port,
    wsUrl: `ws://127.0.0.1:${port}/v1/ws`,
    httpUrl: `http://127.0.0.1:${port}`,
    backends,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of open) socket.destroy();
        server.close(() => resolve());
      }),
  };
  started.push(() => proxy.close());
  return proxy;
}

/** Stops everything the tests started, newest first. */
export async function stopAll(): Promise<void> {
  while (started.length > 0) {
    const stop = started.pop()!;
    await stop();
  }
}

/** Every message of a room, oldest first, read page by page (with `token` when the relay checks JWTs). */
export async function fullHistory(httpUrl: string, room: string, token?: string): Promise<Array<{ id: string; prev: string; body: unknown; cmid?: string }>> {
  const messages: Array<{ id: string; prev: string; body: unknown; cmid?: string }> = [];
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
  let after = "0-0";
  for (;;) {
    const response = await fetch(`${httpUrl}/v1/rooms/${room}/messages?after=${after}&limit=1000`, { headers });
    if (!response.ok) throw new Error(`history of ${room} answered ${response.status}: ${await response.text()}`);
    const page = (await response.json()) as { messages: Array<{ id: string; prev: string; body: unknown; cmid?: string }>; more?: boolean };
    messages.push(...page.messages);
    const last = page.messages[page.messages.length - 1];
    // A page also ends early at the relay's byte budget (`more`).
    if (last === undefined || (page.messages.length < 1000 && page.more !== true)) return messages;
    after = last.id;
  }
}

/** Publishes over HTTP (the test's own publisher). */
export async function httpPublish(httpUrl: string, room: string, body: unknown): Promise<{ id: string }> {
  const response = await fetch(`${httpUrl}/v1/rooms/${room}/messages`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ body }),
  });
  if (response.status !== 201) throw new Error(`publish answered ${response.status}: ${await response.text()}`);
  return (await response.json()) as { id: string };
}

/** Waits until `check` holds, polling; fails with `what` after `timeoutMs`. */
export async function waitFor(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** An HS256 JWT for the relay's test secret. */
export function hs256(secret: string, claims: Record<string, unknown>): string {
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** Asserts that `received` equals the room's `history` id by id, and that the prev chain holds. */
export function assertExactSequence(who: string, received: Array<{ id: string; prev: string }>, history: Array<{ id: string; prev: string }>): void {
  const got = received.map((message) => message.id);
  const want = history.map((message) => message.id);
  if (got.length !== want.length || got.some((id, index) => id !== want[index])) {
    const first = got.findIndex((id, index) => id !== want[index]);
    throw new Error(`${who}: ${got.length} messages, history has ${want.length}; first difference at ${first}: got ${got[first]}, want ${want[first]}`);
  }
  for (let index = 1; index < received.length; index += 1) {
    if (received[index]!.prev !== received[index - 1]!.id) throw new Error(`${who}: prev chain breaks at ${received[index]!.id}`);
  }
}
