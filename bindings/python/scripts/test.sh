#!/usr/bin/env bash
# Build the snitun-rs wheel once (abi3) and run the Python tests in clean
# venvs of CPython 3.11 and 3.13. Venvs live under target/ and are reused
# when their requirements have not changed (marker files); the wheel is
# reinstalled every run.
#
#   SNITUN_PY311=/path/python3.11  SNITUN_PY313=/path/python3.13   override interpreters
#   SNITUN_PY_PROFILE=release      build the wheel optimised (default: dev profile, faster to build)
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$PWD
target="${CARGO_TARGET_DIR:-$root/target}"

. scripts/lib/prereqs.sh
require_python 3.11 SNITUN_PY311
require_python 3.13 SNITUN_PY313
py311=$SNITUN_PY311
py313=$SNITUN_PY313

maturin_req='maturin>=1.16,<1.17'
test_reqs=(pytest pytest-asyncio cryptography aiohttp)
ref_req='snitun==0.47.0' # the reference, for interop tests; needs Python >= 3.13

make_venv() { # name python extra-requirements...
  local dir="$target/$1" py=$2; shift 2
  local want="$("$py" -V) $* ${test_reqs[*]}"
  if [ ! -f "$dir/.snitun-ready" ] || [ "$(cat "$dir/.snitun-ready")" != "$want" ]; then
    rm -rf "$dir"
    "$py" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "${test_reqs[@]}" "$@"
    echo "$want" >"$dir/.snitun-ready"
  fi
}

make_venv py311 "$py311" "$maturin_req"
make_venv py313 "$py313" "$ref_req"

profile_flag=()
if [ "${SNITUN_PY_PROFILE:-dev}" = release ]; then profile_flag=(--release); fi
rm -rf "$target/wheels-py"
CARGO_TARGET_DIR="$target" "$target/py311/bin/maturin" build "${profile_flag[@]}" --locked \
  -m bindings/python/Cargo.toml -o "$target/wheels-py" -q
wheel=$(ls "$target"/wheels-py/snitun_rs-*-abi3-*.whl)

# `pip install ./bindings/python` (maturin as the PEP 517 backend) into a
# fresh venv must work too; same target dir and profile, so cargo reuses
# the build above.
echo "--- pip install ./bindings/python into a fresh CPython 3.11 venv"
rm -rf "$target/py-pip"
"$py311" -m venv "$target/py-pip"
CARGO_TARGET_DIR="$target" MATURIN_PEP517_ARGS="${profile_flag[*]:---profile dev}" \
  "$target/py-pip/bin/python" -m pip install -q --disable-pip-version-check ./bindings/python
"$target/py-pip/bin/python" -c "
import snitun_rs
from snitun_rs.utils.aiohttp_client import SniTunClientAioHttp
from snitun_rs.client.client_peer import ClientPeer
from snitun_rs.server.run import SniTunServer
assert snitun_rs.PROTOCOL_VERSION == 2
print('pip install ok:', snitun_rs.__file__)
"
rm -rf "$target/py-pip"

for venv in py311 py313; do
  echo "--- pytest on $("$target/$venv/bin/python" -V)"
  "$target/$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
  # Two malloc arenas: the memory tests read RSS, which glibc's per-thread
  # arenas would blur with tens of MiB of freed memory.
  (cd bindings/python && MALLOC_ARENA_MAX=2 "$target/$venv/bin/python" -m pytest -q -p no:cacheprovider tests)
done
