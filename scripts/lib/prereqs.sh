# Sourced by the repo's scripts: find the tools they need, and stop with one
# line naming what to install when one is missing. Messages name Debian /
# Ubuntu packages, the platform the README's requirement list is for.

# require TOOL HINT: TOOL must be on PATH.
require() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "${0##*/}: '$1' not found: install $2" >&2
  exit 1
}

# find_python X.Y: print the path of a CPython X.Y (python X.Y on PATH, then
# pyenv's), or fail silently.
find_python() {
  local want=$1 cand
  for cand in "python$want" python3 python; do
    if command -v "$cand" >/dev/null 2>&1 &&
      "$cand" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$want'.split('.'))))" 2>/dev/null; then
      command -v "$cand"
      return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for cand in $(pyenv versions --bare 2>/dev/null | grep -E "^$want(\.|$)" | sort -rV); do
      if [ -x "$(pyenv prefix "$cand")/bin/python" ]; then
        echo "$(pyenv prefix "$cand")/bin/python"
        return 0
      fi
    done
  fi
  return 1
}

# require_python X.Y VAR: set VAR to a CPython X.Y with venv support (VAR's
# current value, when set, wins), or stop naming what to install.
require_python() {
  local want=$1 var=$2 py
  py="${!var:-$(find_python "$want" || true)}"
  if [ -z "$py" ]; then
    echo "${0##*/}: CPython $want not found: install python$want and python$want-venv (Debian/Ubuntu), or 'pyenv install $want', or set $var=/path/to/python$want" >&2
    exit 1
  fi
  if ! "$py" -c "import venv, ensurepip" 2>/dev/null; then
    echo "${0##*/}: $py cannot make venvs: install python$want-venv" >&2
    exit 1
  fi
  printf -v "$var" '%s' "$py"
}

# require_node MAJOR: node >= MAJOR and npm on PATH.
require_node() {
  require node "nodejs (>= $1) and npm"
  require npm "npm"
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt "$1" ]; then
    echo "${0##*/}: node $(node --version) is too old: install Node.js >= $1" >&2
    exit 1
  fi
}
