#!/usr/bin/env bash
# Benchmark `voxtell predict` (this repository, release build) against the official VoxTell
# predictor (PyPI `voxtell` in tools/.venv) on the same machine, the same random full-size
# weights, the same synthetic CT volume and the same prompt vectors, on the CPU. Prints, per
# prompt count, the median wall time and median peak RSS of each tool and the ratios ours/official.
#
# Usage: tools/bench_vs_official.sh [--small] [--repeats R] [--prompts "1 4 13"] [--threads T]
#                                   [--size N] [--bf16]
#   --small     a small model (patch 64^3, features 8..64, text dim 64) on a 96^3 volume: a smoke
#               test of this script in seconds, NOT a benchmark
#   --repeats   runs per tool and prompt count (default 3); the tools alternate, and which one
#               goes first alternates between repeats
#   --prompts   the prompt counts to measure (default "1 4 13")
#   --threads   CPU threads for both tools: `--threads T` / torch.set_num_threads(T) (default 2)
#   --size      volume edge in voxels (default 192, or 96 with --small)
#   --bf16      also run `voxtell predict --precision bf16` ("ours-bf16") in the rotation and
#               report it against the official tool and its masks against ours in f32
#   --baseline BIN
#               also run another build of `voxtell` (e.g. the release binary of an older tree)
#               in the rotation ("ours-base"), and report ours against it: before/after figures
#               of a change measured in one sitting
# Environment: PYTHON (default tools/.venv/bin/python, the venv of tools/README.md);
# BENCH_NO_TIME=1 uses the getrusage fallback below even where /usr/bin/time exists.
#
# Steps: `cargo build --release -p voxtell-cli`; `tools/bench_official.py make` once into
# target/bench-vs-official/{full,small}/ (cached; the full-size case is a ~1.8 GB checkpoint of
# 440 M random parameters); then every run under `/usr/bin/time -v` (wall time from the shell
# clock, peak RSS = "Maximum resident set size"; without /usr/bin/time, peak RSS comes from
# `bench_official.py measure`, i.e. getrusage(RUSAGE_CHILDREN)). Each run is a fresh process
# that reads the model, the volume and the bank and writes one mask per prompt into a
# temporary folder:
#   official: bench_official.py run DIR --prompts K --threads T --out TMP
#   ours:     target/release/voxtell predict -i DIR/ct.nii.gz -m DIR --embeddings DIR/bank.npz
#                 -p "prompt 0" ... -o TMP --threads T --device cpu -q
# After the last repeat of each prompt count the masks of the two tools are compared voxel by
# voxel. The full-size benchmark needs several GB of free memory (the model alone is 1.8 GB in
# f32, a full-resolution 32-channel activation 0.9 GB) and minutes per run; run it on an
# otherwise idle machine (the load average is printed first).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/tools/.venv/bin/python}"
HELPER="$ROOT/tools/bench_official.py"
VOXTELL="$ROOT/target/release/voxtell"

SMALL=0
REPEATS=3
PROMPTS="1 4 13"
THREADS=2
SIZE=""
BF16=0
BASELINE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --small) SMALL=1; shift ;;
        --repeats) REPEATS="$2"; shift 2 ;;
        --prompts) PROMPTS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --bf16) BF16=1; shift ;;
        --baseline) BASELINE="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in $REPEATS $THREADS $PROMPTS ${SIZE:-1}; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive integer: $n" >&2; exit 2; }
done
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || { echo "--baseline: not an executable: $BASELINE" >&2; exit 2; }
[ -x "$PY" ] || { echo "no Python at $PY (see tools/README.md, or set PYTHON)" >&2; exit 2; }

if [ "$SMALL" = 1 ]; then
    CASE="$ROOT/target/bench-vs-official/small"; SIZE="${SIZE:-96}"; MAKE_FLAGS=(--small)
else
    CASE="$ROOT/target/bench-vs-official/full"; SIZE="${SIZE:-192}"; MAKE_FLAGS=()
fi
# The bank holds at least 13 prompts, so that the default case stays cached for other lists.
BANK=13
for k in $PROMPTS; do [ "$k" -gt "$BANK" ] && BANK="$k"; done

echo "== building target/release/voxtell" >&2
cargo build --release -q -p voxtell-cli --manifest-path "$ROOT/Cargo.toml"

echo "== benchmark case in ${CASE#"$ROOT"/}" >&2
"$PY" "$HELPER" make "$CASE" --size "$SIZE" --prompts "$BANK" "${MAKE_FLAGS[@]}" >&2

TMP="$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-official.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# measure NAME CMD... (runs' logs in $TMP) and RSS_TOOL.
# shellcheck source=tools/bench_common.sh
source "$ROOT/tools/bench_common.sh"
MEASURE_DIR="$TMP"

