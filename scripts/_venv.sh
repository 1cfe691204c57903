# Sourced by scripts/demo and scripts/test: make .venv (or $GRIDSUBMIT_VENV) and install
# gridsubmit into it with the extras named in $1. Debian's system Python refuses global pip
# installs (PEP 668), hence the virtual environment.
set -euo pipefail
VENV=${GRIDSUBMIT_VENV:-.venv}
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || { echo "gridsubmit: $PYTHON not found; install Python 3.10 or newer" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "gridsubmit: needs Python >= 3.10" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    # Debian ships venv support separately (python3-venv)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "gridsubmit: installing python3-venv"
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv "$VENV"
    else
      echo "gridsubmit: '$PYTHON -m venv' failed; on Debian: sudo apt-get install python3-venv" >&2; exit 1
    fi
  fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${1:-}"
