#!/usr/bin/env bash
# Cohort throughput of `voxtell predict` against the official `voxtell-predict` CLI (PyPI voxtell
# 0.1.2, torch on the CPU) on the same machine: one process per tool predicts a folder of 8
# phantoms (made with our `voxtell phantom`, resampled to 160..192 voxels per edge) with the same
# random full-size weights and the same prompt vectors. Prints per tool the wall time, cases per
# hour, peak RSS and the ratios ours/official; for ours the summed network/read/predict/write
# seconds of its --report and the share of the wall time spent outside the network. Manual tool:
# CI never runs it.
#
# Usage: tools/cohort_bench_vs_official.sh [--small] [--repeats R] [--threads T] [--prompts K]
#                                          [--cases N] [--seed S] [--voxtell BIN] [--baseline BIN]
#   --small     the small model (patch 64^3, bench_official.py make --small) on phantoms of
#               72..96 voxels per edge: a smoke test of this script in a minute, NOT a benchmark
#   --repeats   runs per tool (default 1); the tools alternate, and which one goes first
#               alternates between repeats; figures are medians over the repeats
#   --threads   CPU threads for every tool (default 2): ours `--threads T`; the official CLI has
#               no thread option: OMP/MKL/OPENBLAS_NUM_THREADS=T and torch.set_num_threads(T)
#   --prompts   prompts per case, "prompt 0" .. "prompt K-1" (default 2)
#   --cases     phantoms in the cohort (default 8)
#   --seed      seed of `voxtell phantom` and of the resampled shapes (default 7)
#   --voxtell BIN
#               our binary (default $VOXTELL, else target/release/voxtell; it is not built here:
#               `cargo build --release -p voxtell-cli` first)
#   --baseline BIN
#               also run another build of `voxtell` (e.g. the release binary of an older tree)
#               over the same cohort in the rotation ("ours-base")
# Environment: VOXTELL (our binary); KEEP_VENV=0 deletes tools/.venv-official at the end (it
# holds torch, ~5 GB; kept by default, as tools/serve_bench_vs_official.sh, which shares it);
# BENCH_NO_TIME=1 measures with `bench_official.py measure` (getrusage) even where
# /usr/bin/time exists.
#
# Steps: the venv tools/.venv-official (made as tools/serve_bench_vs_official.sh makes it:
# tools/requirements.txt without the text-fixture packages, plus the pinned server stack); the
# model folder + bank of `tools/bench_official.py make`, cached in target/bench-vs-official/full
# (192^3 case, 13 prompts, ~1.8 GB random checkpoint of the published sizes) or .../small; the
# cohort, `tools/cohort_bench.py phantoms` (our `voxtell phantom`, at most 1 M voxels a case,
# resampled trilinearly to a seeded random shape); then every run under `/usr/bin/time -v` (wall
# time from the shell clock, peak RSS = "Maximum resident set size"):
#   official: cohort_bench.py official --threads T -- -i COHORT -o OUT -m MODEL
#                 -p "prompt 0" ... --embeddings MODEL/bank.npz --device cpu
#             (the CLI's own main(); see tools/cohort_bench.py)
#   ours:     $VOXTELL predict -i COHORT -o OUT -m MODEL --embeddings MODEL/bank.npz
#                 -p "prompt 0" ... --threads T --device cpu -q --report REPORT.jsonl
# After the last repeat the masks of ours (and of the baseline) are compared voxel by voxel with
# the official ones. Everything is written to target/cohort-bench/{full,small}/ (wiped at the
# start; the outputs, logs and reports of the last repeat stay). The full-size run needs ~8 GB
# of free memory and ~20 minutes on 2 cores; run it on an otherwise idle machine (the load
# average is printed first).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/tools/.venv-official"
PY="$VENV/bin/python"
HELPER="$ROOT/tools/cohort_bench.py"
BENCH="$ROOT/tools/bench_official.py"
# bench_make_venv, measure NAME CMD... and RSS_TOOL.
# shellcheck source=tools/bench_common.sh
source "$ROOT/tools/bench_common.sh"
VOXTELL="${VOXTELL:-$ROOT/target/release/voxtell}"

