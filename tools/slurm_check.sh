#!/usr/bin/env bash
# Run a VoxTell cohort as a Slurm job array on a real one-node Slurm cluster (slurmctld + slurmd +
# munged on 127.0.0.1, configured in a private folder), and check it against a single process:
#   1. installs Debian's slurm-wlm and munge (and jq) with apt if they are missing (needs root);
#   2. writes slurm.conf + a munge key under WORK_DIR, starts munged (own key and socket),
#      slurmctld and slurmd in the foreground in the background, waits for the node to be idle;
#   3. makes 6 phantom cases with `voxtell phantom --seed 4242`;
#   4. submits an sbatch array (--array=0-2, one part per task, --part-id auto --num-parts auto
#      --no-overwrite --report .../part-{part}.jsonl) with the demo model and bank, waits for it
#      (bounded) and prints each task's log;
#   5. runs the same prediction as one process and checks: the union of the parts' outputs is the
#      single run byte for byte, every case is in exactly one part's report with status ok, the
#      parts are nnU-Net's (sorted case names [i::3]); then resubmits the array and checks that
#      --no-overwrite skips every case and changes no output;
#   6. stops the daemons it started, by their process ids (also on failure), prints PASS or FAIL.
#
# Usage: tools/slurm_check.sh [WORK_DIR]        (default target/slurm-check; wiped at start)
#   VOXTELL=path/to/voxtell   binary to test (default target/release/voxtell, else target/debug;
#                             built with `cargo build --release -p voxtell-cli` if neither exists)
#   SLURM_CHECK_PORT=16817    slurmctld port (slurmd uses the next one)
#   SLURM_CHECK_TIMEOUT=1200  seconds to wait for the array job
#   SLURM_CHECK_AUTH=munge    or `none` to skip munge (auth/none; only if munge cannot work)
# Exits 0 on PASS, 1 on FAIL, 2 on a usage or setup error.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;; esac
WORK="$(mkdir -p "${1:-$ROOT/target/slurm-check}" && cd "${1:-$ROOT/target/slurm-check}" && pwd)"
PORT="${SLURM_CHECK_PORT:-16817}"
TIMEOUT="${SLURM_CHECK_TIMEOUT:-1200}"
AUTH="${SLURM_CHECK_AUTH:-munge}"
PARTS=3
PROMPTS=(liver spleen "left kidney")
START=$SECONDS

