// `npm run demo`: the chat demo against two local nodes on one Redis
// (Debian's redis-server, the release binary), each behind a loopback proxy
// that falls back to the other node. Open the two printed pages, chat, kill
// a node (its pid is printed) and watch both pages carry on.
import { serveChat } from "./chat-server.js";
import { startProxy, startRedis, startRelay, stopAll } from "./relay.js";

const redis = await startRedis();
const one = await startRelay({ REDIS_URL: redis.url }, "demo-node-1");
const two = await startRelay({ REDIS_URL: redis.url }, "demo-node-2");
const first = await startProxy([one.addr, two.addr]);
const second = await startProxy([two.addr, one.addr]);
const chat = await serveChat(Number(process.env["CHAT_DEMO_PORT"] ?? 8090));
const page = (proxy: { wsUrl: string }, name: string) => `${chat.url}?relay=${encodeURIComponent(proxy.wsUrl)}&room=lobby&name=${name}`;
console.log(`chat demo (Ctrl-C to stop)
  ann, via node 1 (pid ${one.process.pid}): ${page(first, "ann")}
  bob, via node 2 (pid ${two.process.pid}): ${page(second, "bob")}
  kill -9 ${one.process.pid}   # both pages keep every message, once, in order`);
const stop = async () => {
  await chat.close();
  await stopAll();
  process.exit(0);
};
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
