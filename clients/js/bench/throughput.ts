// Messages per second received through the SDK against a raw `ws` client,
// same relay, same load, in the same run. A relay on the memory broker; a
// publisher (raw ws, pipelined) sends MESSAGES small messages as fast as the
// relay takes them; one subscriber process receives them, either through a
// raw ws socket (JSON.parse of each frame: the least any app does) or
// through RelayClient. Modes alternate, ROUNDS each; every subscriber
// reports its wall-clock rate and its own CPU per message
// (process.cpuUsage). Run: npm run bench:throughput
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { startRelay, stopAll } from "../harness/relay.js";

const MESSAGES = Number(process.env["MESSAGES"] ?? 50_000);
const ROUNDS = Number(process.env["ROUNDS"] ?? 3);
const here = fileURLToPath(new URL("./subscriber.js", import.meta.url));

interface Result {
  mode: string;
  received: number;
  wallMs: number;
  cpuMs: number;
}

async function publishAll(url: string, room: string): Promise<void> {
  const socket = new WebSocket(url);
  await new Promise((resolve) => socket.once("open", resolve));
  let acked = 0;
  let sent = 0;
  await new Promise<void>((resolve) => {
    const pump = () => {
      while (sent < MESSAGES && sent - acked < 256) {
        socket.send(JSON.stringify({ type: "publish", room, body: { n: sent, text: "a short chat line" }, req: sent }));
        sent += 1;
      }
    };
    socket.on("message", (data) => {
      const frame = JSON.parse(String(data)) as { type: string };
      if (frame.type === "ack") {
        acked += 1;
        if (acked === MESSAGES) resolve();
        else pump();
      } else if (frame.type === "error") {
        throw new Error(`publish failed: ${String(data)}`);
      }
    });
    pump();
  });
  socket.close();
}

async function round(url: string, mode: string, index: number): Promise<Result> {
  const room = `bench-${mode}-${index}`;
  const child = spawn(process.execPath, [here, mode, url, room, String(MESSAGES)], { stdio: ["ignore", "pipe", "inherit"] });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
  await new Promise<void>((resolve) => {
    const check = () => (output.includes("ready\n") ? resolve() : setTimeout(check, 10));
    check();
  });
  await publishAll(url, room);
  await new Promise((resolve) => child.once("exit", resolve));
  const line = output.split("\n").find((text) => text.startsWith("{"));
  if (line === undefined) throw new Error(`${mode} subscriber printed no result: ${output}`);
  return { mode, ...(JSON.parse(line) as Omit<Result, "mode">) };
}

const relay = await startRelay({ RELAY_PUBLISH_RATE: "10000000", RELAY_OUTBOUND_QUEUE: "200000" }, "bench");
const results: Result[] = [];
for (let index = 0; index < ROUNDS; index += 1) {
  for (const mode of ["raw", "sdk"]) results.push(await round(relay.wsUrl, mode, index));
}
await stopAll();
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const summary = (mode: string) => {
  const mine = results.filter((result) => result.mode === mode);
  return {
    perSecond: median(mine.map((result) => (result.received / result.wallMs) * 1000)),
    perCpuSecond: median(mine.map((result) => (result.received / result.cpuMs) * 1000)),
  };
};
const raw = summary("raw");
const sdk = summary("sdk");
console.log(`${MESSAGES} messages, ${ROUNDS} rounds per mode, medians; node ${process.version}`);
console.log(`| subscriber | messages/s (wall) | messages per CPU-second of the subscriber |`);
console.log(`| --- | --- | --- |`);
console.log(`| raw ws + JSON.parse | ${raw.perSecond.toFixed(0)} | ${raw.perCpuSecond.toFixed(0)} |`);
console.log(`| @chat-relay/client | ${sdk.perSecond.toFixed(0)} | ${sdk.perCpuSecond.toFixed(0)} |`);
console.log(`| SDK / raw | ${(sdk.perSecond / raw.perSecond).toFixed(2)}x | ${(sdk.perCpuSecond / raw.perCpuSecond).toFixed(2)}x |`);
console.log(JSON.stringify({ messages: MESSAGES, rounds: ROUNDS, results }));
