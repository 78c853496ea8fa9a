#!/usr/bin/env bash
# Build the snitun-rs npm package and test it, from a fresh clone:
#   1. npm ci: the exact devDependencies of package-lock.json (napi CLI, tsc);
#   2. npm run build: the native addon (napi build --platform --release) and
#      index.js/index.d.ts (tsc);
#   3. node --test: the tests in test/ (network tests on loopback only);
#   4. tsc --noEmit on test/types/usage.ts (the declarations as users see them);
#   5. npm pack, install the tarball into a scratch folder, and from there
#      require it with `node -e` (a whole tunnel on loopback) and type-check
#      usage.ts against the installed package.
# Needs Node >= 18 with npm, the Rust toolchain, and openssl (test certificates).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD

step() { printf -- '--- %s\n' "$*"; }
elapsed() { echo "$(( $(date +%s) - start ))s"; }
start=$(date +%s)

for tool in node npm openssl cargo; do
  command -v "$tool" >/dev/null || { echo "bindings/node/scripts/test.sh: needs $tool on PATH" >&2; exit 1; }
done

step "npm ci"
npm ci --no-audit --no-fund --loglevel=error

step "build (napi build --release, tsc) [$(elapsed)]"
npm run --silent build

step "node --test [$(elapsed)]"
npm test

step "tsc --noEmit test/types/usage.ts [$(elapsed)]"
npm run --silent typecheck

step "npm pack + install into a scratch folder [$(elapsed)]"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/snitun-node-pack.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
tarball=$(npm pack --silent --pack-destination "$scratch" | tail -n 1)
contents=$(tar tzf "$scratch/$tarball")
for file in index.js index.d.ts native.js native.d.ts package.json README.md; do
  grep -qx "package/$file" <<<"$contents" || { echo "tarball lacks $file" >&2; exit 1; }
done
grep -qE '^package/snitun-rs\..*\.node$' <<<"$contents" || { echo "tarball lacks the .node addon" >&2; exit 1; }
grep -qE '^package/(src|test|node_modules)/' <<<"$contents" && { echo "tarball carries sources or tests" >&2; exit 1; }
(
  cd "$scratch"
  npm init -y >/dev/null
  npm install --no-audit --no-fund --loglevel=error "./$tarball"
  # shellcheck disable=SC2016
  node -e '
    const snitun = require("snitun-rs");
    (async () => {
      const fernetKey = snitun.generateFernetKey();
      const server = new snitun.Server({ fernetKeys: [fernetKey], listen: "127.0.0.1:0" });
      const { listen } = await server.start();
      const t = snitun.generateToken({ fernetKey, hostname: "scratch.test" });
      const client = new snitun.Client({ server: listen[0], token: t.token, aesKey: t.aesKey, aesIv: t.aesIv, endpoint: "127.0.0.1:9" });
      await client.connect();
      for (let i = 0; i < 500 && server.peers().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      if (server.hostnames().join() !== "scratch.test") throw new Error("peer not registered: " + server.hostnames());
      await client.disconnect();
      await server.stop();
      console.log("require(\"snitun-rs\") from the installed tarball: OK (exports: " + Object.keys(snitun).sort().join(", ") + ")");
    })().catch((err) => { console.error(err); process.exit(1); });
  '
  cp "$here/test/types/usage.ts" .
  cat >tsconfig.json <<JSON
{
  "compilerOptions": {
    "target": "ES2022", "lib": ["ES2022"], "module": "commonjs", "moduleResolution": "node10",
    "strict": true, "noEmit": true,
    "typeRoots": ["$here/node_modules/@types"], "types": ["node"]
  },
  "files": ["usage.ts"]
}
JSON
  "$here/node_modules/.bin/tsc" -p tsconfig.json
  echo "tsc --noEmit against the installed package: OK"
)

step "Node bindings: all passed [$(elapsed)]"
