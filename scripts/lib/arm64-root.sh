#!/usr/bin/env bash
# Make DIR a root holding Debian's arm64 CPython 3.11 and/or Node.js, to run
# arm64 release artifacts under qemu-user on an x86-64 Debian host:
#
#   scripts/lib/arm64-root.sh DIR [python] [node]     (no component: both)
#   scripts/lib/arm64-run.sh DIR python3.11 script.py ...
#
# Nothing arm64 is installed on the host: `apt-get install python3:arm64`
# would remove the host's own python3/nodejs. Instead the host gets the arm64
# architecture in dpkg (for the package lists) and qemu-user-static; the arm64
# .debs are fetched with `apt-get download` and unpacked with `dpkg -x` into
# DIR. Programs then run as `QEMU_LD_PREFIX=DIR qemu-aarch64-static
# DIR/usr/bin/python3.11`, which needs no binfmt_misc (arm64-run.sh does it).
#
# A marker file per component in DIR records what was unpacked; a second run
# with the same package list downloads nothing. Needs root (or sudo) only for
# apt-get update/install and `dpkg --add-architecture`, and only when they
# have not been done yet.
set -euo pipefail

me=${0##*/}
die() { echo "$me: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $me DIR [python] [node]"
dir=$1
shift
components=("$@")
[ ${#components[@]} -gt 0 ] || components=(python node)
for c in "${components[@]}"; do
  case $c in python | node) ;; *) die "unknown component '$c' (want: python, node)" ;; esac
done

# What each program needs, found from the Depends of its Debian bookworm
# packages (and the libraries its ELF files and Python's extension modules
# link), all arm64 unless listed under *_all (Architecture: all).
# The C runtime every program needs:
base_pkgs=(libc6 libgcc-s1 libstdc++6 zlib1g libssl3)
# CPython 3.11 with the extension modules of its standard library (_ssl,
# _ctypes, _lzma, _bz2, _sqlite3, _uuid, readline/_curses, _dbm, nis, ...):
python_pkgs=(python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libexpat1 libffi8 libbz2-1.0 liblzma5 libcrypt1 libsqlite3-0 libuuid1 libtinfo6
  libncursesw6 libreadline8 libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3
  libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1)
python_all=()
# Node 18 (libnode) and the JS modules Debian's node loads from /usr/share/nodejs:
node_pkgs=(nodejs libnode108 libuv1 libbrotli1 libc-ares2 libicu72 libnghttp2-14)
node_all=(node-acorn node-cjs-module-lexer node-undici)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "needs root (or sudo) for: $*"
  fi
}

updated=
apt_update() {
  [ -n "$updated" ] && return 0
  as_root apt-get update -qq || die "apt-get update failed"
  updated=1
}

# qemu-user-static: the emulator, used directly (binfmt_misc not needed).
if ! command -v qemu-aarch64-static >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "qemu-aarch64-static not on PATH and no apt-get to install qemu-user-static"
  apt_update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null ||
    die "could not install qemu-user-static (apt-get install failed)"
  command -v qemu-aarch64-static >/dev/null 2>&1 || die "qemu-user-static installed but qemu-aarch64-static is not on PATH"
fi

marker() { echo "$dir/.arm64-root-$1"; }
want() { # component -> the marker's content
  local -n arch=${1}_pkgs all=${1}_all
  echo "bookworm arm64: ${base_pkgs[*]} ${arch[*]} | all: ${all[*]}"
}
program() { case $1 in python) echo usr/bin/python3.11 ;; node) echo usr/bin/node ;; esac; }

todo=()
for c in "${components[@]}"; do
  m=$(marker "$c")
  if [ -f "$m" ] && [ "$(cat "$m")" = "$(want "$c")" ] && [ -x "$dir/$(program "$c")" ]; then
    continue
  fi
  todo+=("$c")
