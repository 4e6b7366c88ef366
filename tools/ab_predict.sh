#!/usr/bin/env bash
# A/B timing of two `voxtell` builds alone (no official tool in the rotation): the full-size case
# of tools/bench_vs_official.sh (make it first with that script), one `voxtell predict` a run,
# the builds alternating and the first of each pair alternating between repeats. Prints one line
# a run (wall seconds from the shell clock, peak RSS from /usr/bin/time) and the medians.
#
# Usage: tools/ab_predict.sh BASE_BINARY NEW_BINARY [REPEATS (4)] [PROMPTS (1)] [THREADS (2)]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
BASE="$1"; NEW="$2"; REPEATS="${3:-4}"; K="${4:-1}"; THREADS="${5:-2}"
CASE="$ROOT/target/bench-vs-official/full"
[ -f "$CASE/ct.nii.gz" ] || { echo "no case in $CASE: run tools/bench_vs_official.sh once" >&2; exit 2; }
for b in "$BASE" "$NEW"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
prompts=(); for ((i = 0; i < K; i++)); do prompts+=("prompt $i"); done
for ((r = 1; r <= REPEATS; r++)); do
    order=(base new); [ $((r % 2)) = 0 ] && order=(new base)
    for t in "${order[@]}"; do
        bin="$BASE"; [ "$t" = new ] && bin="$NEW"
        rm -rf "$TMP/out"; mkdir "$TMP/out"
        s=$(date +%s.%N)
        /usr/bin/time -f "%M" -o "$TMP/rss" "$bin" predict -i "$CASE/ct.nii.gz" -m "$CASE" \
            --embeddings "$CASE/bank.npz" -p "${prompts[@]}" -o "$TMP/out" --threads "$THREADS" --device cpu -q
        e=$(date +%s.%N)
        secs=$(awk -v a="$s" -v b="$e" 'BEGIN {printf "%.3f", b - a}')
        echo "$t $secs $(($(cat "$TMP/rss") / 1024))" >>"$TMP/runs"
        echo "run $r $t: $secs s, $(($(cat "$TMP/rss") / 1024)) MiB"
    done
done
for t in base new; do
    awk -v t="$t" '$1 == t {print $2}' "$TMP/runs" | sort -g |
        awk -v t="$t" '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%s: median %.3f s over %d runs\n", t, m, NR}'
done
