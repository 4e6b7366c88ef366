#!/usr/bin/env bash
# VXA2 wire format: rebuilds fixtures/wire/ with the official serializer (voxtell 0.1.2) under
# python-blosc2 2.7.1 and 4.15.0, then cross-checks crates/voxtell-wire's encoder against the
# official deserializer (voxtell 0.1.2 and the napari-voxtell 0.2.0 copy) under both.
# Needs python3 (3.10+) and PyPI; CI never runs it. Exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."

V2=tools/.venv-blosc2-2
V4=tools/.venv-blosc2-4
WHEELS=tools/.venv-wheels
[ -x "$V2/bin/python" ] || { python3 -m venv "$V2" && "$V2/bin/pip" install -q blosc2==2.7.1 numpy==1.26.4; }
[ -x "$V4/bin/python" ] || { python3 -m venv "$V4" && "$V4/bin/pip" install -q blosc2==4.15.0 numpy==2.4.6; }
if [ ! -f "$WHEELS/voxtell/voxtell/server/serialization.py" ]; then
    mkdir -p "$WHEELS"
    "$V4/bin/pip" download -q --no-deps -d "$WHEELS" voxtell==0.1.2 napari-voxtell==0.2.0
    "$V4/bin/python" -m zipfile -e "$WHEELS"/voxtell-0.1.2-py3-none-any.whl "$WHEELS/voxtell"
    "$V4/bin/python" -m zipfile -e "$WHEELS"/napari_voxtell-0.2.0-py3-none-any.whl "$WHEELS/napari_voxtell"
fi
SER="$WHEELS/voxtell/voxtell/server/serialization.py"
SER_CLIENT="$WHEELS/napari_voxtell/napari_voxtell/remote/serialization.py"

# 1. Fixtures, made by the official pack_array.
rm -rf fixtures/wire
"$V2/bin/python" tools/wire_fixtures.py make fixtures/wire/blosc2-2 "$SER"
"$V4/bin/python" tools/wire_fixtures.py make fixtures/wire/blosc2-4 "$SER"
"$V4/bin/python" tools/wire_fixtures.py manifest

# 2. The Rust encoder, decoded by the official deserializers.
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cargo run -q -p voxtell-wire --example vxa2_encode -- "$OUT"
rc=0
"$V2/bin/python" tools/wire_fixtures.py check "$OUT" "$SER" "$SER_CLIENT" || rc=1
"$V4/bin/python" tools/wire_fixtures.py check "$OUT" "$SER" "$SER_CLIENT" || rc=1
[ "$rc" = 0 ] && echo "wire_fixtures: all Rust-encoded payloads decode exactly with both python-blosc2 versions"
exit "$rc"
