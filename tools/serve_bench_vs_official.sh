#!/usr/bin/env bash
# `voxtell serve` (release build) against the official `voxtell-server` (PyPI voxtell 0.1.2) on
# this machine's CPU, one server at a time, with the same httpx client: (a) upload with
# include_image=true and result download of a 512x512x300 int16 CT, (b) a 4-prompt job on a
# 192^3 scan with the full-size random model (wall time to the terminal event, peak RSS).
# See tools/serve_bench_vs_official.py. Manual tool: CI never runs it.
#
# Usage: tools/serve_bench_vs_official.sh [--skip-a] [--skip-b] [--a-prompts K] [--repeats R]
#                                         [--job-limit S]
# Environment: KEEP_VENV=0 deletes tools/.venv-official at the end (it holds torch, ~5 GB).
#
# Steps: the venv tools/.venv-official (tools/requirements.txt without the text-fixture
# packages, plus the server extra fastapi/uvicorn, all pinned; torch from PyPI is the CUDA build,
# used on the CPU); `cargo build --release -p voxtell-cli`; the cases, cached, with
# tools/bench_official.py make: target/bench-vs-official/full (as tools/bench_vs_official.sh:
# 192^3, 13 prompts, ~1.8 GB random checkpoint) and target/bench-vs-official/small-512 (--small,
# --shape 512,512,300, 13 prompts). Needs ~8 GB free memory for (b) and ~6 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=tools/bench_common.sh
source tools/bench_common.sh
VENV=tools/.venv-official
PY="$VENV/bin/python"
if [ ! -x "$VENV/bin/voxtell-server" ] || ! "$PY" -c "import voxtell.server.app, torch, fastapi, uvicorn, blosc2, httpx" 2>/dev/null; then
    bench_make_venv "$VENV"
fi

echo "== building target/release/voxtell" >&2
cargo build --release -q -p voxtell-cli

echo "== benchmark cases (cached)" >&2
"$PY" tools/bench_official.py make target/bench-vs-official/full --size 192 --prompts 13 >&2
"$PY" tools/bench_official.py make target/bench-vs-official/small-512 --small --shape 512,512,300 --prompts 13 >&2

rc=0
"$PY" tools/serve_bench_vs_official.py bench "$@" || rc=$?
if [ "${KEEP_VENV:-1}" = 0 ]; then rm -rf "$VENV"; fi
exit "$rc"
