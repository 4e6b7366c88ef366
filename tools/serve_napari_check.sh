#!/usr/bin/env bash
# Drive `voxtell serve` with the real napari-voxtell 0.2.0 remote client (headless), see
# tools/serve_napari_check.py. Makes tools/.venv-napari once (napari-voxtell and nnunetv2 with
# --no-deps, so neither napari, qt nor torch is installed), builds target/debug/voxtell unless
# --binary is given, and runs the check. Needs python3 (3.10+) and PyPI; CI never runs it.
# Exits non-zero on any failed check. Arguments go to the Python script (--binary BIN).
# The venv also serves tools/serve_load_test.py.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=tools/.venv-napari
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import napari_voxtell, nnunetv2, httpx, blosc2, nibabel, scipy" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --no-deps napari-voxtell==0.2.0 nnunetv2==2.8.1
    "$VENV/bin/pip" install -q httpx==0.28.1 blosc2==4.15.0 numpy==2.4.6 nibabel==5.4.2 scipy==1.17.1
fi
case " $* " in
    *" --binary "*) ;;
    *) cargo build -q -p voxtell-cli ;;
esac
exec "$VENV/bin/python" tools/serve_napari_check.py "$@"
