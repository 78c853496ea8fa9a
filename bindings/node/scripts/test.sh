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

step "pack as released (main + platform package) and install into a scratch folder [$(elapsed)]"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/snitun-node-pack.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# The same layout scripts/dist releases: snitun-rs (JS, no addon) with an
# optional dependency on @snitun-rs/<platform> (the addon this build made).
version=$(node -p 'require("./package.json").version')
platform=$(node -p 'require("./platforms.js").currentName()')
triple=$(node -p "require('./platforms.js').PLATFORMS.find((p) => p.name === '$platform').triple")
node ../../scripts/lib/node-package.js main "$version" "$scratch/main"
node ../../scripts/lib/node-package.js platform "$triple" "$version" "$scratch/platform" "snitun-rs.$platform.node"
(cd "$scratch/main" && npm pack --silent --pack-destination "$scratch" >/dev/null)
(cd "$scratch/platform" && npm pack --silent --pack-destination "$scratch" >/dev/null)
main_tgz="snitun-rs-$version.tgz"
platform_tgz="snitun-rs-$platform-$version.tgz"
contents=$(tar tzf "$scratch/$main_tgz")
for file in index.js index.d.ts native.js native.d.ts platforms.js package.json README.md LICENSE; do
  grep -qx "package/$file" <<<"$contents" || { echo "$main_tgz lacks $file" >&2; exit 1; }
done
grep -qE '\.node$' <<<"$contents" && { echo "$main_tgz carries an addon" >&2; exit 1; }
grep -qE '^package/(src|test|node_modules)/' <<<"$contents" && { echo "$main_tgz carries sources or tests" >&2; exit 1; }
grep -qx "package/snitun-rs.$platform.node" <<<"$(tar tzf "$scratch/$platform_tgz")" ||
  { echo "$platform_tgz lacks the addon" >&2; exit 1; }
(
  cd "$scratch"
  npm init -y >/dev/null
  npm install --no-audit --no-fund --loglevel=error "./$platform_tgz" "./$main_tgz"
  node "$here/scripts/smoke.js" snitun-rs
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
