#!/usr/bin/env bash
# README figure docs/figures/seg_on_series.png: a DICOM SEG of `voxtell predict --output-type
# dicom-seg` drawn back onto its source series from the SEG's own frames (read with pydicom, not
# with voxtell), for two DICOM series of one phantom: plain axial and axial with a negated column
# cosine (rows stored bottom to top) and shuffled file names. Prints each segment's Dice with the
# phantom's label and fails on any misplacement (tools/seg_figure.py says what it checks).
#
#   tools/seg_figure.sh [--keep] [--seed N] [--out PNG]
#
# Needs target/release/voxtell (built here if missing: cargo build --release -p voxtell-cli) and
# the venv tools/.venv-official (pydicom, SimpleITK, nibabel, numpy, matplotlib, Pillow); it
# installs nothing. --keep leaves the working folder (phantom, series, SEGs) and names it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=tools/.venv-official/bin/python
BIN=target/release/voxtell
KEEP=0
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1; shift ;;
        --seed|--out) ARGS+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ ! -x "$PY" ]; then
    echo "error: $PY not found: tools/seg_figure.sh uses the existing venv tools/.venv-official" >&2
    exit 1
fi
if ! "$PY" -c 'import pydicom, SimpleITK, nibabel, numpy, matplotlib, PIL' 2>/dev/null; then
    echo "error: $PY lacks one of pydicom, SimpleITK, nibabel, numpy, matplotlib, Pillow" >&2
    exit 1
fi
if [ ! -x "$BIN" ]; then
    echo "$BIN missing: cargo build --release -p voxtell-cli" >&2
    cargo build --release -p voxtell-cli
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/seg_figure.XXXXXX")
if [ "$KEEP" = 1 ]; then
    echo "working folder (kept): $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
MPLBACKEND=Agg "$PY" tools/seg_figure.py --voxtell "$BIN" --work "$WORK/run" "${ARGS[@]}"
