#!/usr/bin/env bash
# Check that two builds of `voxtell` write byte-identical `predict` outputs: run both on the
# committed fixtures (NIfTI files with every output kind, a combined map, a DICOM series, a jobs
# list) and on demo phantoms with the embedded demo model, then compare every file with cmp.
# Used to show that a refactoring changed no output.
#
# Usage: tools/compare_predict_outputs.sh BEFORE_BINARY AFTER_BINARY [WORK_DIR]
#   e.g. build the old tree in a git worktree, then
#   tools/compare_predict_outputs.sh /tmp/voxtell-before target/release/voxtell
# Prints one line per run and the number of files compared; exits non-zero on any difference
# or on a run that failed with one binary only.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
BEFORE="$1"
AFTER="$2"
WORK="${3:-$(mktemp -d "${TMPDIR:-/tmp}/compare-predict.XXXXXX")}"
for b in "$BEFORE" "$AFTER"; do
    [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
done
mkdir -p "$WORK"

FIX="$ROOT/fixtures"
MODEL="$FIX/fusion/cfg_a"
BANK="$FIX/infer/predict/bank.npz"
IMAGES="$FIX/infer/predict/images"
DEMO="$ROOT/assets/demo"
# No model, bank or text model from the environment or a cache.
export VOXTELL_MODEL="" VOXTELL_EMBEDDINGS="" VOXTELL_TEXT_MODEL="" HF_HOME="$WORK/no-hf-home"

# Demo phantoms: written once by the AFTER binary (the generator is not what is compared).
PHANTOMS="$WORK/phantoms"
if [ ! -d "$PHANTOMS" ]; then
    "$AFTER" phantom "$PHANTOMS" --cases 3 --seed 4242 >/dev/null
fi
PHANTOM_IMAGES="$(find "$PHANTOMS" -type d -name imagesTr | head -n 1)"
[ -n "$PHANTOM_IMAGES" ] || { echo "no phantom images under $PHANTOMS" >&2; exit 1; }
JOBS="$WORK/jobs.json"
cat >"$JOBS" <<EOF
[{"image": "$IMAGES/mr_small.nii.gz", "prompts": ["Liver", "left kidney"]},
 {"image": "$IMAGES/ct_oblique.nii.gz", "prompts": "lesion (liver)/segment 4"}]
EOF

files=0
failed=0
run() {
    local name="$1"
    shift
    local rc_before=0 rc_after=0
    rm -rf "$WORK/before/$name" "$WORK/after/$name"
    mkdir -p "$WORK/before/$name" "$WORK/after/$name"
    "$BEFORE" predict -q -o "$WORK/before/$name" "$@" 2>"$WORK/before/$name.stderr" || rc_before=$?
    "$AFTER" predict -q -o "$WORK/after/$name" "$@" 2>"$WORK/after/$name.stderr" || rc_after=$?
    local listed_before listed_after
    listed_before="$(cd "$WORK/before/$name" && find . -type f | sort)"
    listed_after="$(cd "$WORK/after/$name" && find . -type f | sort)"
    if [ "$rc_before" != "$rc_after" ] || [ "$listed_before" != "$listed_after" ]; then
        echo "DIFFERENT $name: exit $rc_before vs $rc_after, files:" >&2
        diff <(echo "$listed_before") <(echo "$listed_after") >&2 || true
        failed=$((failed + 1))
        return
    fi
    local n=0 f
    while IFS= read -r f; do
        [ -n "$f" ] || continue
        if ! cmp -s "$WORK/before/$name/$f" "$WORK/after/$name/$f"; then
            echo "DIFFERENT $name: $f" >&2
            failed=$((failed + 1))
        fi
        n=$((n + 1))
    done <<<"$listed_before"
    files=$((files + n))
    echo "$name: exit $rc_after, $n file(s) identical"
}

ALL=(--save-probabilities --statistics --preview --keep-largest)
run fixtures-all -i "$IMAGES" -m "$MODEL" --embeddings "$BANK" -p Liver "left kidney" "Läsion der Leber" "${ALL[@]}"
run fixtures-combined -i "$IMAGES" -m "$MODEL" --embeddings "$BANK" -p Liver "left kidney" --save-combined
run fixtures-f32 -i "$IMAGES/ct_oblique.nii.gz" -m "$MODEL" --embeddings "$BANK" -p Liver --accumulate f32 --step-size 0.7
run fixtures-jobs --jobs "$JOBS" -m "$MODEL" --embeddings "$BANK"
run fixtures-dicom -i "$FIX/io/dicom/mr_oblique" "$FIX/io/dicom/ct_axial" -m "$MODEL" --embeddings "$BANK" -p Liver --statistics
printf 'not a NIfTI file' >"$WORK/broken.nii.gz"
run fixtures-bad-case -i "$IMAGES/mr_small.nii.gz" "$WORK/broken.nii.gz" "$IMAGES/ct_oblique.nii.gz" -m "$MODEL" --embeddings "$BANK" -p Liver
run demo-phantoms -i "$PHANTOM_IMAGES" -m "$DEMO/model" --embeddings "$DEMO/bank.npz" \
    -p liver "left kidney" "the patient's right kidney" spleen aorta "hypodense liver lesion" --statistics --preview

echo "$files file(s) compared, $failed difference(s) (outputs in $WORK)"
[ "$failed" = 0 ]