# median of the numbers on stdin
median() {
    sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

run_official() { # K OUT
    measure "official-$1-$r" "$PY" "$HELPER" run "$CASE" --prompts "$1" --threads "$THREADS" --out "$2"
}
run_ours() { # K OUT [NAME EXTRA_ARGS...]
    local k="$1" out="$2" name="${3:-ours}" p=() i
    shift 2; [ $# -gt 0 ] && shift
    for ((i = 0; i < k; i++)); do p+=("prompt $i"); done
    measure "$name-$k-$r" "$VOXTELL" predict -i "$CASE/ct.nii.gz" -m "$CASE" \
        --embeddings "$CASE/bank.npz" -p "${p[@]}" -o "$out" --threads "$THREADS" --device cpu -q "$@"
}
run_ours-bf16() { # K OUT
    run_ours "$1" "$2" ours-bf16 --precision bf16
}
run_ours-base() { # K OUT
    VOXTELL="$BASELINE" run_ours "$1" "$2" ours-base
}
TOOLS=(official ours)
if [ "$BF16" = 1 ]; then TOOLS+=(ours-bf16); fi
if [ -n "$BASELINE" ]; then TOOLS+=(ours-base); fi

echo "== $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo '?')), load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')" >&2
echo "== threads $THREADS, repeats $REPEATS, volume ${SIZE}^3, peak RSS from $RSS_TOOL" >&2

RESULTS="$TMP/results.tsv"
: >"$RESULTS"
AGREE=()
for k in $PROMPTS; do
    for ((r = 1; r <= REPEATS; r++)); do
        # The order of the tools reverses every other repeat.
        order="${TOOLS[*]}"
        if [ $((r % 2)) = 0 ]; then order="$(tr ' ' '\n' <<<"$order" | tac | tr '\n' ' ')"; fi
        for tool in $order; do
            rm -rf "$TMP/out-$tool"; mkdir -p "$TMP/out-$tool"
            res="$(run_"$tool" "$k" "$TMP/out-$tool")"
            printf '%s\t%s\t%s\t%s\n' "$k" "$tool" ${res} >>"$RESULTS"
            echo "   $k prompt(s), run $r/$REPEATS, $tool: $(cut -d' ' -f1 <<<"$res") s, $(awk '{printf "%.0f", $2 / 1024}' <<<"$res") MiB" >&2
        done
    done
    agree="$("$PY" "$HELPER" compare "$TMP/out-official" "$TMP/out-ours" | awk '/worst agreement/ {print $(NF - 1)}')"
    AGREE+=("$k prompt(s): ${agree:-?} % of mask voxels identical (worst prompt, last run)")
    if [ -n "$BASELINE" ]; then
        agree="$("$PY" "$HELPER" compare "$TMP/out-ours" "$TMP/out-ours-base" | awk '/worst agreement/ {print $(NF - 1)}')"
        AGREE+=("$k prompt(s), baseline against ours: ${agree:-?} % of mask voxels identical (worst prompt, last run)")
    fi
    if [ "$BF16" = 1 ]; then
        for ref in official ours; do
            agree="$("$PY" "$HELPER" compare "$TMP/out-$ref" "$TMP/out-ours-bf16" | awk '/worst agreement/ {print $(NF - 1)}')"
            AGREE+=("$k prompt(s), bf16 against $ref: ${agree:-?} % of mask voxels identical (worst prompt, last run)")
        done
    fi
done

col() { # K TOOL FIELD(3 = wall s, 4 = RSS KiB)
    awk -F'\t' -v k="$1" -v t="$2" -v f="$3" '$1 == k && $2 == t {print $f}' "$RESULTS" | median
}

echo
if [ "$SMALL" = 1 ]; then echo "(--small: a smoke test of the script, not a benchmark)"; fi
H=(prompts "official median s" "ours median s" "time ratio ours/official" \
    "official peak RSS MiB" "ours peak RSS MiB" "RSS ratio")
printf '| %7s | %17s | %13s | %24s | %21s | %17s | %9s |\n' "${H[@]}"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' --------: ------------------: --------------: \
    -------------------------: ----------------------: ------------------: ----------:
for k in $PROMPTS; do
    for tool in "${TOOLS[@]:1}"; do
        ot="$(col "$k" official 3)"; ut="$(col "$k" "$tool" 3)"
        orss="$(col "$k" official 4)"; urss="$(col "$k" "$tool" 4)"
        case "$tool" in ours) label="$k" ;; ours-bf16) label="$k bf16" ;; *) label="$k baseline" ;; esac
        awk -v k="$label" -v ot="$ot" -v ut="$ut" -v o="$orss" -v u="$urss" 'BEGIN {
            printf "| %7s | %17.2f | %13.2f | %24.3f | %21.0f | %17.0f | %9.3f |\n",
                k, ot, ut, ut / ot, o / 1024, u / 1024, u / o }'
    done
done
if [ -n "$BASELINE" ]; then
    echo
    echo "ours against the baseline $BASELINE (medians):"
    for k in $PROMPTS; do
        awk -v k="$k" -v t="$(col "$k" ours 3)" -v bt="$(col "$k" ours-base 3)" \
            -v m="$(col "$k" ours 4)" -v bm="$(col "$k" ours-base 4)" 'BEGIN {
            printf "  %s prompt(s): time %.2f s vs %.2f s (%.3f), peak RSS %.0f vs %.0f MiB (%.3f)\n",
                k, t, bt, t / bt, m / 1024, bm / 1024, m / bm }'
    done
fi
echo
for line in "${AGREE[@]}"; do echo "$line"; done
