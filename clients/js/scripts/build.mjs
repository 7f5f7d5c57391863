// Builds dist/: ESM (index.js) and CJS (index.cjs) bundles with esbuild,
// a minified ESM bundle for size checks (index.min.js), and the .d.ts
// types with tsc. No runtime dependency is bundled: the SDK has none.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
rmSync(join(root, "dist"), { recursive: true, force: true });
const common = { entryPoints: [join(root, "src/index.ts")], bundle: true, target: "es2020", logLevel: "warning" };
await build({ ...common, format: "esm", outfile: join(root, "dist/index.js"), sourcemap: true });
await build({ ...common, format: "cjs", outfile: join(root, "dist/index.cjs"), sourcemap: true });
await build({ ...common, format: "esm", outfile: join(root, "dist/index.min.js"), minify: true });
execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", join(root, "tsconfig.json")], { stdio: "inherit" });
