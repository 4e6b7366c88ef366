#!/usr/bin/env python3
"""Generate the fixtures of the full VoxTell model (encoder, prompt decoder, fusion decoder).

Run from the repository root with the pinned venv (see tools/README.md):

    tools/.venv/bin/python tools/gen_fusion_fixtures.py

Writes fixtures/fusion/ (deleted and rebuilt each run; byte-deterministic, CPU, one thread, no
network: HF_HUB_OFFLINE=1 and an empty in-memory embedding bank). For each configuration `<cfg>`
(`cfg_a`, `cfg_b`, see CONFIGS):

- `<cfg>/plans.json`: an nnU-Net plans file whose `configurations.3d_fullres` holds `patch_size`
  and `architecture` {`network_class_name`, `arch_kwargs`, `_kw_requires_import`} in the format of
  the released VoxTell plans (spec §1), plus the usual other top-level keys (dataset_name,
  plans_name, transpose_forward, image_reader_writer, ...; VoxTell reads none of them).
- `<cfg>/fold_0/checkpoint_final.pth`: an nnU-Net checkpoint written with a default `torch.save`:
  `{network_weights, optimizer_state, grad_scaler_state, logging, _best_ema, current_epoch,
  init_args, trainer_name, inference_allowed_mirroring_axes}`. `network_weights` is the
  `state_dict()` as is (float32, with the `decoder.encoder.*` and `*.all_modules.*` aliases
  sharing storage, the `pos_embed` buffer first). `optimizer_state` is the state_dict of a real
  `torch.optim.SGD(lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)` after one step
  on a copy of the network (train mode, BCE loss on random targets); the parameters with more
  than FREEZE_ABOVE = 512 elements were frozen for that step so that they have no momentum
  buffer (keeps the file small); `param_groups` still list every parameter. `logging` holds lists of numpy float64, `_best_ema` a numpy float64,
  `init_args` a dict with a `torch.device`, `inference_allowed_mirroring_axes` a tuple.
  It needs `torch.load(weights_only=False)`, like the official predictor.
- `<cfg>/expected.safetensors`: inputs and outputs of the network as loaded by the official
  `VoxTellPredictor` (plans parsing, `pydoc.locate`, `torch.load`, strict `load_state_dict`,
  `eval()`), run under `torch.no_grad()`:
  `image` (1, 1, P0, P1, P2), `text` (1, 3, text_dim), `skip.4` (encoder output used as memory,
  (1, C4, n0, n1, n2)), `query` (text projection = transformer `tgt`, (3, 1, query_dim)),
  `memory` (after `project_bottleneck_embed`, official `(h w d) b c` token order,
  (tokens, 1, query_dim)), `mask_embeddings` (transformer decoder output after the official
  `n b dim -> b n dim`, (1, 3, query_dim)), `stage_embeds.{s}` (`project_to_decoder_channels[s]`
  outputs, (1, 3, D_s)), and the full-resolution logits (1, 3, P0, P1, P2): `logits` without
  deep supervision (cfg_a), or, with deep supervision (cfg_b), the 5 returned outputs `ds.0 ...
  ds.4` in the order the model returns them, where `ds.0` IS the full-resolution logits (the same
  tensor; not stored twice, config.json `logits_name` says which name holds the logits).
  Every name has a `<name>_f64` twin from a deep copy of the network in float64 (`.double()`, so
  `pos_embed` is the float32 buffer upcast) run on the same inputs upcast (`image.double()`,
  `text.double()`), except the names in config.json `f32_only` (size budget), for cfg_a only:
  `image` (its f64 twin would be exactly `image.double()`) and `logits`.
- `<cfg>/config.json`: every size used, the stage shapes, the DECODER_CONFIGS table used, the
  expected tensors with shapes and dtypes, the state_dict key counts, and `notes`.

How the official classes are made small (see `official_patches` / `make_factory`):
- `VoxTellModel.DECODER_CONFIGS` (class attribute) is set before each construction to
  `{s: {"channels": features[s], "shape": (n1, n2, n0)}}` with (n0, n1, n2) the (D, H, W) size of
  encoder stage s: the model unpacks `shape` as (h, w, d) = tensor axes (1, 2, 0).
- `voxtell.inference.predictor.VoxTellModel` is replaced by a factory that overrides the sizes the
  predictor hard-codes (text_embedding_dim, num_heads, query_dim, project_to_decoder_hidden_dim,
  deep_supervision); decoder_layer=4 and num_maskformer_stages=5 are the predictor's own.
- cfg_b only: `voxtell.model.voxtell_model.TransformerDecoderLayer` is replaced by a partial with a
  small `dim_feedforward`, and since the text-projection hidden size is a local literal
  (`text_hidden_dim = 2048` in `VoxTellModel.__init__`), the factory swaps `project_text_embed`
  for the same `Linear -> GELU -> Linear` with a small hidden size right after construction
  (same module name and position, so the state_dict key order is unchanged). cfg_a keeps both
  official 2048 literals.
- Weights: the official initialisation (`VoxTellModel.initialize`: He-normal convs with zero bias,
  zeroed last norm of each residual block; PyTorch defaults for Linear/MultiheadAttention), then
  every InstanceNorm3d/LayerNorm weight drawn from U(0.6, 1.4) and bias from N(0, 0.1^2), and
  the weight of the last Linear of each `project_to_decoder_channels[s]` multiplied by a fixed
  gain (`embed_gain`, 4 / 10) so the logits are O(1-10) with 10-90 % of voxels positive per
  prompt (asserted, as are 5-95 % for every deep-supervision output). Conv/transposed-conv
  biases and MultiheadAttention in_proj/out_proj biases are drawn from N(0, 0.1^2) too, so that a
  loader that dropped them would fail.

Sizes: fixtures/fusion/ must stay under 6.5 MB (asserted); cfg_a's checkpoint alone is ~4.4 MB
because of the official 2048-wide FFN and text projection.
"""
import copy
import functools
import json
import math
import os
import sys
import zlib
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("VOXTELL_MODEL", None)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import voxtell.inference.predictor as vx_predictor  # noqa: E402
import voxtell.model.voxtell_model as vx_model  # noqa: E402
from voxtell.model.transformer import TransformerDecoderLayer  # noqa: E402
from voxtell.model.voxtell_model import VoxTellModel  # noqa: E402

