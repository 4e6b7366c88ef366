#!/usr/bin/env python3
"""Helpers of tools/bench_vs_official.sh: build a benchmark case, run the official VoxTell predictor.

Run from the repository root with the pinned venv (tools/.venv, see tools/README.md):

    tools/.venv/bin/python tools/bench_official.py make DIR --size 192 --prompts 13 [--small]
    tools/.venv/bin/python tools/bench_official.py run DIR --prompts K --threads T [--out OUT]
    tools/.venv/bin/python tools/bench_official.py compare OUT_A OUT_B
    tools/.venv/bin/python tools/bench_official.py measure --report FILE -- CMD ...

`make` writes into DIR (skipped when DIR already holds a case made with the same arguments):
- `plans.json` + `fold_0/checkpoint_final.pth`: a model folder in the layout of the published
  VoxTell model (spec §1), with RANDOM weights (seeded; the official `VoxTellModel.initialize`).
  The checkpoint is a default `torch.save` of the dict nnU-Net's trainer writes
  (`network_weights` = the VoxTellModel state_dict, plus `optimizer_state`, `logging`, ...).
  Default: the published sizes (ResEnc-L features 32..320, 6 stages, blocks 1,3,4,6,6,6,
  patch 192^3, text dim 2560, query dim 2048, 32 fusion heads, projection hidden 2048; about
  440 M parameters, a ~1.8 GB checkpoint). `--small`: features 8..64, one block per stage,
  patch 64^3, text dim 64, query dim 64, 4 fusion heads (a ~10 MB checkpoint), for smoke tests.
- `ct.nii.gz`: a synthetic CT-like volume, SIZE^3 voxels, int16 HU (air -1000, an ellipsoid
  body with lungs, an organ and a spine, Gaussian noise), 1 mm spacing, RAS affine.
- `bank.npz`: an embedding bank in the official format (`labels` numpy unicode, `embeddings`
  float16 N x text_dim) with prompts "prompt 0" .. "prompt N-1" and seeded random unit vectors.
- `bench_config.json`: the arguments and sizes (written last; it marks the case complete).

`run` runs the OFFICIAL pipeline of the PyPI `voxtell` package on DIR/ct.nii.gz on the CPU with
the first K prompts. It makes the same calls as the official CLI `voxtell-predict -i ct.nii.gz
-o OUT -m DIR -p "prompt 0" ... --embeddings DIR/bank.npz --device cpu`:
`VoxTellPredictor(model_dir=DIR, device=cpu, embedding_bank=DIR/bank.npz)` and
`predictor.predict_from_files(...)` (reading with NibabelIOWithReorient, preprocessing, sliding
window, postprocessing, writing one mask per prompt). Every prompt is in the bank, so
`embed_text_prompts` takes the precomputed vectors and the Qwen3 text backbone is never loaded
(checked). For a `--small` case the sizes the predictor hard-codes are overridden first (see
`small_model_patches`). torch.set_num_threads(T). Prints the wall times of its phases; the
masks go to OUT (default: a temporary folder, deleted afterwards).

`compare` prints how many mask voxels of the same-named files of two output folders agree.

`measure` runs CMD and writes "WALL_S PEAK_RSS_KIB" to FILE (peak RSS from
getrusage(RUSAGE_CHILDREN), the fallback of bench_vs_official.sh without /usr/bin/time; it
cannot be below the ~15 MiB of the forked Python image before exec, so it is meaningful for
large processes only).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fixture_common import located, resenc_arch_kwargs

T_START = time.perf_counter()

# Published model (spec §1/§2): plans arch kwargs and the sizes VoxTellPredictor hard-codes.
FULL = dict(
    patch_size=[192, 192, 192],
    features_per_stage=[32, 64, 128, 256, 320, 320],
    n_blocks_per_stage=[1, 3, 4, 6, 6, 6],
    text_embedding_dim=2560, query_dim=2048, num_heads=32, project_to_decoder_hidden_dim=2048,
)
SMALL = dict(
    patch_size=[64, 64, 64],
    features_per_stage=[8, 16, 32, 64, 64, 64],
    n_blocks_per_stage=[1, 1, 1, 1, 1, 1],
    text_embedding_dim=64, query_dim=64, num_heads=4, project_to_decoder_hidden_dim=64,
)
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
FORMAT_VERSION = 1  # bump when `make` changes what it writes, to invalidate cached cases


def prompt_names(n):
    return [f"prompt {i}" for i in range(n)]


def model_sizes(small):
    return dict(SMALL if small else FULL)


def arch_kwargs(sizes):
    return resenc_arch_kwargs(sizes["features_per_stage"], STRIDES, sizes["n_blocks_per_stage"])


def plans_for(sizes, small):
    patch = sizes["patch_size"]
    tag = "_bench_small" if small else "_bench"
    return {
        "dataset_name": "VoxTellDataset",
        "plans_name": "nnUNetResEncUNetLPlans_noResampling",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": patch,
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetResEncUNetLPlans_noResampling_3d_fullres" + tag,
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "median_image_size_in_voxels": patch,
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "architecture": {
                    "network_class_name":
                        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                    "arch_kwargs": arch_kwargs(sizes),
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "nnUNetPlannerResEncL_noResampling",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


def decoder_configs(sizes):
    """VoxTellModel.DECODER_CONFIGS for a patch: per stage the channels and the feature-map
    shape in the (h, w, d) order the model unpacks, i.e. tensor axes (1, 2, 0)."""
    shape = list(sizes["patch_size"])
    out = {}
    for s, (stride, ch) in enumerate(zip(STRIDES, sizes["features_per_stage"])):
        shape = [n // k for n, k in zip(shape, stride)]
        out[s] = {"channels": ch, "shape": (shape[1], shape[2], shape[0])}
    return out


class small_model_patches:
    """Let the official code build a model whose sizes differ from the published ones.

    VoxTellPredictor.__init__ hard-codes text_embedding_dim=2560, num_heads=32, query_dim=2048
    and project_to_decoder_hidden_dim=2048, and VoxTellModel sizes its positional encoding
    from the class attribute DECODER_CONFIGS (192^3 patch). For a small case both are replaced
    while the block is active; everything else (loading, pipeline) stays official. A no-op for
    the published sizes."""

    def __init__(self, sizes):
        self.sizes = sizes
        self.active = sizes != FULL

    def __enter__(self):
        if not self.active:
            return self
        import voxtell.inference.predictor as vp
        from voxtell.model.voxtell_model import VoxTellModel
        self.saved = (VoxTellModel.DECODER_CONFIGS, vp.VoxTellModel)
        VoxTellModel.DECODER_CONFIGS = decoder_configs(self.sizes)
        sizes = self.sizes

        def build(**kwargs):
            for k in ("text_embedding_dim", "query_dim", "num_heads",
                      "project_to_decoder_hidden_dim"):
                kwargs[k] = sizes[k]
            return VoxTellModel(**kwargs)

        vp.VoxTellModel = build
        return self

    def __exit__(self, *exc):
        if self.active:
            import voxtell.inference.predictor as vp
            from voxtell.model.voxtell_model import VoxTellModel
            VoxTellModel.DECODER_CONFIGS, vp.VoxTellModel = self.saved
        return False


# ------------------------------------------------------------------------------------ make


def random_network(sizes, seed):
    import torch
    from voxtell.model.voxtell_model import VoxTellModel

    kwargs = located(arch_kwargs(sizes))
    torch.manual_seed(seed)
    with small_model_patches(sizes):  # DECODER_CONFIGS sizes the positional encoding
        net = VoxTellModel(input_channels=1, **kwargs, decoder_layer=4,
                           text_embedding_dim=sizes["text_embedding_dim"],
                           num_maskformer_stages=5, num_heads=sizes["num_heads"],
                           query_dim=sizes["query_dim"],
                           project_to_decoder_hidden_dim=sizes["project_to_decoder_hidden_dim"],
                           deep_supervision=False)
    with torch.no_grad():
        net.apply(VoxTellModel.initialize)  # He-normal convs, zero last norm of each block
    return net.eval()


def nnunet_checkpoint(net, plans):
    """The dict nnU-Net's trainer saves at the end of training."""
    import torch

    opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99,
                          nesterov=True)
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [0.0], "ema_fg_dice": [0.0],
                    "dice_per_class_or_region": [[0.0]], "train_losses": [0.0],
                    "val_losses": [0.0], "lrs": [1e-2], "epoch_start_timestamps": [0.0],
                    "epoch_end_timestamps": [1.0]},
        "_best_ema": 0.0,
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                      "dataset_json": {"channel_names": {"0": "CT"},
                                       "labels": {"background": 0, "target": 1},
                                       "numTraining": 1, "file_ending": ".nii.gz"},
                      "device": torch.device("cpu")},
        "trainer_name": "VoxTellTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def synthetic_ct(shape, seed):
    """int16 HU volume of `shape` (R, A, S) voxels, indexed [R, A, S]: air, an ellipsoid body,
    lungs, an organ, a spine (proportions relative to each axis)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[:shape[0], :shape[1], :shape[2]]
    x = (x - (shape[0] - 1) / 2.0) / shape[0]  # toward R
    y = (y - (shape[1] - 1) / 2.0) / shape[1]  # toward A
    z = (z - (shape[2] - 1) / 2.0) / shape[2]  # toward S

    def ellipsoid(cx, cy, cz, rx, ry, rz):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0

    hu = np.full(tuple(shape), -1000.0, dtype=np.float32)
    hu[ellipsoid(0, 0, 0, 0.42, 0.30, 0.47)] = 40.0  # soft tissue
    hu[ellipsoid(-0.17, 0.02, 0.18, 0.12, 0.16, 0.20)] = -850.0  # lungs
    hu[ellipsoid(0.17, 0.02, 0.18, 0.12, 0.16, 0.20)] = -850.0
    hu[ellipsoid(-0.15, 0.05, -0.12, 0.16, 0.13, 0.12)] = 60.0  # an organ (liver-like)
    spine = ((x / 0.045) ** 2 + ((y + 0.2) / 0.045) ** 2 <= 1.0) & (np.abs(z) < 0.45)
    hu[np.broadcast_to(spine, hu.shape)] = 700.0
    hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def write_nifti(path, vol):
    import nibabel as nib
    import numpy as np

    affine = np.eye(4)
    affine[:3, 3] = -(np.array(vol.shape) - 1) / 2.0  # 1 mm spacing, RAS, centred on the origin
    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_bank(path, n, dim, seed):
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    v = rng.standard_normal((n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.savez_compressed(path, labels=np.array(prompt_names(n)), embeddings=v.astype(np.float16))


def cmd_make(args):
    d = Path(args.dir)
    sizes = model_sizes(args.small)
    shape = [int(v) for v in args.shape.split(",")] if args.shape else [args.size] * 3
    if len(shape) != 3 or min(shape) < 1:
        sys.exit(f"make: --shape wants three positive sizes R,A,S, got {args.shape!r}")
    want = {"format_version": FORMAT_VERSION, "small": args.small, "size": args.size,
            "prompts": args.prompts, "seed": args.seed, "model": sizes}
    if args.shape:
        want["shape"] = shape
    marker = d / "bench_config.json"
    files = [d / "plans.json", d / "fold_0" / "checkpoint_final.pth", d / "ct.nii.gz",
             d / "bank.npz"]
    if marker.exists() and all(f.exists() for f in files):
        have = json.loads(marker.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            print(f"make: {d} is up to date (cached)")
            return 0
    if marker.exists():
        marker.unlink()

    import torch

    torch.set_num_threads(args.threads)
    (d / "fold_0").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plans = plans_for(sizes, args.small)
    (d / "plans.json").write_text(json.dumps(plans, indent=1) + "\n")
    net = random_network(sizes, args.seed)
    n_params = sum(p.numel() for p in net.parameters())
    tmp = d / "fold_0" / "checkpoint_final.pth.tmp"
    torch.save(nnunet_checkpoint(net, plans), tmp)
    os.replace(tmp, d / "fold_0" / "checkpoint_final.pth")
    del net
    t1 = time.perf_counter()
    write_nifti(d / "ct.nii.gz", synthetic_ct(shape, args.seed))
    write_bank(d / "bank.npz", args.prompts, sizes["text_embedding_dim"], args.seed)
    t2 = time.perf_counter()
    info = dict(want, parameters=n_params,
                checkpoint_bytes=(d / "fold_0" / "checkpoint_final.pth").stat().st_size)
    marker.write_text(json.dumps(info, indent=1) + "\n")
    print(f"make: {d}: {n_params / 1e6:.1f} M parameters "
          f"({info['checkpoint_bytes'] / 2**20:.0f} MiB checkpoint, {t1 - t0:.1f} s), "
          f"ct.nii.gz {'x'.join(map(str, shape))}, bank {args.prompts} x {sizes['text_embedding_dim']} "
          f"({t2 - t1:.1f} s)")
    return 0


# ------------------------------------------------------------------------------------- run


def offline_env(threads):
    """The environment of a timed official run, set before torch is imported: `threads`
    OpenMP/MKL/OpenBLAS threads, nothing downloaded, no VOXTELL_MODEL."""
    t = str(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = t
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.pop("VOXTELL_MODEL", None)


def cmd_run(args):
    offline_env(args.threads)

    d = Path(args.dir).resolve()
    cfg = json.loads((d / "bench_config.json").read_text())
    if args.prompts > cfg["prompts"]:
        sys.exit(f"run: {d} has a bank of {cfg['prompts']} prompts, asked for {args.prompts}")
    prompts = prompt_names(args.prompts)

    import torch

    torch.set_num_threads(args.threads)
    from voxtell.inference.predictor import VoxTellPredictor

    t_import = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="voxtell-official-"))
    try:
        with small_model_patches(cfg["model"]):
            predictor = VoxTellPredictor(model_dir=str(d), device=torch.device("cpu"),
                                         embedding_bank=str(d / "bank.npz"))
        t_load = time.perf_counter()
        written = predictor.predict_from_files(inputs=[str(d / "ct.nii.gz")],
                                               output_folder=str(out), text_prompts=prompts,
                                               save_combined=False, overwrite=True)
        t_pred = time.perf_counter()
        assert predictor.text_backbone is None, "the text backbone was loaded"
        assert len(written) == len(prompts), written
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(f"official: {len(prompts)} prompt(s), {args.threads} thread(s): "
          f"import {t_import - T_START:.2f} s, load {t_load - t_import:.2f} s, "
          f"predict+write {t_pred - t_load:.2f} s, wall {t_pred - T_START:.2f} s")
    return 0


# --------------------------------------------------------------------------------- compare


def cmd_compare(args):
    import nibabel as nib
    import numpy as np

    a, b = Path(args.a), Path(args.b)
    names = sorted(p.name for p in a.glob("*.nii.gz"))
    if not names or sorted(p.name for p in b.glob("*.nii.gz")) != names:
        print(f"compare: different files: {names} vs "
              f"{sorted(p.name for p in b.glob('*.nii.gz'))}")
        return 1
    worst = 1.0
    for n in names:
        x = np.asarray(nib.load(str(a / n)).dataobj)
        y = np.asarray(nib.load(str(b / n)).dataobj)
        if x.shape != y.shape:
            print(f"compare: {n}: shapes {x.shape} vs {y.shape}")
            return 1
        agree = float((x == y).mean())
        worst = min(worst, agree)
        print(f"compare: {n}: {agree * 100:.4f} % of voxels agree, foreground "
              f"{int((x > 0).sum())} vs {int((y > 0).sum())}")
    print(f"compare: worst agreement {worst * 100:.4f} %")
    return 0


# --------------------------------------------------------------------------------- measure


def cmd_measure(args):
    import resource
    import subprocess

    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    Path(args.report).write_text(f"{wall:.3f} {rss_kib}\n")
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="build the model folder, ct.nii.gz and bank.npz in DIR")
    m.add_argument("dir")
    m.add_argument("--size", type=int, default=192, help="volume edge in voxels")
    m.add_argument("--shape", help="volume size R,A,S in voxels instead of --size cubed "
                   "(e.g. 512,512,300 for a whole CT)")
    m.add_argument("--prompts", type=int, default=13, help="prompts in the bank")
    m.add_argument("--small", action="store_true", help="a small model for smoke tests")
    m.add_argument("--seed", type=int, default=20260101)
    m.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("run", help="run the official predictor on DIR/ct.nii.gz")
    r.add_argument("dir")
    r.add_argument("--prompts", type=int, required=True, help="use the first K prompts")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", help="output folder (default: a temporary folder, deleted)")
    c = sub.add_parser("compare", help="voxel agreement of the masks of two output folders")
    c.add_argument("a")
    c.add_argument("b")
    ms = sub.add_parser("measure", help="run a command, write its wall time and peak RSS")
    ms.add_argument("--report", required=True, help="file to write 'WALL_S PEAK_RSS_KIB' to")
    ms.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    return {"make": cmd_make, "run": cmd_run, "compare": cmd_compare,
            "measure": cmd_measure}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
