// Serves examples/chat on 127.0.0.1: index.html, and app.ts bundled with the
// built SDK (dist/) by esbuild. Used by the browser test and the demo.
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

export async function serveChat(port = 0): Promise<ChatServer> {
  const dir = join(repoRoot, "examples/chat");
  const bundled = await build({
    entryPoints: [join(dir, "app.ts")],
    bundle: true,
    format: "esm",
    target: "es2020",
    write: false,
    alias: { "@chat-relay/client": join(repoRoot, "clients/js/dist/index.js") },
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
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  const { port: chosen } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${chosen}/`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
