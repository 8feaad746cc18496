#!/usr/bin/env bash
# Sippy B2BUA (PyPI "sippy") in a virtual environment of its own, bench/.venvs/sippy,
# so that none of its dependencies meet twinline's. The harness runs its b2bua_simple.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=2.5.0
VENV=.venvs/sippy
PY=${PYTHON:-python3}
stamp="$VENV/.installed-sippy-$VERSION"
[ -e "$stamp" ] && exit 0
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "sippy==$VERSION"
"$VENV/bin/b2bua_simple" -h >/dev/null 2>&1 || true  # its getopt usage: proves it imports
test -x "$VENV/bin/b2bua_simple"
touch "$stamp"
echo "Sippy B2BUA $VERSION installed in bench/$VENV" >&2