from fixture_common import fresh_output, located, report_files, resenc_arch_kwargs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "fusion"
BASE_SEED = 20261219
F64 = torch.float64
N_PROMPTS = 3
BUDGET_BYTES = 6_500_000
FREEZE_ABOVE = 512  # parameters larger than this get no momentum buffer (file size)


# Sizes the official predictor hard-codes (VoxTellPredictor.__init__), replaced by the factory.
PREDICTOR_LITERALS = dict(decoder_layer=4, text_embedding_dim=2560, num_maskformer_stages=5,
                          num_heads=32, query_dim=2048, project_to_decoder_hidden_dim=2048,
                          deep_supervision=False)
OFFICIAL_DIM_FEEDFORWARD = 2048  # TransformerDecoderLayer default, not passed by VoxTellModel
OFFICIAL_TEXT_HIDDEN = 2048  # `text_hidden_dim = 2048` in VoxTellModel.__init__

CONFIGS = {
    "cfg_a": dict(
        patch_size=[32, 32, 32],
        features_per_stage=[4, 8, 8, 12, 16, 16],
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1]],
        n_blocks_per_stage=[1, 1, 1, 1, 1, 1],
        n_conv_per_stage_decoder=[1, 1, 1, 1, 1],
        text_embedding_dim=24, query_dim=32, num_heads=4, project_to_decoder_hidden_dim=16,
        dim_feedforward=None,  # None: official 2048
        text_hidden_dim=None,  # None: official 2048
        deep_supervision=False,
        embed_gain=4.0,
        f32_only=["image", "logits"],  # size budget: the f64 logits of cfg_a would be 786 KB
    ),
    "cfg_b": dict(
        patch_size=[16, 24, 32],
        features_per_stage=[4, 6, 8, 8, 12, 12],
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 1, 2], [1, 1, 1]],
        n_blocks_per_stage=[1, 2, 1, 1, 1, 1],
        n_conv_per_stage_decoder=[1, 1, 1, 1, 1],
        text_embedding_dim=20, query_dim=16, num_heads=2, project_to_decoder_hidden_dim=12,
        dim_feedforward=24,
        text_hidden_dim=16,
        deep_supervision=True,
        embed_gain=10.0,
        f32_only=[],
    ),
}


