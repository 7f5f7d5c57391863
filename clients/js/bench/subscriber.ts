// One subscriber of the throughput benchmark, in its own process so that
// its CPU time is its own: `raw` (ws + JSON.parse) or `sdk` (RelayClient).
// Prints "ready" once subscribed, then one JSON line with what it measured.
import WebSocket from "ws";

import { RelayClient, type WebSocketConstructor } from "@chat-relay/client";

const [mode, url, room, countText] = process.argv.slice(2) as [string, string, string, string];
const expected = Number(countText);
let received = 0;
let startedAt = 0;
let cpuAtStart = process.cpuUsage();

function onOne(): void {
  if (received === 0) {
    startedAt = performance.now();
    cpuAtStart = process.cpuUsage();
  }
  received += 1;
  if (received === expected) {
    const wallMs = performance.now() - startedAt;
    const cpu = process.cpuUsage(cpuAtStart);
    console.log(JSON.stringify({ received, wallMs, cpuMs: (cpu.user + cpu.system) / 1000 }));
    process.exit(0);
  }
}

if (mode === "raw") {
  const socket = new WebSocket(url);
  socket.on("open", () => socket.send(JSON.stringify({ type: "subscribe", room, req: 1 })));
  socket.on("message", (data) => {
    const frame = JSON.parse(String(data)) as { type: string; room?: string };
    if (frame.type === "subscribed") console.log("ready");
    else if (frame.type === "message" && frame.room === room) onOne();
  });
} else {
  const client = new RelayClient({ url, WebSocket: WebSocket as unknown as WebSocketConstructor });
  client.subscribe(room, { onSubscribed: () => console.log("ready"), onMessage: () => onOne() });
}
