// Serves an example page on 127.0.0.1: its index.html, and its app.ts
// bundled by esbuild (examples/chat with the built SDK, dist/;
// examples/spring-stomp-chat with @stomp/stompjs and sockjs-client from
// this package's node_modules). Used by the browser tests and the demo.
import { build } from "esbuild";
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";

import { repoRoot } from "./relay.js";

export interface ChatServer {
  readonly url: string;
  close(): Promise<void>;
}

export async function serveChat(port = 0, example = "chat"): Promise<ChatServer> {
  const dir = join(repoRoot, "examples", example);
  const bundled = await build({
    entryPoints: [join(dir, "app.ts")],
    bundle: true,
    format: "esm",
    target: "es2020",
    write: false,
    alias: { "@chat-relay/client": join(repoRoot, "clients/js/dist/index.js") },
    nodePaths: [join(repoRoot, "clients/js/node_modules")],
    // sockjs-client reads Node's `global`.
    define: { global: "globalThis" },
    logLevel: "warning",
  });
  const app = bundled.outputFiles[0]!.text;
  const page = readFileSync(join(dir, "index.html"), "utf8");
  const server: Server = createServer((request, response) => {
    const path = new URL(request.url ?? "/", "http://x").pathname;
    if (path === "/" || path === "/index.html") {
      response.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page);
    } else if (path === "/app.js") {
      response.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(app);
    } else {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port: chosen } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${chosen}/`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
