"""Write fixtures/infer/stats/intensity.json: value sets with the figures numpy gives for them,
for the intensity block of `voxtell predict --statistics` (voxtell-infer's `stats::Intensity`).

For each set: the f32 values (as a scan holds them, non-finite ones included) and numpy's
mean, std (ddof=0), min, max and percentiles 5/50/95 (default linear method) of the finite
values, computed in float64 from the f32 values; `null` figures where no value is finite.

Usage: tools/.venv-official/bin/python tools/gen_stats_fixtures.py   (numpy from
tools/requirements.txt; writes fixtures/infer/stats/intensity.json)
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "infer" / "stats" / "intensity.json"


def figures(values32):
    v = values32.astype(np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    p5, p50, p95 = np.percentile(v, [5, 50, 95])
    return dict(mean=float(np.mean(v)), std=float(np.std(v)), min=float(np.min(v)),
                max=float(np.max(v)), p5=float(p5), p50=float(p50), p95=float(p95))


def main():
    rng = np.random.default_rng(20261208)
    sets = {
        "one value": np.array([-1000.0], dtype=np.float32),
        "two values": np.array([3.0, -1.5], dtype=np.float32),
        "ties (integer HU)": np.array([40, 40, 41, 39, 40, 60, 20], dtype=np.float32),
        "soft tissue, 1000 values": (rng.normal(55.0, 18.0, 1000)).astype(np.float32),
        "lung and bone, 997 values": np.concatenate([
            rng.normal(-850.0, 60.0, 600), rng.normal(700.0, 150.0, 397)]).astype(np.float32),
        "with NaN and infinities": np.array(
            [np.nan, 12.5, np.inf, -3.25, 7.0, -np.inf, 100.0, 0.0], dtype=np.float32),
        "nothing finite": np.array([np.nan, np.inf], dtype=np.float32),
    }
    cases = []
    for name, vals in sets.items():
        # JSON has no NaN/Infinity: non-finite values are written as strings.
        enc = [float(x) if np.isfinite(x) else str(x) for x in vals.tolist()]
        cases.append(dict(name=name, values=enc, expected=figures(vals)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(numpy=np.__version__, cases=cases), indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, numpy {np.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
