// `npm run demo`: the chat demo against two local nodes on one Redis
// (Debian's redis-server, the release binary), each behind a loopback proxy
// that falls back to the other node. Open the two printed pages, chat, kill
// a node (its pid is printed) and watch both pages carry on.
import { serveChat } from "./chat-server.js";
import { startProxy, startRedis, startRelay, stopAll } from "./relay.js";

/** What to do about the ways the demo fails to start, in one line each. */
function advice(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  if (/EADDRINUSE/.test(text)) {
    return `the demo's page port is taken (${text}); free it or pick another: CHAT_DEMO_PORT=8091 npm run demo`;
  }
  if (/redis-server/.test(text) && /ENOENT/.test(text)) {
    return "redis-server is missing: install Debian's redis-server (apt-get install redis-server), then run npm run demo again";
  }
  return text;
}

let chat: Awaited<ReturnType<typeof serveChat>> | undefined;
const stop = async (code: number): Promise<never> => {
  await chat?.close().catch(() => undefined);
  await stopAll();
  process.exit(code);
};
process.on("SIGINT", () => void stop(0));
process.on("SIGTERM", () => void stop(0));

try {
  const redis = await startRedis();
  const one = await startRelay({ REDIS_URL: redis.url }, "demo-node-1");
  const two = await startRelay({ REDIS_URL: redis.url }, "demo-node-2");
  const first = await startProxy([one.addr, two.addr]);
  const second = await startProxy([two.addr, one.addr]);
  chat = await serveChat(Number(process.env["CHAT_DEMO_PORT"] ?? 8090));
  const url = chat.url;
  const page = (proxy: { wsUrl: string }, name: string) => `${url}?relay=${encodeURIComponent(proxy.wsUrl)}&room=lobby&name=${name}`;
  console.log(`chat demo (Ctrl-C to stop)
  ann, via node 1 (pid ${one.process.pid}): ${page(first, "ann")}
  bob, via node 2 (pid ${two.process.pid}): ${page(second, "bob")}
  kill -9 ${one.process.pid}   # both pages keep every message, once, in order`);
} catch (error) {
  // Whatever started is stopped: no redis-server or relay is left behind.
  console.error(`chat demo: ${advice(error)}`);
  await stop(1);
}
