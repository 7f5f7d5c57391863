// Bundle size, minified + gzip -9, measured the same way for every SDK:
// esbuild bundles everything the package exports for the browser, minified;
// zlib gzips it at level 9. Run: npm run bench:size
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const packages = [
  ["@chat-relay/client", join(root, "dist/index.js")],
  ["centrifuge", "centrifuge"],
  ["socket.io-client", "socket.io-client"],
];
import { readFileSync } from "node:fs";
const version = (name) =>
  JSON.parse(readFileSync(name === "@chat-relay/client" ? join(root, "package.json") : join(root, "node_modules", name, "package.json"), "utf8")).version;
const rows = [];
for (const [name, entry] of packages) {
  const result = await build({
    stdin: { contents: `export * from ${JSON.stringify(entry)};`, resolveDir: root, loader: "js" },
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: "es2020",
    write: false,
    logLevel: "error",
  });
  const code = result.outputFiles[0].contents;
  rows.push({ name, version: version(name), minified: code.length, gzip: gzipSync(code, { level: 9 }).length });
}
console.log(`| package | version | minified (B) | min + gzip -9 (B) | vs @chat-relay/client |`);
console.log(`| --- | --- | --- | --- | --- |`);
for (const row of rows) {
  console.log(`| ${row.name} | ${row.version} | ${row.minified} | ${row.gzip} | ${(row.gzip / rows[0].gzip).toFixed(2)}x |`);
}
console.log(JSON.stringify({ esbuild: (await import("esbuild")).version, rows }));
