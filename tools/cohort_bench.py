#!/usr/bin/env python3
"""Helpers of tools/cohort_bench_vs_official.sh (cohort throughput of `voxtell predict` against the
official `voxtell-predict` 0.1.2). Run with the venv tools/.venv-official (the script makes it):

    tools/.venv-official/bin/python tools/cohort_bench.py phantoms VOXTELL OUT --cases 8
        --seed S --min 160 --max 192
    tools/.venv-official/bin/python tools/cohort_bench.py official --threads T [--timing FILE]
        -- -i IN -o OUT -m MODEL -p ... --embeddings BANK --device cpu
    tools/.venv-official/bin/python tools/cohort_bench.py summary RESULTS.tsv --cases N

`phantoms` runs `VOXTELL phantom TMP --cases N --seed S` (the synthetic torsos of voxtell-train,
at most 1 M voxels each: the generator coarsens larger grids) and resamples each case's image
(trilinear: scipy.ndimage.affine_transform, order 1, corner voxels aligned; int16 HU) to a seeded
random shape with every edge in [--min, --max]; the affine keeps the case's orientation (a third
of the phantoms are stored in a non-RAS order) and origin, its columns scaled so that the first
and last voxel centres stay where they were. Written as OUT/case_00.nii.gz ... (a flat folder
holding nothing else), with OUT/../cohort.json listing the shapes. The model plans have no
resampling (spacing is ignored), so the cost of a case is its voxel grid: with edges <= the
patch (160..192 against the published 192^3) every case is one sliding-window tile after
padding, plus its own reading, preprocessing and writing.

`official` runs the official CLI's own `main()` (voxtell.inference.predict_from_raw_data, the
`voxtell-predict` entry point) with the given arguments, after OMP/MKL/OPENBLAS_NUM_THREADS=T
and torch.set_num_threads(T) (the CLI has no thread option; torch's default is every core), with
HF_HUB_OFFLINE=1 (nothing may be downloaded: every prompt is in the bank, so the Qwen3 text
backbone is never loaded) and, for a `--small` model folder (its bench_config.json says so),
bench_official.small_model_patches, which only overrides the sizes VoxTellPredictor hard-codes.
With --timing FILE it also writes the seconds each case spent in the official
`predict_sliding_window_return_logits` (the network's forward passes plus the Gaussian tile
accumulation; a wrapper around the method that changes nothing else) as JSON.

`summary` reads the rows "REPEAT TOOL WALL_S RSS_KIB REPORT" (tab-separated; REPORT is the
`--report` JSONL of a run of ours, or the official --timing JSON, or "-") and prints per tool the
median wall time, cases/hour, peak RSS, ratios to the official tool and, where a report says,
the sums of network/read/predict/write seconds and the share of the wall time outside the
network.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# -------------------------------------------------------------------------------- phantoms


def cmd_phantoms(args):
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    if not 8 <= args.min <= args.max:
        sys.exit(f"phantoms: want 8 <= --min <= --max, got {args.min}, {args.max}")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    shapes = [tuple(int(v) for v in rng.integers(args.min, args.max + 1, size=3))
              for _ in range(args.cases)]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cohort-phantoms-", dir=out.parent) as tmp:
        subprocess.run([args.voxtell, "phantom", tmp, "--name", "Dataset001_Phantom",
                        "--cases", str(args.cases), "--seed", str(args.seed)],
                       check=True, stdout=subprocess.DEVNULL)
        images = sorted((Path(tmp) / "Dataset001_Phantom" / "imagesTr").glob("*_0000.nii.gz"))
        if len(images) != args.cases:
            sys.exit(f"phantoms: {len(images)} images from voxtell phantom, want {args.cases}")
        cases = []
        for i, (src, shape) in enumerate(zip(images, shapes)):
            img = nib.load(str(src))
            vol = np.asarray(img.dataobj).astype(np.float32)
            old = vol.shape
            step = [(o - 1) / (n - 1) for n, o in zip(shape, old)]  # input voxels per output voxel
            res = ndimage.affine_transform(vol, step, output_shape=shape, order=1, mode="nearest")
            assert res.shape == shape, (res.shape, shape)
            res = np.clip(np.rint(res), -32768, 32767).astype(np.int16)
            affine = img.affine.copy()
            for a in range(3):
                affine[:3, a] *= (old[a] - 1) / (shape[a] - 1)
            new = nib.Nifti1Image(res, affine)
            new.header.set_xyzt_units("mm", "sec")
            new.set_qform(affine, code=1)
            new.set_sform(affine, code=1)
            name = f"case_{i:02d}.nii.gz"
            nib.save(new, str(out / name))
            cases.append({"file": name, "phantom": src.name, "phantom_shape": list(old),
                          "shape": list(shape)})
    (out.parent / "cohort.json").write_text(json.dumps(
        {"cases": cases, "seed": args.seed, "min": args.min, "max": args.max,
         "voxtell": str(args.voxtell)}, indent=1) + "\n")
    vox = sum(int(np.prod(c["shape"])) for c in cases)
    print(f"phantoms: {args.cases} cases in {out} ({vox / 1e6:.1f} M voxels, "
          f"{time.perf_counter() - t0:.1f} s): "
          + ", ".join("x".join(map(str, c["shape"])) for c in cases))
    return 0


# -------------------------------------------------------------------------------- official


def cmd_official(args, rest):
    sys.path.insert(0, str(HERE))
    import bench_official

    bench_official.offline_env(args.threads)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    model = Path(rest[rest.index("-m") + 1])
    cfg = json.loads((model / "bench_config.json").read_text())

    import torch
    torch.set_num_threads(args.threads)
    from voxtell.inference.predictor import VoxTellPredictor
    from voxtell.inference.predict_from_raw_data import main

    timing = []
    if args.timing:
        inner = VoxTellPredictor.predict_sliding_window_return_logits

        def timed(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(self, *a, **kw)
            finally:
                timing.append(time.perf_counter() - t0)

        VoxTellPredictor.predict_sliding_window_return_logits = timed
    print(f"cohort_bench official: torch {torch.__version__}, {torch.get_num_threads()} intra-op "
          f"thread(s), {torch.get_num_interop_threads()} inter-op", file=sys.stderr, flush=True)
    sys.argv = ["voxtell-predict", *rest]
    with bench_official.small_model_patches(cfg["model"]):
        rc = main()
    if args.timing:
        Path(args.timing).write_text(json.dumps({"sliding_window_seconds": timing}) + "\n")
    return rc


# --------------------------------------------------------------------------------- summary


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def read_report(path):
    """Sums over the cases of one run: ours' --report JSONL, or the official --timing JSON."""
    p = Path(path)
    if path == "-" or not p.exists():
        return {}
    text = p.read_text()
    if p.suffix == ".json":
        sw = json.loads(text).get("sliding_window_seconds", [])
        return {"cases": len(sw), "ok": len(sw), "sliding": sum(sw)}
    lines = [json.loads(l) for l in text.splitlines() if l.strip()]
    out = {"cases": len(lines), "ok": sum(1 for l in lines if l.get("status") == "ok"),
           "seconds": sum(l.get("seconds", 0.0) for l in lines)}
    for key in ("network_seconds", "read_seconds", "predict_seconds", "write_seconds"):
        vals = [l.get(key) for l in lines]
        out[key] = sum(vals) if lines and all(v is not None for v in vals) else None
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def cmd_summary(args):
    rows = []
    for line in Path(args.results).read_text().splitlines():
        if line.strip():
            rep, tool, wall, rss, report = line.split("\t")
            rows.append((int(rep), tool, float(wall), float(rss), report))
    tools = list(dict.fromkeys(r[1] for r in rows))
    stats = {}
    for tool in tools:
        runs = [r for r in rows if r[1] == tool]
        reps = [read_report(r[4]) for r in runs]
        walls = [r[2] for r in runs]
        s = {"n": len(runs), "wall": median(walls), "rss": median([r[3] / 1024 for r in runs])}
        s["cph"] = args.cases / s["wall"] * 3600
        for key in ("seconds", "network_seconds", "read_seconds", "predict_seconds",
                    "write_seconds", "sliding"):
            s[key] = median([r.get(key) for r in reps])
        # share outside the network, per run, then the median
        if tool != "official":
            s["outside"] = median([(w - r["network_seconds"]) / w * 100 if r.get("network_seconds")
                                   is not None else None for w, r in zip(walls, reps)])
        else:
            s["outside"] = median([(w - r["sliding"]) / w * 100 if r.get("sliding") is not None
                                   else None for w, r in zip(walls, reps)])
        s["ok"] = [r.get("ok") for r in reps if r]
        stats[tool] = s

    o = stats.get("official")
    print(f"{args.cases} cases per run; medians over {max(s['n'] for s in stats.values())} "
          "run(s) per tool; ratios are tool / official")
    head = ["tool", "wall s", "cases/h", "peak RSS MiB", "cases/h ratio", "RSS ratio"]
    body = []
    for tool in tools:
        s = stats[tool]
        body.append([tool, f"{s['wall']:.2f}", f"{s['cph']:.1f}", f"{s['rss']:.0f}",
                     fmt(s["cph"] / o["cph"] if o else None, ".3f"),
                     fmt(s["rss"] / o["rss"] if o else None, ".3f")])
    print(table(body, head))
    b, u = stats.get("ours-base"), stats.get("ours")
    if b and u:
        print(f"ours against the baseline: {u['cph']:.1f} vs {b['cph']:.1f} cases/h "
              f"({u['cph'] / b['cph']:.3f}), peak RSS {u['rss']:.0f} vs {b['rss']:.0f} MiB "
              f"({u['rss'] / b['rss']:.3f})")
    print()
    head = ["tool", "Σ network s", "outside network %", "Σ read s", "Σ predict s", "Σ write s",
            "Σ case s"]
    body = []
    notes = []
    for tool in tools:
        s = stats[tool]
        if tool == "official":
            body.append([tool + " (sliding window)", fmt(s["sliding"], ".2f"), fmt(s["outside"], ".1f"),
                         "-", "-", "-", "-"])
            continue
        body.append([tool, fmt(s["network_seconds"], ".2f"), fmt(s["outside"], ".1f"),
                     fmt(s["read_seconds"], ".2f"), fmt(s["predict_seconds"], ".2f"),
                     fmt(s["write_seconds"], ".2f"), fmt(s["seconds"], ".2f")])
        if s["network_seconds"] is None:
            notes.append(f"{tool}: its --report has no network_seconds (an older build?): the "
                         "share of the wall time outside the network cannot be computed")
        if any(ok != args.cases for ok in s["ok"]):
            notes.append(f"{tool}: cases with status ok per run: {s['ok']} (want {args.cases})")
    print(table(body, head))
    if "official" in stats:
        notes.append("official: 'Σ network' is the time in VoxTellPredictor."
                     "predict_sliding_window_return_logits (forward passes + tile accumulation)")
    for n in notes:
        print(n)
    return 0


def table(rows, head):
    cols = list(zip(*([head] + rows)))
    width = [max(len(str(c)) for c in col) for col in cols]
    line = lambda r: "| " + " | ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, width))) + " |"
    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(width)) + "|"
    return "\n".join([line(head), sep] + [line(r) for r in rows])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "official":
        ap = argparse.ArgumentParser(prog="cohort_bench.py official")
        ap.add_argument("--threads", type=int, required=True)
        ap.add_argument("--timing", help="write the per-case sliding-window seconds here (JSON)")
        rest = sys.argv[2:]
        cut = rest.index("--") if "--" in rest else len(rest)
        args = ap.parse_args(rest[:cut])
        return cmd_official(args, rest[cut:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("phantoms", help="a cohort of resampled `voxtell phantom` cases")
    p.add_argument("voxtell")
    p.add_argument("out")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--min", type=int, default=160)
    p.add_argument("--max", type=int, default=192)
    s = sub.add_parser("summary", help="the tables of a results file")
    s.add_argument("results")
    s.add_argument("--cases", type=int, required=True)
    sub.add_parser("official", help="the official voxtell-predict main() (see above)")
    args = ap.parse_args()
    return {"phantoms": cmd_phantoms, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