say() { printf '[%4ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { say "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Daemons we start, stopped by pid on any exit.
PIDS=()      # "name:pid", in start order
JOBIDS=()    # Slurm jobs we submitted
RESULT=FAIL
stop_all() {
    local rc=$?
    set +e
    if [ "${#JOBIDS[@]}" -gt 0 ] && [ -n "${SLURM_CONF:-}" ]; then
        for j in "${JOBIDS[@]}"; do
            if [ -n "$(squeue -h -j "$j" -o %i 2>/dev/null)" ]; then
                say "cancelling job $j"
                scancel "$j" 2>/dev/null
                for _ in $(seq 30); do [ -z "$(squeue -h -j "$j" -o %i 2>/dev/null)" ] && break; sleep 1; done
                # Whatever of the job still runs on the node: its own pids, as slurmd lists them.
                for p in $(scontrol listpids "$j" 2>/dev/null | awk 'NR>1 {print $1}'); do
                    kill -KILL "$p" 2>/dev/null
                done
            fi
        done
    fi
    local i entry name pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        entry="${PIDS[$i]}"; name="${entry%%:*}"; pid="${entry##*:}"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            say "stopped $name (pid $pid)"
        fi
    done
    say "total time $((SECONDS - START)) s"
    if [ "$RESULT" = PASS ] && [ "$rc" = 0 ]; then
        echo "PASS"
    else
        echo "FAIL"
        [ "$rc" = 0 ] && rc=1
    fi
    exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Wipe only a folder this script made (marker file) or an empty one.
if [ -n "$(ls -A "$WORK")" ] && [ ! -f "$WORK/.slurm-check" ]; then
    echo "$WORK is not empty and was not made by this script; give another WORK_DIR" >&2
    exit 2
fi
# Daemons left by an earlier run of this script in the same folder (pid files there).
for pf in "$WORK"/run/*.pid; do
    [ -f "$pf" ] || continue
    pid="$(cat "$pf" 2>/dev/null || true)"
    name="$(basename "$pf" .pid)"
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "${name:0:15}" ]; then
        say "stopping $name (pid $pid) left by an earlier run"
        kill -TERM "$pid" 2>/dev/null || true
        sleep 1
    fi
done
rm -rf "${WORK:?}"/*
touch "$WORK/.slurm-check"
mkdir -p "$WORK"/{run,log,state/ctld,state/slurmd,munge/key,jobs}
chmod 755 "$WORK/munge"
chmod 700 "$WORK/munge/key"

# ---------------------------------------------------------------------------------------------
# 1. Packages.
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
command -v munged >/dev/null || need+=(munge)
command -v jq >/dev/null || need+=(jq)
if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { say "missing ${need[*]} and not root: install slurm-wlm munge jq"; exit 2; }
    pkgs=(slurm-wlm munge jq)
    say "installing ${pkgs[*]} with apt"
    apt-get update -qq >"$WORK/log/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
        >>"$WORK/log/apt.log" 2>&1 || { tail -20 "$WORK/log/apt.log"; exit 2; }
fi
say "slurm: $(slurmctld -V), munge: $(munged -V 2>&1 | head -n 1)"

# ---------------------------------------------------------------------------------------------
# The voxtell binary.
BIN="${VOXTELL:-}"
if [ -z "$BIN" ]; then
    for b in "$ROOT/target/release/voxtell" "$ROOT/target/debug/voxtell"; do
        [ -x "$b" ] && { BIN="$b"; break; }
    done
fi
if [ -z "$BIN" ]; then
    say "no voxtell binary: cargo build --release -p voxtell-cli (a few minutes)"
    (cd "$ROOT" && cargo build --release -p voxtell-cli)
    BIN="$ROOT/target/release/voxtell"
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
say "voxtell: $BIN ($("$BIN" --version 2>/dev/null || echo '?'))"
# No model, bank or text model from the environment or a cache (sbatch exports this environment).
export VOXTELL_MODEL="" VOXTELL_EMBEDDINGS="" VOXTELL_TEXT_MODEL="" HF_HOME="$WORK/no-hf-home"

# ---------------------------------------------------------------------------------------------
# 2. A one-node cluster on loopback.
HOST="$(hostname -s)"
if ! getent hosts "$HOST" >/dev/null; then
    [ "$(id -u)" = 0 ] || { say "$HOST does not resolve; add it to /etc/hosts"; exit 2; }
    echo "127.0.0.1 $HOST" >>/etc/hosts
    say "NOTE: added '127.0.0.1 $HOST' to /etc/hosts ($HOST did not resolve)"
fi
for p in "$PORT" "$((PORT + 1))"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        say "port $p is in use: set SLURM_CHECK_PORT to another base port"; exit 2
    fi
done
NCPU="$(nproc)"
MEM_MB="$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"

if [ "$AUTH" = munge ]; then
    KEY="$WORK/munge/key/munge.key"
    SOCK="$WORK/munge/munge.socket"
    dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none
    chmod 400 "$KEY"
    munged -F --force --key-file="$KEY" --socket="$SOCK" --pid-file="$WORK/run/munged.pid" \
        --log-file="$WORK/log/munged.log" --seed-file="$WORK/munge/munged.seed" \
        >"$WORK/log/munged.out" 2>&1 &
    PIDS+=("munged:$!")
    ok=0
    for _ in $(seq 50); do
        if [ -S "$SOCK" ] && munge -n -S "$SOCK" 2>/dev/null | unmunge -S "$SOCK" >/dev/null 2>&1; then
            ok=1; break
        fi
        kill -0 "${PIDS[-1]##*:}" 2>/dev/null || break
        sleep 0.2
    done
    if [ "$ok" = 1 ]; then
        say "munged up (pid ${PIDS[-1]##*:}, key and socket in $WORK/munge): AuthType=auth/munge"
        AUTH_LINES="AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge"
    else
        say "munge does not work here (log below): falling back to AuthType=auth/none"
        cat "$WORK/log/munged.out" "$WORK/log/munged.log" 2>/dev/null | tail -20 || true
        AUTH=none
    fi
fi
if [ "$AUTH" = none ]; then
    say "AuthType=auth/none, CredType=cred/none (no munge)"
    AUTH_LINES="AuthType=auth/none
CredType=cred/none"
fi

export SLURM_CONF="$WORK/slurm.conf"
cat >"$SLURM_CONF" <<EOF
# One-node Slurm for tools/slurm_check.sh: loopback only, everything under $WORK.
ClusterName=voxtellcheck
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
$AUTH_LINES
StateSaveLocation=$WORK/state/ctld
SlurmdSpoolDir=$WORK/state/slurmd
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Root in a container: no cgroups, no accounting daemon.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$WORK/log/jobcomp.txt
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# Keep finished jobs visible to scontrol (there is no slurmdbd for sacct).
MinJobAge=3600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=check Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
say "slurm.conf ($SLURM_CONF):"
sed 's/^/    /' "$SLURM_CONF"

slurmctld -D -f "$SLURM_CONF" >"$WORK/log/slurmctld.out" 2>&1 &
PIDS+=("slurmctld:$!")
slurmd -D -f "$SLURM_CONF" -N "$HOST" >"$WORK/log/slurmd.out" 2>&1 &
PIDS+=("slurmd:$!")
state=""
for _ in $(seq 120); do
    for entry in "${PIDS[@]}"; do
        kill -0 "${entry##*:}" 2>/dev/null || {
            say "${entry%%:*} exited; its logs:"
            tail -30 "$WORK/log/${entry%%:*}.out" "$WORK/log/${entry%%:*}.log" 2>/dev/null || true
            fail "${entry%%:*} did not start"
        }
    done
    state="$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null || true)"
    [ "$state" = idle ] && break
    sleep 1
done
if [ "$state" != idle ]; then
    tail -30 "$WORK/log/slurmctld.log" "$WORK/log/slurmd.log" 2>/dev/null || true
    fail "node $HOST is '${state:-unknown}' after 120 s, not idle"
fi
say "slurmctld (pid ${PIDS[-2]##*:}) and slurmd (pid ${PIDS[-1]##*:}) up; sinfo:"
sinfo | sed 's/^/    /'

# ---------------------------------------------------------------------------------------------
# 3. The cohort.
"$BIN" phantom "$WORK/phantoms" --cases 6 --seed 4242 >"$WORK/log/phantom.log" 2>&1 \
    || { cat "$WORK/log/phantom.log"; fail "voxtell phantom"; }
COHORT="$WORK/phantoms/Dataset001_Phantom/imagesTr"
say "cohort: $COHORT ($(ls "$COHORT" | wc -l) images)"
MODEL="$ROOT/assets/demo/model"
BANK="$ROOT/assets/demo/bank.npz"
OUT="$WORK/out-array"
REPORTS="$WORK/reports"
LOGS="$WORK/logs"
# Neither Slurm (--output) nor voxtell (--report) creates these folders.
mkdir -p "$OUT" "$REPORTS" "$LOGS"

# ---------------------------------------------------------------------------------------------
# 4. The array job.
SBATCH="$WORK/jobs/cohort.sbatch"
cat >"$SBATCH" <<EOF
#!/bin/bash
#SBATCH --job-name=voxtell-cohort
#SBATCH --array=0-$((PARTS - 1))
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --output=$LOGS/%A_%a.out
#SBATCH --chdir=$WORK
echo "array task \$SLURM_ARRAY_TASK_ID (min \$SLURM_ARRAY_TASK_MIN, max \$SLURM_ARRAY_TASK_MAX, step \$SLURM_ARRAY_TASK_STEP, count \$SLURM_ARRAY_TASK_COUNT) on \$(hostname -s), cpus \$SLURM_CPUS_PER_TASK"
exec "$BIN" predict -i "$COHORT" -o "$OUT" -m "$MODEL" \\
    --embeddings "$BANK" -p ${PROMPTS[0]} ${PROMPTS[1]} "${PROMPTS[2]}" \\
    --part-id auto --num-parts auto --no-overwrite --report "$REPORTS/part-{part}.jsonl"
EOF
say "sbatch file ($SBATCH):"
sed 's/^/    /' "$SBATCH"

# Submits the array, waits for it (bounded) and checks that every task completed with exit 0.
# Sets JOBID.
run_array() {
    local label="$1" sub jobid t0 tasks
    sub="$(sbatch --parsable "$SBATCH")" || fail "sbatch"
    jobid="${sub%%;*}"
    JOBIDS+=("$jobid")
    say "$label: submitted array job $jobid"
    t0=$SECONDS
    while [ -n "$(squeue -h -j "$jobid" -o %i 2>/dev/null)" ]; do
        if [ $((SECONDS - t0)) -ge "$TIMEOUT" ]; then
            squeue -j "$jobid"
            fail "$label: job $jobid still running after $TIMEOUT s"
        fi
        if [ $(((SECONDS - t0) % 10)) = 0 ]; then
            say "  squeue: $(squeue -h -j "$jobid" -o '%i=%T' | tr '\n' ' ')"
        fi
        sleep 1
    done
    say "$label: job $jobid finished after $((SECONDS - t0)) s"
    # One line per task: ArrayTaskId, JobState, ExitCode.
    tasks="$(scontrol -o show job "$jobid" | grep -o 'ArrayTaskId=[^ ]*\|JobState=[^ ]*\|ExitCode=[^ ]*' \
        | paste -d' ' - - - | sort)"
    echo "$tasks" | sed 's/^/    /'
    [ "$(echo "$tasks" | grep -c 'JobState=COMPLETED ExitCode=0:0')" = "$PARTS" ] \
        || { echo "$tasks"; fail "$label: not all $PARTS tasks COMPLETED with exit 0"; }
    JOBID="$jobid"
}

run_array "array run"
JOB1="$JOBID"
for i in $(seq 0 $((PARTS - 1))); do
    log="$LOGS/${JOB1}_$i.out"
    say "log of task $i ($log):"
    [ -f "$log" ] || fail "no log for task $i"
    sed 's/^/    /' "$log"
done

# ---------------------------------------------------------------------------------------------
# 5. One process, same prediction; then the checks.
SINGLE="$WORK/out-single"
mkdir -p "$SINGLE"
t0=$SECONDS
"$BIN" predict -q -i "$COHORT" -o "$SINGLE" -m "$MODEL" --embeddings "$BANK" -p "${PROMPTS[@]}" \
    --report "$WORK/single.jsonl" 2>"$WORK/log/single.err" \
    || { cat "$WORK/log/single.err"; fail "single-process predict"; }
say "single process: $(ls "$SINGLE" | wc -l) files in $((SECONDS - t0)) s"

errors=0
check() { # check NAME CONDITION-RESULT(0/1) DETAIL
    if [ "$2" = 0 ]; then say "ok    $1"; else say "WRONG $1: $3"; errors=$((errors + 1)); fi
}

# a) file names and bytes
list_array="$(cd "$OUT" && find . -mindepth 1 | sort)"
list_single="$(cd "$SINGLE" && find . -mindepth 1 | sort)"
[ "$list_array" = "$list_single" ]
check "same $(echo "$list_single" | wc -l) file names in the union of the parts and the single run" $? \
    "$(diff <(echo "$list_array") <(echo "$list_single") | head)"
nbytes=0 ndecoded=0 nbad=0
while read -r f; do
    [ -f "$SINGLE/$f" ] && [ -f "$OUT/$f" ] || continue
    if cmp -s "$OUT/$f" "$SINGLE/$f"; then
        nbytes=$((nbytes + 1))
    elif cmp -s <(gzip -dc "$OUT/$f") <(gzip -dc "$SINGLE/$f"); then
        ndecoded=$((ndecoded + 1)); say "  $f: gzip bytes differ, decoded NIfTI (header + voxels) equal"
    else
        nbad=$((nbad + 1)); say "  $f: decoded NIfTI differs"
    fi
done <<<"$list_single"
[ "$ndecoded" = 0 ] && [ "$nbad" = 0 ] && [ "$nbytes" -gt 0 ]
check "outputs byte-identical ($nbytes identical, $ndecoded equal only decoded, $nbad different)" $? \
    "not every file is byte-identical"

# b) reports: every case in exactly one part, status ok
mapfile -t images < <(cd "$COHORT" && ls | LC_ALL=C sort)
mapfile -t cases < <(printf '%s\n' "${images[@]}" | sed -E 's/\.nii(\.gz)?$//' | LC_ALL=C sort)
single_cases="$(jq -r 'select(.status == "ok") | .case' "$WORK/single.jsonl" | LC_ALL=C sort)"
[ "$single_cases" = "$(printf '%s\n' "${cases[@]}")" ]
check "single run: ${#cases[@]} cases ok, named after the image files" $? \
    "$(diff <(echo "$single_cases") <(printf '%s\n' "${cases[@]}"))"
all_part_cases=""
for i in $(seq 0 $((PARTS - 1))); do
    rep="$REPORTS/part-$i.jsonl"
    [ -f "$rep" ] || { check "report of part $i exists" 1 "no $rep"; continue; }
    got="$(jq -r '.case' "$rep" | LC_ALL=C sort)"
    notok="$(jq -r 'select(.status != "ok") | "\(.case): \(.status) \(.error // "")"' "$rep")"
    # nnU-Net's rule: sorted case names, every PARTS-th from i.
    want="$(printf '%s\n' "${cases[@]}" | awk -v n="$PARTS" -v i="$i" '(NR - 1) % n == i')"
    [ "$got" = "$want" ] && [ -z "$notok" ]
    check "part $i ran $(echo "$got" | tr '\n' ' ')= sorted[$i::$PARTS], all ok" $? \
        "got [$(echo "$got" | tr '\n' ' ')] want [$(echo "$want" | tr '\n' ' ')] ${notok:+not ok: $notok}"
    all_part_cases+="$got"$'\n'
    # the part announced itself
    grep -qi "part $i" "$LOGS/${JOB1}_$i.out"
    check "task $i's log names part $i" $? "$(grep -i part "$LOGS/${JOB1}_$i.out" | head -3)"
done
dups="$(printf '%s' "$all_part_cases" | sed '/^$/d' | LC_ALL=C sort | uniq -d)"
union="$(printf '%s' "$all_part_cases" | sed '/^$/d' | LC_ALL=C sort -u)"
[ -z "$dups" ] && [ "$union" = "$(printf '%s\n' "${cases[@]}")" ]
check "every case in exactly one part's report" $? "duplicates: [$dups] union: [$union]"
leftovers="$(find "$OUT" -name '.voxtell-tmp-*')"
[ -z "$leftovers" ]
check "no temporary files left in the output folder" $? "$leftovers"
say "peak RSS per case (MB): $(jq -r '"\(.case)=\(.peak_rss / 1048576 | floor)"' "$REPORTS"/part-*.jsonl | tr '\n' ' ')"

# c) resubmitted: --no-overwrite skips every case and leaves the outputs alone
before="$(cd "$OUT" && find . -type f -printf '%p %s %T@\n' | sort)"
declare -A nlines
for i in $(seq 0 $((PARTS - 1))); do nlines[$i]="$(wc -l <"$REPORTS/part-$i.jsonl")"; done
run_array "resubmitted (--no-overwrite)"
JOB2="$JOBID"
after="$(cd "$OUT" && find . -type f -printf '%p %s %T@\n' | sort)"
new_status="$(for i in $(seq 0 $((PARTS - 1))); do
    tail -n "+$((nlines[$i] + 1))" "$REPORTS/part-$i.jsonl" | jq -r '.status'
done | sort | uniq -c | sed 's/^ *//')"
[ "$before" = "$after" ] && [ "$new_status" = "${#cases[@]} skipped" ]
check "resubmission (job $JOB2) skipped every case, outputs untouched" $? \
    "statuses: [$new_status]; files changed: $(diff <(echo "$before") <(echo "$after") | head -4)"

say "jobcomp log ($WORK/log/jobcomp.txt), one line per task:"
sed -E 's/.*(JobId=[^ ]+).* (JobState=[^ ]+).* (StartTime=[^ ]+) (EndTime=[^ ]+).* (ArrayJobId=[^ ]+) (ArrayTaskId=[^ ]+).* (ExitCode=[^ ]+).*/    \1 \5 \6 \2 \3 \4 \7/' \
    "$WORK/log/jobcomp.txt" 2>/dev/null || true

[ "$errors" = 0 ] || fail "$errors check(s) failed"
say "all checks passed (auth: $AUTH)"
RESULT=PASS