def gen_for(name: str) -> torch.Generator:
    """A generator seeded from the case name, so cases do not shift when others are added."""
    return torch.Generator().manual_seed(BASE_SEED + zlib.crc32(name.encode()))


def randn(g, shape, dtype=F64):
    return torch.randn(tuple(shape), generator=g, dtype=F64).to(dtype)


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1) + "\n")


def stage_shapes(cfg):
    size = list(cfg["patch_size"])
    shapes = []
    for s in cfg["strides"]:
        size = [a // b for a, b in zip(size, s)]
        assert all(a >= 2 for a in size), f"a stage has fewer than 2 voxels on an axis: {size}"
        shapes.append(list(size))
    return shapes  # (D, H, W) = tensor axes 2, 3, 4 of each skip


def decoder_configs(cfg):
    # the model unpacks shape as (h, w, d) and the tensor is named `b c d h w`:
    # h = axis 1 (n1), w = axis 2 (n2), d = axis 0 (n0) of the feature map
    return {s: {"channels": cfg["features_per_stage"][s], "shape": (n1, n2, n0)}
            for s, (n0, n1, n2) in enumerate(stage_shapes(cfg))}


def arch_kwargs_json(cfg):
    return resenc_arch_kwargs(cfg["features_per_stage"], cfg["strides"], cfg["n_blocks_per_stage"],
                              cfg["n_conv_per_stage_decoder"])


def plans_json(name, cfg):
    return {
        "dataset_name": "VoxTellDataset",
        "plans_name": "nnUNetResEncUNetLPlans_noResampling",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": list(cfg["patch_size"]),
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": f"nnUNetResEncUNetLPlans_noResampling_3d_fullres_{name}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(cfg["patch_size"]),
                "median_image_size_in_voxels": list(cfg["patch_size"]),
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                              "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                             "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1,
                                                       "order_z": 0, "force_separate_z": None},
                "architecture": {
                    "network_class_name":
                        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                    "arch_kwargs": arch_kwargs_json(cfg),
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "nnUNetPlannerResEncL_noResampling",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


class official_patches:
    """Set the class-level and module-level knobs the official code reads, and undo them."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __enter__(self):
        self.saved = (VoxTellModel.DECODER_CONFIGS, vx_model.TransformerDecoderLayer,
                      vx_predictor.VoxTellModel)
        VoxTellModel.DECODER_CONFIGS = decoder_configs(self.cfg)
        if self.cfg["dim_feedforward"] is not None:
            vx_model.TransformerDecoderLayer = functools.partial(
                TransformerDecoderLayer, dim_feedforward=self.cfg["dim_feedforward"])
        vx_predictor.VoxTellModel = make_factory(self.cfg)
        return self

    def __exit__(self, *exc):
        (VoxTellModel.DECODER_CONFIGS, vx_model.TransformerDecoderLayer,
         vx_predictor.VoxTellModel) = self.saved
        return False


def make_factory(cfg):
    def factory(**kwargs):
        assert kwargs["decoder_layer"] == 4 and kwargs["num_maskformer_stages"] == 5
        kwargs.update(text_embedding_dim=cfg["text_embedding_dim"], num_heads=cfg["num_heads"],
                      query_dim=cfg["query_dim"],
                      project_to_decoder_hidden_dim=cfg["project_to_decoder_hidden_dim"],
                      deep_supervision=cfg["deep_supervision"])
        net = VoxTellModel(**kwargs)
        if cfg["text_hidden_dim"] is not None:
            old = net.project_text_embed
            assert old[0].out_features == OFFICIAL_TEXT_HIDDEN
            # same structure and name as the official module; _modules keeps the key position
            net.project_text_embed = torch.nn.Sequential(
                torch.nn.Linear(cfg["text_embedding_dim"], cfg["text_hidden_dim"]),
                torch.nn.GELU(),
                torch.nn.Linear(cfg["text_hidden_dim"], cfg["query_dim"]),
            )
        return net
    return factory


def build_network(cfg, seed):
    torch.manual_seed(seed)  # the official init draws from the global generator
    kwargs = located(arch_kwargs_json(cfg))
    net = vx_predictor.VoxTellModel(input_channels=1, **kwargs, **PREDICTOR_LITERALS)
    net.apply(VoxTellModel.initialize)
    return net


def randomize_norms(net, g, embed_gain):
    n = 0
    with torch.no_grad():
        # logit scale: the default-initialised last Linear of each project_to_decoder_channels
        # gives logits of std ~0.1-0.4; a fixed gain brings them to O(1)
        for proj in net.project_to_decoder_channels:
            proj[2].weight.mul_(embed_gain)
        for m in net.modules():  # deduplicated: aliases are visited once
            if isinstance(m, (torch.nn.InstanceNorm3d, torch.nn.LayerNorm)):
                m.weight.copy_(0.6 + 0.8 * torch.rand(m.weight.shape, generator=g, dtype=F64))
                m.bias.copy_(0.1 * randn(g, m.bias.shape))
                n += 1
            elif isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and m.bias is not None:
                # Zero biases would let a loader that drops them pass the tests.
                m.bias.copy_(0.1 * randn(g, m.bias.shape))
            elif isinstance(m, torch.nn.MultiheadAttention):
                m.in_proj_bias.copy_(0.1 * randn(g, m.in_proj_bias.shape))
                m.out_proj.bias.copy_(0.1 * randn(g, m.out_proj.bias.shape))
    return n


def optimizer_state(net, image, text, g):
    """One real nnU-Net-style SGD step on a copy; big parameters frozen (no momentum buffer)."""
    net = copy.deepcopy(net).train()
    params = list(net.parameters())
    for p in params:
        p.requires_grad_(p.numel() <= FREEZE_ABOVE)
    opt = torch.optim.SGD(params, 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    opt.zero_grad()
    out = net(image, text)
    outs = out if isinstance(out, list) else [out]
    loss = 0.0
    for o in outs:
        target = (torch.rand(o.shape, generator=g) > 0.5).float()
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(o, target)
    loss.backward()
    opt.step()
    sd = opt.state_dict()
    n_buf = len(sd["state"])
    assert 0 < n_buf < len(params)
    return sd, float(loss.detach()), n_buf, len(params)


def checkpoint_dict(net, plans, opt_sd, g):
    epochs = 3
    r = torch.rand(8, epochs, generator=g, dtype=F64).numpy()
    logging = {
        "mean_fg_dice": [np.float64(x) for x in r[0]],
        "ema_fg_dice": [np.float64(x) for x in r[1]],
        "dice_per_class_or_region": [[np.float64(x)] for x in r[2]],
        "train_losses": [np.float64(-x) for x in r[3]],
        "val_losses": [np.float64(-x) for x in r[4]],
        "lrs": [np.float64(1e-2 * (1 - i / 1000) ** 0.9) for i in range(epochs)],
        "epoch_start_timestamps": [np.float64(1.76e9 + 100.0 * i) for i in range(epochs)],
        "epoch_end_timestamps": [np.float64(1.76e9 + 100.0 * i + 90.0) for i in range(epochs)],
    }
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": opt_sd,
        "grad_scaler_state": None,
        "logging": logging,
        "_best_ema": np.float64(max(r[1])),
        "current_epoch": epochs,
        "init_args": {"plans": copy.deepcopy(plans), "configuration": "3d_fullres", "fold": 0,
                      "dataset_json": {"channel_names": {"0": "CT"},
                                       "labels": {"background": 0, "target": 1},
                                       "numTraining": 1, "file_ending": ".nii.gz"},
                      "device": torch.device("cuda", 0)},
        "trainer_name": "VoxTellTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def make_inputs(cfg, g):
    image = randn(g, [1, 1, *cfg["patch_size"]], torch.float32)
    image[..., 2:8, 3:9, 4:12] = 1.75  # a constant block
    text = randn(g, [1, N_PROMPTS, cfg["text_embedding_dim"]], torch.float32)
    return image, text


def run_official(net, image, text):
    """Forward pass of the official network, with hooks on the intermediate tensors."""
    cap = {}

    def pre_tdec(_m, _args, kwargs):
        cap["query"] = kwargs["tgt"].detach().clone()
        cap["memory"] = kwargs["memory"].detach().clone()
        cap["pos"] = kwargs["pos"].detach().clone()

    def post_tdec(_m, _args, out):
        cap["tdec_out"] = out[0].detach().clone()

    def post_enc(_m, _args, out):
        cap["skip.4"] = out[4].detach().clone()
        cap["skips_shapes"] = [list(s.shape) for s in out]

    def pre_proj(_m, args):
        cap["mask_embeddings"] = args[0].detach().clone()

    stage_out = {}
    hooks = [net.transformer_decoder.register_forward_pre_hook(pre_tdec, with_kwargs=True),
             net.transformer_decoder.register_forward_hook(post_tdec),
             net.encoder.register_forward_hook(post_enc),
             net.project_to_decoder_channels[0].register_forward_pre_hook(pre_proj)]
    for s, m in enumerate(net.project_to_decoder_channels):
        hooks.append(m.register_forward_hook(
            lambda _m, _a, out, s=s: stage_out.__setitem__(s, out.detach().clone())))
    try:
        with torch.no_grad():
            out = net(image.clone(), text.clone())
    finally:
        for h in hooks:
            h.remove()
    # the transformer output (N, B, C) and the tensor fed to the projections (B, N, C)
    assert torch.equal(cap["tdec_out"].permute(1, 0, 2), cap["mask_embeddings"])
    assert cap["pos"].data_ptr() != 0 and torch.equal(cap["pos"], net.pos_embed)
    res = {"skip.4": cap["skip.4"], "query": cap["query"], "memory": cap["memory"],
           "mask_embeddings": cap["mask_embeddings"]}
    for s in sorted(stage_out):
        res[f"stage_embeds.{s}"] = stage_out[s]
    if isinstance(out, list):  # deep supervision: out[0] is the full-resolution logits
        for i, o in enumerate(out):
            res[f"ds.{i}"] = o
    else:
        res["logits"] = out
    return res, cap["skips_shapes"]


def check_token_order(net, res, cfg):
    """memory[t] = project_bottleneck_embed(skip4[:, :, i0, i1, i2]), t = (i1*n2 + i2)*n0 + i0."""
    f = res["skip.4"]
    _, _, n0, n1, n2 = f.shape
    mem = res["memory"]
    assert mem.shape == (n0 * n1 * n2, 1, cfg["query_dim"])
    with torch.no_grad():
        for i0 in range(n0):
            for i1 in range(n1):
                for i2 in range(n2):
                    t = (i1 * n2 + i2) * n0 + i0
                    ref = net.project_bottleneck_embed(f[0, :, i0, i1, i2])
                    assert torch.allclose(mem[t, 0], ref, atol=1e-6, rtol=1e-5), (t, i0, i1, i2)


def check_pos_embed(net, cfg, shape4):
    """pos_embed[t] for t = (i1*n2 + i2)*n0 + i0 is [emb(i1) | emb(i2) | emb(i0)][:query_dim]."""
    n0, n1, n2 = shape4
    c = cfg["query_dim"]
    ca = int(math.ceil(c / 6) * 2)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, ca, 2).float() / ca))

    def emb(p):
        x = torch.tensor(float(p)) * inv_freq
        return torch.stack((x.sin(), x.cos()), -1).flatten()

    pe = net.pos_embed
    assert pe.shape == (n0 * n1 * n2, 1, c), pe.shape
    exact = True
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                t = (i1 * n2 + i2) * n0 + i0
                ref = torch.cat([emb(i1), emb(i2), emb(i0)])[:c]
                assert torch.allclose(pe[t, 0], ref, atol=1e-6), t
                exact &= bool(torch.equal(pe[t, 0], ref))
    return ca, exact


def check_logits(name, logits, lo=0.1, hi=0.9, scale=True):
    stats = []
    for n in range(logits.shape[1]):
        x = logits[0, n]
        frac = float((x > 0).double().mean())
        std = float(x.double().std())
        amax = float(x.abs().max())
        stats.append({"positive_fraction": round(frac, 4), "std": round(std, 4),
                      "abs_max": round(amax, 4)})
        assert lo <= frac <= hi, f"{name} prompt {n}: {frac:.3f} of the voxels positive"
        assert not scale or 0.5 <= std <= 20 and 1.0 <= amax <= 100, f"{name} prompt {n}: std {std} max {amax}"
    return stats


def gen_config(name, cfg):
    g = gen_for(name)
    seed = BASE_SEED + zlib.crc32(name.encode())
    cdir = OUT / name
    (cdir / "fold_0").mkdir(parents=True)
    plans = plans_json(name, cfg)
    write_json(cdir / "plans.json", plans)
    shapes = stage_shapes(cfg)
    dcfg = decoder_configs(cfg)

    with official_patches(cfg):
        net = build_network(cfg, seed)
        n_norms = randomize_norms(net, g, cfg["embed_gain"])
        net.eval()
        image, text = make_inputs(cfg, g)
        opt_sd, loss, n_buf, n_params = optimizer_state(net, image, text, g)
        ckpt_path = cdir / "fold_0" / "checkpoint_final.pth"
        torch.save(checkpoint_dict(net, plans, opt_sd, g), ckpt_path)
        ref_sd = net.state_dict()
        del net

        # the official loading path
        predictor = vx_predictor.VoxTellPredictor(model_dir=str(cdir),
                                                  device=torch.device("cpu"),
                                                  embedding_bank={})
        assert predictor.patch_size == cfg["patch_size"]
        net = predictor.network
        assert not net.training
        loaded_sd = net.state_dict()
        assert list(loaded_sd) == list(ref_sd)
        assert all(torch.equal(loaded_sd[k], ref_sd[k]) for k in ref_sd)
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        assert list(ck) == ["network_weights", "optimizer_state", "grad_scaler_state",
                            "logging", "_best_ema", "current_epoch", "init_args",
                            "trainer_name", "inference_allowed_mirroring_axes"]
        assert isinstance(ck["init_args"]["device"], torch.device)
        assert isinstance(ck["_best_ema"], np.float64)
        try:  # the safe loader must refuse it (numpy scalars), as with real nnU-Net files
            torch.load(ckpt_path, map_location="cpu", weights_only=True)
            weights_only_ok = True
        except Exception:
            weights_only_ok = False
        del ck

        # memory grid and positional encoding
        n0, n1, n2 = shapes[4]
        assert net.pos_embed.shape == (n0 * n1 * n2, 1, cfg["query_dim"])
        pe_axis_channels, pe_exact = check_pos_embed(net, cfg, shapes[4])

        res, skips_shapes = run_official(net, image, text)
        assert skips_shapes == [[1, f, *s] for f, s in zip(cfg["features_per_stage"], shapes)]
        check_token_order(net, res, cfg)
        logits_key = "ds.0" if cfg["deep_supervision"] else "logits"
        stats = check_logits(name, res[logits_key])
        ds_stats = {k: check_logits(name, v, lo=0.05, hi=0.95, scale=False)
                    for k, v in res.items() if k.startswith("ds.")}

        net64 = copy.deepcopy(net).double()
        res64, _ = run_official(net64, image.double(), text.double())
        check_token_order(net64, res64, cfg)
        assert net64.pos_embed.dtype == F64

    diffs = {k: float((res[k].double() - res64[k]).abs().max()) for k in res}

    tensors = {"image": image, "text": text}
    tensors.update(res)
    if "image" not in cfg["f32_only"]:
        tensors["image_f64"] = image.double()
    tensors["text_f64"] = text.double()
    for k, v in res64.items():
        if k not in cfg["f32_only"]:
            tensors[f"{k}_f64"] = v
    clean = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_file(clean, str(cdir / "expected.safetensors"))

    sd_keys = len(ref_sd)
    unique = len({v.data_ptr() for v in ref_sd.values()})
    stage_dims = [c * cfg["num_heads"] if s else c
                  for s, c in enumerate(cfg["features_per_stage"][:5])]
    layer0 = predictor.network.transformer_decoder.layers[0]
    text_hidden = predictor.network.project_text_embed[0].out_features
    config = {
        "generator": "tools/gen_fusion_fixtures.py",
        "model_dir": f"fixtures/fusion/{name}",
        "patch_size": cfg["patch_size"],
        "arch_kwargs": arch_kwargs_json(cfg),
        "stage_shapes": shapes,
        "decoder_configs": {str(k): {"channels": v["channels"], "shape": list(v["shape"])}
                            for k, v in dcfg.items()},
        "text_embedding_dim": cfg["text_embedding_dim"],
        "text_hidden_dim": text_hidden,
        "query_dim": cfg["query_dim"],
        "num_heads": cfg["num_heads"],
        "project_to_decoder_hidden_dim": cfg["project_to_decoder_hidden_dim"],
        "stage_embed_dims": stage_dims,
        "dim_feedforward": layer0.linear1.out_features,
        "transformer_layers": len(predictor.network.transformer_decoder.layers),
        "attention_heads": layer0.multihead_attn.num_heads,
        "decoder_layer": 4,
        "num_maskformer_stages": 5,
        "deep_supervision": cfg["deep_supervision"],
        "n_prompts": N_PROMPTS,
        "memory_grid": shapes[4],
        "memory_tokens": n0 * n1 * n2,
        "pos_embed_shape": list(predictor.network.pos_embed.shape),
        "pos_embed_axis_channels": pe_axis_channels,
        "pos_embed_recomputed_exactly": pe_exact,
        "state_dict_keys": sd_keys,
        "state_dict_unique_tensors": unique,
        "optimizer_momentum_buffers": n_buf,
        "optimizer_frozen_above_numel": FREEZE_ABOVE,
        "optimizer_params": n_params,
        "sgd_step_loss": round(loss, 6),
        "checkpoint_loads_with_weights_only_true": weights_only_ok,
        "norm_modules_randomised": n_norms,
        "project_to_decoder_channels_last_weight_gain": cfg["embed_gain"],
        "logits_name": logits_key,
        "logit_stats": stats,
        "deep_supervision_stats": ds_stats,
        "f32_only": cfg["f32_only"],
        "max_abs_diff_f32_vs_f64": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        "expected": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                     for k, v in clean.items()},
        "notes": notes_for(name, cfg, shapes, text_hidden),
    }
    write_json(cdir / "config.json", config)
    return config


def notes_for(name, cfg, shapes, text_hidden):
    n0, n1, n2 = shapes[4]
    notes = [
        "Memory = skips[4] (stage 4), not the deepest skip; rearranged 'b c d h w -> b h w d c', "
        "projected, then 'b h w d c -> (h w d) b c': token t of feature-map voxel (i0, i1, i2) is "
        f"t = (i1*{n2} + i2)*{n0} + i0 (axis 1 slowest, axis 0 fastest); checked voxel by voxel.",
        "DECODER_CONFIGS[s]['shape'] is unpacked as (h, w, d) and must be (n1, n2, n0) of the "
        "feature map (D, H, W) = (n0, n1, n2); pos_embed = PositionalEncoding3D(query_dim) of "
        "zeros(1, h, w, d, C) flattened '(h w d) b c', so pos_embed[t] = [emb(i1) | emb(i2) | "
        "emb(i0)][:query_dim] with per-axis width ceil(C/6)*2 (sin/cos interleaved); checked. "
        "It is a persistent buffer stored in the checkpoint; all six DECODER_CONFIGS entries are "
        "read (channels of 0..4 size project_to_decoder_channels, entry 4 sizes the memory). "
        "A shape written in feature-map order (n0, n1, n2) gives the same token count, so the "
        "official forward runs without error but pairs tokens with the wrong positions; only "
        "the voxel-by-voxel pos_embed check catches it.",
        "The prompt decoder uses forward_pre (normalize_before=True): no self-attention, so "
        "self_attn.* and norm1.* are stored but unused; seg_layers.4 is never called and "
        "seg_layers.0-3 only feed deep supervision.",
        "Hard-coded literals: TransformerDecoderLayer dim_feedforward default 2048 (VoxTellModel "
        "does not pass it), text_hidden_dim = 2048 (local variable in VoxTellModel.__init__), "
        "TRANSFORMER_NUM_HEADS = 8, TRANSFORMER_NUM_LAYERS = 6 (class attributes).",
        "Biases: Conv3d/ConvTranspose3d biases, MultiheadAttention in_proj_bias/out_proj.bias and "
        "norm biases ~N(0, 0.1^2) (the official init leaves the first two at 0); Linear biases are "
        "PyTorch-default uniform.",
        "f64 outputs come from copy.deepcopy(net).double() (pos_embed is the float32 buffer "
        "upcast) on the float32 image/text upcast (so image_f64, where stored, equals image).",
        "mask_embeddings is the transformer output (N, B, C) after the official "
        "'n b dim -> b n dim', i.e. (1, N, query_dim); query is the projected text (N, 1, C).",
    ]
    if cfg["dim_feedforward"] is None:
        notes.append("Official FFN width 2048 and text-projection hidden size 2048 kept.")
    else:
        notes.append(
            f"voxtell.model.voxtell_model.TransformerDecoderLayer patched to dim_feedforward="
            f"{cfg['dim_feedforward']}; project_text_embed replaced after construction by "
            f"Linear({cfg['text_embedding_dim']}, {text_hidden}) -> GELU -> Linear({text_hidden}, "
            f"{cfg['query_dim']}) because its hidden size is a local literal (same key names).")
    if cfg["deep_supervision"]:
        notes.append(
            "Deep supervision: the model returns [full-res logits, ds3, ds2, ds1, ds0] (decoder "
            "stage 4 (einsum, no bias), then seg_layers[3], [2], [1], [0] outputs, high to low "
            "resolution); stored as ds.0..ds.4 in that order. ds.0 is the full-resolution logits "
            "(no separate `logits` entry).")
    if cfg["f32_only"]:
        notes.append(f"Stored in float32 only (size budget): {cfg['f32_only']}; image_f64 would "
                     "be exactly image.double(), the input of the f64 run.")
    return notes


def main():
    fresh_output(OUT)

    for name, cfg in CONFIGS.items():
        c = gen_config(name, cfg)
        print(f"{name}: {c['state_dict_keys']} state_dict keys "
              f"({c['state_dict_unique_tensors']} unique), stages {c['stage_shapes']}, "
              f"logits {c['logit_stats']}", file=sys.stderr)
        for k, v in c["expected"].items():
            print(f"  {k}: {v['shape']} {v['dtype']}", file=sys.stderr)

    report_files(OUT, BUDGET_BYTES)


if __name__ == "__main__":
    main()