SMALL=0
REPEATS=1
THREADS=2
PROMPTS=2
CASES=8
SEED=7
BASELINE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --small) SMALL=1; shift ;;
        --repeats) REPEATS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --prompts) PROMPTS="$2"; shift 2 ;;
        --cases) CASES="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --voxtell) VOXTELL="$2"; shift 2 ;;
        --baseline) BASELINE="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$REPEATS" "$THREADS" "$PROMPTS" "$CASES"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive integer: $n" >&2; exit 2; }
done
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "--seed: not a non-negative integer: $SEED" >&2; exit 2; }
[ -x "$VOXTELL" ] || { echo "no voxtell binary at $VOXTELL (cargo build --release -p voxtell-cli, or set VOXTELL / --voxtell)" >&2; exit 2; }
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || { echo "--baseline: not an executable: $BASELINE" >&2; exit 2; }
VOXTELL="$(cd "$(dirname "$VOXTELL")" && pwd)/$(basename "$VOXTELL")"
[ -z "$BASELINE" ] || BASELINE="$(cd "$(dirname "$BASELINE")" && pwd)/$(basename "$BASELINE")"

if [ ! -x "$VENV/bin/voxtell-predict" ] || ! "$PY" -c "import voxtell.inference.predict_from_raw_data, torch, nnunetv2, nibabel, scipy" 2>/dev/null; then
    echo "== making $VENV (torch, nnunetv2, voxtell 0.1.2; several GB)" >&2
    bench_make_venv "$VENV"
fi

if [ "$SMALL" = 1 ]; then
    MODEL="$ROOT/target/bench-vs-official/small"; WORK="$ROOT/target/cohort-bench/small"
    MAKE_FLAGS=(--small --size 96); EDGES=(72 96)
else
    MODEL="$ROOT/target/bench-vs-official/full"; WORK="$ROOT/target/cohort-bench/full"
    MAKE_FLAGS=(--size 192); EDGES=(160 192)
fi
# The bank holds at least 13 prompts: the cases of tools/bench_vs_official.sh stay cached.
BANK=13
[ "$PROMPTS" -gt "$BANK" ] && BANK="$PROMPTS"
P=()
for ((i = 0; i < PROMPTS; i++)); do P+=("prompt $i"); done

echo "== model folder and bank in ${MODEL#"$ROOT"/} (cached)" >&2
"$PY" "$BENCH" make "$MODEL" "${MAKE_FLAGS[@]}" --prompts "$BANK" >&2

rm -rf "$WORK"
mkdir -p "$WORK/logs" "$WORK/reports"
COHORT="$WORK/cohort"
echo "== cohort of $CASES phantoms in ${COHORT#"$ROOT"/}" >&2
"$PY" "$HELPER" phantoms "$VOXTELL" "$COHORT" --cases "$CASES" --seed "$SEED" \
    --min "${EDGES[0]}" --max "${EDGES[1]}" >&2

# Runs' logs in logs/.
MEASURE_DIR="$WORK/logs"

# run_TOOL OUT REPORT: one run of the tool over the cohort.
run_official() {
    measure "official-$r" "$PY" "$HELPER" official --threads "$THREADS" --timing "$2" -- \
        -i "$COHORT" -o "$1" -m "$MODEL" -p "${P[@]}" --embeddings "$MODEL/bank.npz" --device cpu
}
run_ours() { # OUT REPORT [NAME]
    measure "${3:-ours}-$r" "$VOXTELL" predict -i "$COHORT" -o "$1" -m "$MODEL" \
        --embeddings "$MODEL/bank.npz" -p "${P[@]}" --threads "$THREADS" --device cpu -q --report "$2"
}
run_ours-base() {
    VOXTELL="$BASELINE" run_ours "$1" "$2" ours-base
}
TOOLS=(official ours)
if [ -n "$BASELINE" ]; then TOOLS+=(ours-base); fi

