// Socket.IO peer for chat-relay's load tests: one node of a Socket.IO 4
// cluster sharing Redis through @socket.io/redis-streams-adapter, with
// connection state recovery, as the adapter's documentation recommends
// for clients that must not miss messages across reconnects.
//
//   PORT=3000 REDIS_URL=redis://127.0.0.1:6379 node server.js
//
// Events: `join` (room, ack) and `publish` (room, payload) -> `message`
// (payload) to everyone in the room, the publisher included.
"use strict";
const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

async function main() {
  const redis = createClient({ url: process.env.REDIS_URL });
  redis.on("error", (error) => console.error("redis:", error.message));
  await redis.connect();
  const http = createServer();
  const io = new Server(http, {
    transports: ["websocket"],
    serveClient: false,
    connectionStateRecovery: {
      maxDisconnectionDuration: 2 * 60 * 1000,
      skipMiddlewares: true,
    },
    // The adapter trims its one shared stream to maxLen (default 10,000):
    // under a load of thousands of messages a second that is a couple of
    // seconds, and a node lagging longer loses what was trimmed. A larger
    // stream is the documented remedy.
    // Its XREAD blocks 5 s by default, exactly node-redis 6's default
    // command timeout: on a quiet stream the empty answer races the
    // timeout, and the unhandled TimeoutError ends the process. Blocking
    // for less keeps the two apart.
    adapter: createAdapter(redis, { maxLen: 100000, blockTimeInMs: 1000 }),
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack();
    });
    socket.on("publish", (room, payload) => {
      io.to(room).emit("message", payload);
    });
  });
  http.listen(Number(process.env.PORT), "127.0.0.1", () => {
    console.log(`socket.io listening on 127.0.0.1:${process.env.PORT}`);
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
