#!/usr/bin/env bash
# Run an arm64 program of a root made by arm64-root.sh, under qemu-user,
# without binfmt_misc:
#
#   scripts/lib/arm64-run.sh DIR PROGRAM [ARGS...]
#
# PROGRAM is a name in DIR/usr/bin (python3.11, node) or a path to an arm64
# executable. QEMU_LD_PREFIX (not qemu's -L) points the emulator at DIR, so
# the loader, libraries and /usr/lib/python3.11 etc. are found there; the
# variable is inherited, but an arm64 child process (e.g. sys.executable)
# starts only where binfmt_misc runs arm64 binaries through qemu.
set -euo pipefail

me=${0##*/}
[ $# -ge 2 ] || { echo "usage: $me DIR PROGRAM [ARGS...]" >&2; exit 2; }
dir=$1 prog=$2
shift 2
case $prog in
  */*) ;;
  *) prog=$dir/usr/bin/$prog ;;
esac
[ -d "$dir" ] || { echo "$me: no arm64 root at $dir (make it with arm64-root.sh)" >&2; exit 1; }
[ -x "$prog" ] || { echo "$me: $prog not found or not executable (make the root with arm64-root.sh DIR python|node)" >&2; exit 1; }
command -v qemu-aarch64-static >/dev/null 2>&1 ||
  { echo "$me: qemu-aarch64-static not on PATH: install qemu-user-static (arm64-root.sh does)" >&2; exit 1; }
QEMU_LD_PREFIX=$(cd "$dir" && pwd) exec qemu-aarch64-static "$prog" "$@"