done
[ ${#todo[@]} -gt 0 ] || exit 0

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script needs a Debian/Ubuntu host"
command -v dpkg >/dev/null 2>&1 || die "dpkg not found: this script needs a Debian/Ubuntu host"

# The arm64 package lists.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  as_root dpkg --add-architecture arm64 || die "dpkg --add-architecture arm64 failed"
  updated= # the lists must now be fetched for arm64 too
  apt_update
elif ! apt-cache show libc6:arm64 >/dev/null 2>&1; then
  apt_update
fi

pkgs=()
for c in "${todo[@]}"; do
  declare -n arch=${c}_pkgs all=${c}_all
  for p in "${base_pkgs[@]}" "${arch[@]}"; do pkgs+=("$p:arm64"); done
  for p in "${all[@]}"; do pkgs+=("$p"); done
  unset -n arch all
done
# Unique, order kept.
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | awk '!seen[$0]++')

debs=$(mktemp -d "${TMPDIR:-/tmp}/arm64-debs.XXXXXX")
trap 'rm -rf "$debs"' EXIT
# Let apt's _apt sandbox user write here (else apt warns and downloads as root).
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$debs"; fi

fetched() { # pkg[:arch] -> whether its .deb is in $debs
  local name=${1%%:*} arch=all
  [ "$1" = "$name" ] || arch=${1#*:}
  compgen -G "$debs/${name}_*_${arch}.deb" >/dev/null
}

download() { (cd "$debs" && apt-get download -qq "$@" >/dev/null 2>>"$debs/err.log") || true; }
download "${pkgs[@]}"
missing=()
for p in "${pkgs[@]}"; do fetched "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  # An unknown package stops the whole batch: set those apart, fetch the rest.
  # (One apt-cache call: each apt start takes seconds on a busy machine.)
  known=" $(apt-cache policy "${missing[@]}" 2>/dev/null |
    awk '/^[^ ].*:$/ { name = substr($0, 1, length($0) - 1) }
         $1 == "Candidate:" && $2 != "(none)" { printf "%s ", name }')"
  unknown=() rest=()
  for p in "${missing[@]}"; do
    case $known in *" $p "*) rest+=("$p") ;; *) unknown+=("$p") ;; esac
  done
  failed=()
  if [ ${#rest[@]} -gt 0 ]; then
    download "${rest[@]}"
    for p in "${rest[@]}"; do fetched "$p" || failed+=("$p"); done
  fi
  if [ ${#failed[@]} -gt 0 ] && [ -z "$updated" ]; then
    # Stale lists name versions the mirror no longer has: refresh, retry once.
    apt_update
    rest=("${failed[@]}") failed=()
    download "${rest[@]}"
    for p in "${rest[@]}"; do fetched "$p" || failed+=("$p"); done
  fi
  msg=
  [ ${#unknown[@]} -eq 0 ] || msg="not in the apt lists (is this Debian bookworm?): ${unknown[*]}"
  if [ ${#failed[@]} -gt 0 ]; then
    reason=$(grep -m1 '^E: Failed' "$debs/err.log" || true)
    msg="${msg:+$msg; }download failed: ${failed[*]}${reason:+ ($reason)}"
  fi
  [ -z "$msg" ] || die "missing Debian arm64 package(s) for $dir: $msg"
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
for deb in "$debs"/*.deb; do
  dpkg -x "$deb" "$dir" || die "dpkg -x failed on ${deb##*/}"
done

# Check that each program starts and loads what it links (a missing library
# shows up here, named by the loader), then mark the component done.
check() {
  case $1 in
    python) set -- "$dir/usr/bin/python3.11" -c \
      'import ssl, ctypes, lzma, bz2, zlib, sqlite3, hashlib, decimal, asyncio, uuid, readline' ;;
    node) set -- "$dir/usr/bin/node" -e 'require("crypto"); require("zlib"); require("net")' ;;
  esac
  QEMU_LD_PREFIX=$dir qemu-aarch64-static "$@" 2>"$debs/check.log" ||
    die "the arm64 ${1##*/} in $dir does not start: $(head -n1 "$debs/check.log")"
}
for c in "${todo[@]}"; do
  [ -x "$dir/$(program "$c")" ] || die "$(program "$c") missing from $dir after unpacking"
  check "$c"
  want "$c" >"$(marker "$c")"
done
