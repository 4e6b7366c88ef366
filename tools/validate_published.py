"""Run the OFFICIAL VoxTell network on one real patch and save its inputs and logits.

The published VoxTell weights (Hugging Face ``mrokuss/VoxTell``, folder ``voxtell_v1.1``)
cannot be fetched in CI, so the Rust port is tested against small fixture models only. This
script lets anyone who has the published folder check the Rust network on the real weights:

    tools/.venv/bin/python tools/validate_published.py --model voxtell_v1.1 \
        --image ct.nii.gz --prompts "liver" "left kidney" --embeddings text_embeddings.npz \
        --out /tmp/voxtell_patch.safetensors
    cargo run --release -p voxtell --example validate_model -- voxtell_v1.1 /tmp/voxtell_patch.safetensors

Everything goes through the official code path of ``voxtell.inference.predictor``:
``VoxTellPredictor`` loads ``plans.json`` and ``fold_0/checkpoint_final.pth``; the scan is read
with nnU-Net's ``NibabelIOWithReorient`` (RAS reorientation, as ``predict_from_jobs``);
``predictor.preprocess`` crops to the non-zero box and z-scores; the volume is padded to the
patch size with ``pad_nd_image`` exactly as ``predict_sliding_window_return_logits`` does, and
the FIRST tile of ``predictor._internal_get_sliding_window_slicers`` (the padded volume's
``[0:192, 0:192, 0:192]`` for the published plans) is taken; ``predictor.embed_text_prompts``
embeds the prompts (bank lookup, else Qwen3-Embedding-4B). The network then runs once on that
patch in float32, without autocast and without the Gaussian weighting of the sliding window, so
its raw logits can be compared voxel by voxel with ``VoxTellModel::forward`` in Rust.

The output safetensors holds ``patch`` (1, 1, D, H, W), ``text`` (1, N, 2560) and ``logits``
(1, N, D, H, W), all float32, and the prompts as a JSON list in the metadata key ``prompts``.
See docs/validation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run the official VoxTell network on the first sliding-window patch of a "
        "scan and save patch, prompt embeddings and logits for the Rust example "
        "`validate_model`.",
    )
    p.add_argument("--model", required=True, type=Path,
                   help="published model folder (voxtell_v1.1: plans.json, fold_0/checkpoint_final.pth)")
    p.add_argument("--image", required=True, type=Path, help="scan to segment (.nii or .nii.gz)")
    p.add_argument("--prompts", required=True, nargs="+", metavar="PROMPT",
                   help='free-text prompts, e.g. "liver" "left kidney"')
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--embeddings", type=Path, default=None,
                   help="official embedding bank (.npz: labels, embeddings). Prompts missing from it, "
                   "or all prompts when it is not given, are embedded by the official predictor with "
                   "the text model (Qwen3-Embedding-4B, ~16 GB in float32 on CPU; it must be "
                   "available to transformers, e.g. in the Hugging Face cache)")
    p.add_argument("--text-model", default="Qwen/Qwen3-Embedding-4B",
                   help="text model name or local folder passed to VoxTellPredictor "
                   "(default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="torch device for the network (default: cpu). Any device runs in float32 "
                   "with TF32 disabled")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    # Heavy imports after argument parsing so that --help is instant.
    import importlib.metadata

    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
    from safetensors.torch import save_file

    from voxtell.inference.predictor import VoxTellPredictor

    for path, what in ((args.model / "plans.json", "plans"),
                       (args.model / "fold_0" / "checkpoint_final.pth", "checkpoint"),
                       (args.image, "image")):
        if not path.is_file():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    if args.embeddings is not None and not args.embeddings.is_file():
        print(f"error: embedding bank not found: {args.embeddings}", file=sys.stderr)
        return 2

    device = torch.device(args.device)
    # Plain float32 everywhere: no TF32 in matmuls or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    t0 = time.perf_counter()
    predictor = VoxTellPredictor(
        model_dir=str(args.model),
        device=device,
        text_encoding_model=args.text_model,
        embedding_bank=str(args.embeddings) if args.embeddings is not None else None,
        # Without an explicit bank, do not try to download the published one (no network is
        # assumed): the prompts are embedded with the text model instead.
        use_precomputed_embeddings=False,
    )
    network = predictor.network.to(device).float().eval()
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s; "
          f"patch size {predictor.patch_size}")

    # Read as predict_from_jobs does, preprocess as predict_single_image does.
    img, _props = NibabelIOWithReorient().read_images([str(args.image)])
    data, bbox, _orig_shape = predictor.preprocess(img)
    print(f"image {tuple(img.shape)} (C, X, Y, Z, RAS); non-zero crop {bbox}; "
          f"preprocessed {tuple(data.shape)}")

    # Pad and tile as predict_sliding_window_return_logits does; keep the first tile.
    padded, _slicer_revert = pad_nd_image(data, predictor.patch_size, 'constant', {'value': 0}, True, None)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    first = slicers[0]
    patch = torch.clone(padded[first][None], memory_format=torch.contiguous_format).float()
    print(f"padded {tuple(padded.shape)}; {len(slicers)} tile(s); first tile "
          f"{[(s.start, s.stop) for s in first[1:]]} -> patch {tuple(patch.shape)}")

    t0 = time.perf_counter()
    text = predictor.embed_text_prompts(list(args.prompts))
    # embed_text_prompts runs under inference_mode; clone to get an ordinary float32 tensor.
    text = text.detach().clone().float().contiguous()
    print(f"embedded {len(args.prompts)} prompt(s) in {time.perf_counter() - t0:.1f} s: "
          f"text {tuple(text.shape)}")

    t0 = time.perf_counter()
    with torch.no_grad():
        out = network(patch.to(device), text.to(device))
    if isinstance(out, (list, tuple)):  # deep supervision: full resolution first
        out = out[0]
    logits = out.detach().float().cpu().contiguous()
    print(f"network forward in {time.perf_counter() - t0:.1f} s: logits {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        print("warning: the official logits contain non-finite values", file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "prompts": json.dumps(list(args.prompts)),
        "image": str(args.image),
        "model": str(args.model),
        "tile": json.dumps([[s.start, s.stop] for s in first[1:]]),
        "voxtell": importlib.metadata.version("voxtell"),
        "torch": torch.__version__,
    }
    save_file({"patch": patch.cpu().contiguous(), "text": text.cpu(), "logits": logits},
              str(args.out), metadata=metadata)
    print(f"wrote {args.out}")
    print(f"  patch  {tuple(patch.shape)} float32")
    print(f"  text   {tuple(text.shape)} float32")
    print(f"  logits {tuple(logits.shape)} float32")
    for i, prompt in enumerate(args.prompts):
        li = logits[0, i]
        frac = (li > 0).double().mean().item()
        print(f"  {prompt!r}: positive fraction {frac:.6f} ({int((li > 0).sum())} voxels), "
              f"max |logit| {li.abs().max().item():.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