CPU_NAME="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
CPU_FAM="$(awk -F': ' '/^cpu family/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
CPU_MOD="$(awk -F': ' '/^model[[:space:]]*:/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
if [ -z "$CPU_NAME" ] && command -v lscpu >/dev/null; then
    CPU_NAME="$(lscpu | awk -F': *' '/^Model name/ {print $2; exit}')"
fi
echo "== CPU: ${CPU_NAME:-?} (family ${CPU_FAM:-?}, model ${CPU_MOD:-?}), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')" >&2
echo "== $CASES cases x $PROMPTS prompt(s), threads $THREADS, repeats $REPEATS, peak RSS from $RSS_TOOL" >&2
echo "== ours: $VOXTELL ($("$VOXTELL" --version 2>/dev/null || echo '?'))" >&2
[ -z "$BASELINE" ] || echo "== baseline: $BASELINE ($("$BASELINE" --version 2>/dev/null || echo '?'))" >&2

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for ((r = 1; r <= REPEATS; r++)); do
    # The order of the tools reverses every other repeat.
    order="${TOOLS[*]}"
    if [ $((r % 2)) = 0 ]; then order="$(tr ' ' '\n' <<<"$order" | tac | tr '\n' ' ')"; fi
    for tool in $order; do
        out="$WORK/out-$tool"
        if [ "$tool" = official ]; then report="$WORK/reports/$tool-$r.json"; else report="$WORK/reports/$tool-$r.jsonl"; fi
        rm -rf "$out" "$report"; mkdir -p "$out"
        res="$(run_"$tool" "$out" "$report")"
        n_out="$(find "$out" -maxdepth 1 -name '*.nii.gz' | wc -l)"
        if [ "$n_out" != $((CASES * PROMPTS)) ]; then
            echo "FAILED: $tool wrote $n_out masks, want $((CASES * PROMPTS)) (log: $WORK/logs/$tool-$r.log)" >&2; exit 1
        fi
        printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$tool" ${res} "$report" >>"$RESULTS"
        echo "   run $r/$REPEATS, $tool: $(cut -d' ' -f1 <<<"$res") s, $(awk '{printf "%.0f", $2 / 1024}' <<<"$res") MiB" >&2
    done
done

echo
if [ "$SMALL" = 1 ]; then echo "(--small: a smoke test of the script, not a benchmark)"; fi
echo "CPU: ${CPU_NAME:-?} (family ${CPU_FAM:-?}, model ${CPU_MOD:-?}); $CASES cases x $PROMPTS prompt(s), $THREADS thread(s); cohort shapes: $("$PY" -c 'import json, sys; print(", ".join("x".join(map(str, c["shape"])) for c in json.load(open(sys.argv[1]))["cases"]))' "$WORK/cohort.json")"
"$PY" "$HELPER" summary "$RESULTS" --cases "$CASES"
echo
agree() { # A B LABEL
    local text a
    text="$("$PY" "$BENCH" compare "$WORK/out-$1" "$WORK/out-$2" 2>&1 || true)"
    a="$(awk '/worst agreement/ {print $(NF - 1)}' <<<"$text")"
    if [ -n "$a" ]; then
        echo "$3: $a % of mask voxels identical (worst of the $((CASES * PROMPTS)) masks, last run)"
    else
        echo "$3: not compared: $(tail -n 1 <<<"$text")"
    fi
}
agree official ours "ours against official"
if [ -n "$BASELINE" ]; then
    agree official ours-base "baseline against official"
    agree ours ours-base "baseline against ours"
fi
echo "(outputs, logs and reports of the last run: ${WORK#"$ROOT"/}/)"

if [ "${KEEP_VENV:-1}" = 0 ]; then rm -rf "$VENV"; fi
