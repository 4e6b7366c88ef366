#!/usr/bin/env bash
# highdicom cross-check of the DICOM SEG writer (issue 23): writes our SEGs of the fixtures'
# masks (the Rust test crates/voxtell-io/tests/dicom_seg_highdicom.rs, with VOXTELL_SEG_OUT),
# then reads every one with highdicom 0.28.2's segread and compares its arrays with the masks
# and with highdicom's own SEG (tools/seg_highdicom_check.py). Makes tools/.venv-highdicom from
# tools/requirements-highdicom.txt if missing (PyPI). CI never runs it. Exits non-zero on any
# difference.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=tools/.venv-highdicom
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r tools/requirements-highdicom.txt
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
VOXTELL_SEG_OUT="$OUT" cargo test -q -p voxtell-io --test dicom_seg_highdicom \
    our_seg_equals_highdicoms_but_for_the_intended_differences
"$VENV/bin/python" tools/seg_highdicom_check.py "$OUT"
