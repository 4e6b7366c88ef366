#!/usr/bin/env python3
"""Generate the training fixtures: deep-supervision loss, gradients, gradient clipping and three
SGD steps of the official VoxTell network, with the official nnU-Net loss classes.

Run from the repository root with the pinned venv (see tools/README.md):

    tools/.venv/bin/python tools/gen_train_fixtures.py

It needs fixtures/fusion/cfg_b (written by gen_fusion_fixtures.py): the network is the official
`VoxTellModel` loaded from `fixtures/fusion/cfg_b/fold_0/checkpoint_final.pth` through the official
`VoxTellPredictor` inside `gen_fusion_fixtures.official_patches(CONFIGS["cfg_b"])` (patch
[16, 24, 32], text dim 20, deep supervision on: 5 outputs).

Writes fixtures/train/ only (deleted and rebuilt each run). CPU, one thread, no network,
byte-deterministic, at most 2.5 MB (asserted).

- `plans.json`: a byte copy of fixtures/fusion/cfg_b/plans.json (the network definition).
- `init.safetensors`: w0 in float64: every canonical state_dict entry of the loaded network
  (`pos_embed` included; no `decoder.encoder.*` and no `*.all_modules.*` aliases), i.e. the
  float32 `network_weights` of the cfg_b checkpoint upcast (asserted equal).
- `batch.safetensors`: `image` f64 (2, 1, 16, 24, 32): a smooth random field plus the smoothed
  target blobs, z-scored per image by nnU-Net's `ZScoreNormalization`; `text` f64 (2, 3, 20)
  ~N(0, 1). Both hold values exactly representable in float32 (the float32 run casts them).
  `target` u8 (2, 3, 16, 24, 32): per sample two ellipsoid masks and one EMPTY channel (the
  negative prompt; channel 2 of sample 0, channel 0 of sample 1). `target.ds{i}` u8, i = 0..4:
  the targets of the 5 deep-supervision outputs in the model's output order (full resolution
  first), made by batchgeneratorsv2's `DownsampleSegForDSTransform` (what nnU-Net 2.8.1's
  training transforms append) with the scales of nnU-Net's `_get_deep_supervision_scales`, per
  sample then stacked like `nnUNetDataLoader`. `target.ds0` is `target` (scale 1 is passed
  through by the transform).
- `expected.safetensors`: for the float64 run (no suffix) and the float32 run (`_f32`; the f32
  checkpoint weights and the cast inputs, run on their own, not derived from f64):
  `loss` (1,) at w0; `loss_terms` (5,) the unweighted `DC_and_BCE_loss` of each output and its
  parts `bce_terms` (5,) and `dice_terms` (5,); `grad.{key}` the gradient at w0 (before
  clipping) of every parameter that receives one; `w3.{key}` the parameters after 3 SGD steps
  (only parameters that receive a gradient; the others are never touched by SGD and equal w0).
- `optim.safetensors`: a network-free test of torch.optim.SGD and clip_grad_norm_ (see
  `optim_case`).
- `config.json`: sizes, loss settings, optimiser settings, per-step loss / total gradient norm /
  clip flag for both dtypes, parameters without gradient, conv biases directly before an
  InstanceNorm, the target downsampling function, versions and `notes`.

Training step, as nnUNetTrainer.train_step (no AMP): `zero_grad(set_to_none=True)`, forward,
loss, `backward()`, `clip_grad_norm_(params, CLIP_MAX_NORM)`, `optimizer.step()`, with
`SGD(net.parameters(), LR, momentum=0.99, nesterov=True, weight_decay=3e-5)` and the same batch at
every step. The network is in train mode with the prompt decoder's dropout modules in eval mode
(see notes: the DETR-style TransformerDecoderLayer has dropout 0.1, so a plain train() forward
is random).

The float64 run uses the official loss classes with their float32 literals redirected to
float64 (`float64_loss`): MemoryEfficientSoftDiceLoss sums with `dtype=torch.float32` and
DC_and_BCE_loss casts the target with `.float()` (then BCEWithLogits returns float32), so the
unmodified official loss on a float64 network is float32 arithmetic; config.json records that
value too (`loss_f64_official_unmodified`). The float32 run uses the classes unmodified.
"""
import ast
import contextlib
import copy
import hashlib
import json
import math
import os
import shutil
import sys
import types
import zlib
from importlib.metadata import version
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("VOXTELL_MODEL", None)
os.environ.pop("nnUNet_compile", None)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import gen_fusion_fixtures as fusion  # noqa: E402
from fixture_common import fresh_output  # noqa: E402
import voxtell.inference.predictor as vx_predictor  # noqa: E402
import nnunetv2.training.loss.dice as nn_dice  # noqa: E402
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (  # noqa: E402
    DownsampleSegForDSTransform)
from dynamic_network_architectures.building_blocks.simple_conv_blocks import (  # noqa: E402
    ConvDropoutNormReLU)
from nnunetv2.preprocessing.normalization.default_normalization_schemes import (  # noqa: E402
    ZScoreNormalization)
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

OUT = ROOT / "fixtures" / "train"
SRC = ROOT / "fixtures" / "fusion" / "cfg_b"
CFG = fusion.CONFIGS["cfg_b"]
BASE_SEED = 20270311
F64 = torch.float64
F32 = torch.float32
B, N = 2, 3
STEPS = 3
LR = 1e-2  # nnUNetTrainer.initial_lr
MOMENTUM = 0.99
WEIGHT_DECAY = 3e-5
NESTEROV = True
NNUNET_CLIP = 12.0  # nnUNetTrainer.train_step
# The total gradient norm of this small network is ~1-8 (never near 12, see config notes), so a
# smaller max_norm is used: it engages at step 1 only (asserted, with margin, in both dtypes).
CLIP_MAX_NORM = 3.0
DS_WEIGHTS_RAW = [1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16]  # all five outputs (paper supplement)
LOSS_DICE_KWARGS = {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False}
EMPTY_CHANNEL = [2, 0]  # the negative prompt of each sample
BUDGET_BYTES = 2_500_000


def gen_for(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(BASE_SEED + zlib.crc32(name.encode()))


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1) + "\n")


def sha256(p: Path):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def package_versions():
    """The package list of tools/fixture_versions.py, read from its source (importing it rewrites
    fixtures/VERSIONS.txt)."""
    tree = ast.parse((ROOT / "tools" / "fixture_versions.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PACKAGES"
                                                for t in node.targets):
            packages = ast.literal_eval(node.value)
            break
    else:
        raise RuntimeError("PACKAGES not found in tools/fixture_versions.py")
    res = {"python": sys.version.split()[0]}
    res.update({p: version(p) for p in packages})
    return res


# --------------------------------------------------------------------------------------------
# network


def load_network():
    """The cfg_b network as the official predictor loads it (float32, eval mode)."""
    with fusion.official_patches(CFG):
        predictor = vx_predictor.VoxTellPredictor(model_dir=str(SRC), device=torch.device("cpu"),
                                                  embedding_bank={})
    net = predictor.network
    assert net.deep_supervision and not net.training
    return net


def canonical_keys(sd):
    return [k for k in sd if not k.startswith("decoder.encoder.") and ".all_modules." not in k]


def set_train_mode(net):
    """train() everywhere except the dropout-bearing modules of the prompt decoder."""
    net.train()
    n = 0
    for m in net.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.MultiheadAttention)):
            m.eval()
            n += 1
    return n


def check_modes(net, image, text):
    """Verify what differs between train() and eval(): only the transformer's dropouts."""
    info = {}
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert norms and all(isinstance(m, torch.nn.InstanceNorm3d) and not m.track_running_stats
                         and m.running_mean is None for m in norms)
    info["instance_norms"] = len(norms)
    info["batch_norms"] = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                              for m in net.modules())
    drop = {}
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Dropout):
            drop[name] = m.p
        elif isinstance(m, torch.nn.MultiheadAttention):
            drop[name + " (attention weights)"] = m.dropout
    info["dropout_modules"] = len(drop)
    info["dropout_p"] = sorted(set(drop.values()))
    info["dropout_module_prefixes"] = sorted({k.split(".layers.")[0] for k in drop})
    net = copy.deepcopy(net)
    with torch.no_grad():
        net.eval()
        ref = net(image, text)
        set_train_mode(net)
        ours = net(image, text)
        assert all(torch.equal(a, b) for a, b in zip(ref, ours)), "train mode w/o dropout != eval"
        net.train()
        torch.manual_seed(1)
        full_a = net(image, text)
        torch.manual_seed(2)
        full_b = net(image, text)
    info["train_without_dropout_equals_eval_bitwise"] = True
    info["full_train_differs_from_eval"] = not all(torch.equal(a, b) for a, b in zip(ref, full_a))
    info["full_train_differs_between_seeds"] = not all(torch.equal(a, b)
                                                       for a, b in zip(full_a, full_b))
    assert info["full_train_differs_from_eval"] and info["full_train_differs_between_seeds"]
    return info


def biases_before_instance_norm(net):
    """Conv biases feeding an InstanceNorm directly (ConvDropoutNormReLU with a norm and no
    dropout): the normalisation removes them, so their true gradient is zero."""
    names = {id(p): n for n, p in net.named_parameters()}
    out = []
    for m in net.modules():
        if isinstance(m, ConvDropoutNormReLU) and m.conv.bias is not None:
            ops = list(m.all_modules)
            assert ops[0] is m.conv
            if isinstance(ops[1], torch.nn.InstanceNorm3d):
                out.append(names[id(m.conv.bias)])
    return sorted(set(out), key=list(names.values()).index)


# --------------------------------------------------------------------------------------------
# batch


def smooth(x, sigma):
    """Separable Gaussian blur with circular padding over the 3 spatial axes of (C, D, H, W)."""
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=F64) / sigma) ** 2)
    k = k / k.sum()
    x = x[None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        xp = torch.nn.functional.pad(x, pad, mode="circular")
        c = x.shape[1]
        x = torch.nn.functional.conv3d(xp, k.view(shape).expand(c, 1, *shape[2:]), groups=c)
    return x[0]


def ellipsoid(g, size):
    grids = torch.meshgrid(*[torch.arange(s, dtype=F64) for s in size], indexing="ij")
    centre = [s * (0.3 + 0.4 * float(torch.rand((), generator=g, dtype=F64))) for s in size]
    radii = [s * (0.22 + 0.16 * float(torch.rand((), generator=g, dtype=F64))) for s in size]
    q = sum(((x - c) / r) ** 2 for x, c, r in zip(grids, centre, radii))
    return q <= 1.0


def make_batch():
    g = gen_for("batch")
    size = CFG["patch_size"]
    target = torch.zeros((B, N, *size), dtype=torch.bool)
    image = torch.zeros((B, 1, *size), dtype=F64)
    for b in range(B):
        for n in range(N):
            if n != EMPTY_CHANNEL[b]:
                target[b, n] = ellipsoid(g, size)
        noise = smooth(torch.randn((1, *size), generator=g, dtype=F64), 2.0)
        field = noise / noise.std() + smooth(target[b].to(F64), 1.0).mul(
            torch.tensor([1.5, -1.0, 0.75], dtype=F64).view(N, 1, 1, 1)).sum(0, keepdim=True)
        # nnU-Net's ZScoreNormalization (no mask) per image, in float64
        norm = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={},
                                   target_dtype=np.float64)
        image[b] = torch.from_numpy(norm.run(field.numpy().copy()))
    image = image.to(F32).to(F64)  # exactly representable in float32
    text = torch.randn((B, N, CFG["text_embedding_dim"]), generator=g, dtype=F64).to(F32).to(F64)
    frac = target.to(F64).mean((2, 3, 4))
    for b in range(B):
        for n in range(N):
            f = float(frac[b, n])
            assert (f == 0.0) if n == EMPTY_CHANNEL[b] else (0.05 <= f <= 0.40), (b, n, f)
    return image, text, target, frac


def trainer_standin(plans):
    """The attributes nnUNetTrainer._get_deep_supervision_scales / _build_loss read, for a
    region-based (sigmoid) VoxTell-style training on one CPU process."""
    t = types.SimpleNamespace()
    t.enable_deep_supervision = True
    t.configuration_manager = PlansManager(plans).get_configuration("3d_fullres")
    t.label_manager = types.SimpleNamespace(has_regions=True, ignore_label=None)
    t.is_ddp = False
    t.device = torch.device("cpu")
    t.print_to_log_file = print
    t._do_i_compile = types.MethodType(nnUNetTrainer._do_i_compile, t)
    t._get_deep_supervision_scales = types.MethodType(
        nnUNetTrainer._get_deep_supervision_scales, t)
    return t


def downsample_targets(target, ds_scales):
    """DownsampleSegForDSTransform on each sample (C, X, Y, Z), stacked like nnUNetDataLoader."""
    tr = DownsampleSegForDSTransform(ds_scales=ds_scales)
    per_sample = [tr(segmentation=target[b].clone())["segmentation"] for b in range(B)]
    return [torch.stack([s[i] for s in per_sample]) for i in range(len(ds_scales))]


# --------------------------------------------------------------------------------------------
# loss


def build_losses(trainer):
    """nnU-Net's own region loss (DC_and_BCE_loss + MemoryEfficientSoftDiceLoss, built by
    nnUNetTrainer._build_loss) and the wrapper with all five DS weights."""
    default = nnUNetTrainer._build_loss(trainer)
    assert isinstance(default, DeepSupervisionWrapper)
    inner = default.loss
    dc = inner.dc
    assert type(inner).__name__ == "DC_and_BCE_loss" and not inner.use_ignore_label
    assert type(dc) is nn_dice.MemoryEfficientSoftDiceLoss and dc.apply_nonlin is torch.sigmoid
    assert (dc.batch_dice, dc.do_bg, dc.smooth, dc.ddp) == tuple(
        LOSS_DICE_KWARGS[k] for k in ("batch_dice", "do_bg", "smooth", "ddp"))
    assert (inner.weight_ce, inner.weight_dice) == (1, 1)
    assert isinstance(inner.ce, torch.nn.BCEWithLogitsLoss) and inner.ce.reduction == "mean"
    weights = np.array(DS_WEIGHTS_RAW)  # normalised as _build_loss does
    weights = weights / weights.sum()
    ours = DeepSupervisionWrapper(inner, weights)
    return default, ours


class _TorchF64(types.ModuleType):
    """`torch` as seen by nnunetv2.training.loss.dice, with float32 meaning float64."""

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def float64_loss():
    """Run the official loss classes in float64: dice.py's `torch.float32` (sum dtype, one-hot
    dtype) -> float64 and `Tensor.float()` (DC_and_BCE_loss target cast) -> `.double()`."""
    proxy = _TorchF64("torch")
    proxy.float32 = torch.float64
    saved_float = torch.Tensor.__dict__.get("float")
    nn_dice.torch = proxy
    torch.Tensor.float = lambda self, *a, **k: self.to(torch.float64)
    try:
        yield
    finally:
        nn_dice.torch = torch
        if saved_float is None:
            del torch.Tensor.float
        else:
            torch.Tensor.float = saved_float
    assert torch.Tensor.float is torch._C.TensorBase.float


def loss_context(dtype):
    return float64_loss() if dtype == F64 else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# training


def train_run(net32, image, text, ds_targets, loss_fn, dtype):
    net = copy.deepcopy(net32)
    if dtype == F64:
        net = net.double()
    assert all(t.dtype == dtype for t in net.state_dict().values())
    set_train_mode(net)
    x, t = image.to(dtype), text.to(dtype)
    named = list(net.named_parameters())
    params = [p for _, p in named]
    opt = torch.optim.SGD(params, LR, momentum=MOMENTUM, nesterov=NESTEROV,
                          weight_decay=WEIGHT_DECAY)
    inner = loss_fn.loss
    res = {"steps": []}
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        out = net(x, t)  # outside the float64 redirect: the forward runs unmodified
        assert all(o.dtype == dtype for o in out)
        with loss_context(dtype):
            loss = loss_fn(out, ds_targets)
            assert loss.dtype == dtype, loss.dtype
            if step == 0:
                assert [tuple(o.shape) for o in out] == [tuple(d.shape) for d in ds_targets]
                with torch.no_grad():
                    res["loss_terms"] = torch.stack([inner(o, d) for o, d in zip(out, ds_targets)])
                    res["bce_terms"] = torch.stack([inner.ce(o, d.float())
                                                    for o, d in zip(out, ds_targets)])
                    res["dice_terms"] = torch.stack([inner.dc(o, d)
                                                     for o, d in zip(out, ds_targets)])
                res["out_shapes"] = [list(o.shape) for o in out]
                res["positive_fraction"] = [[round(float((o[:, n] > 0).double().mean()), 4)
                                             for n in range(N)] for o in out]
        loss.backward()
        if step == 0:
            res["loss"] = loss.detach().reshape(1).clone()
            res["grad"] = {k: p.grad.detach().clone() for k, p in named if p.grad is not None}
            res["no_grad"] = [k for k, p in named if p.grad is None]
        total = torch.nn.utils.clip_grad_norm_(params, CLIP_MAX_NORM)
        coef = CLIP_MAX_NORM / (float(total) + 1e-6)
        res["steps"].append({"step": step + 1, "loss": float(loss.detach()),
                             "grad_norm": float(total), "clip_coef": min(coef, 1.0),
                             "clipped": coef < 1.0})
        opt.step()
    with torch.no_grad():
        out = net(x, t)
        with loss_context(dtype):
            res["loss_at_w3"] = float(loss_fn(out, ds_targets))
    res["w3"] = {k: p.detach().clone() for k, p in named}
    res["param_names"] = [k for k, _ in named]
    return res


def explore_grad_norms(net32, image, text, ds_targets, loss_fn):
    """Evidence for the clip value (float32): the total gradient norm at w0 for the batch, for
    targets that contradict the network's own prediction, and over 3 steps at larger lr."""
    x, t = image.to(F32), text.to(F32)
    res = {}

    def norm_at(net, targets):
        net.zero_grad(set_to_none=True)
        loss_fn(net(x, t), targets).backward()
        return float(torch.nn.utils.clip_grad_norm_(list(net.parameters()), float("inf")))

    net = copy.deepcopy(net32)
    set_train_mode(net)
    with torch.no_grad():
        out = net(x, t)
    res["w0_batch_targets"] = norm_at(net, ds_targets)
    res["w0_complement_of_prediction"] = norm_at(net, [o <= 0 for o in out])
    res["w0_all_empty"] = norm_at(net, [torch.zeros_like(o, dtype=torch.bool) for o in out])
    for lr in (1e-2, 1e-1, 5e-1):
        net = copy.deepcopy(net32)
        set_train_mode(net)
        params = list(net.parameters())
        opt = torch.optim.SGD(params, lr, momentum=MOMENTUM, nesterov=NESTEROV,
                              weight_decay=WEIGHT_DECAY)
        norms = []
        for _ in range(STEPS):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x, t), ds_targets).backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, NNUNET_CLIP)))
            opt.step()
        res[f"3_steps_lr_{lr:g}_clip_12"] = norms
    res = {k: ([float(f"{v:.4g}") for v in x] if isinstance(x, list) else float(f"{x:.4g}"))
           for k, x in res.items()}
    assert max(max(v) if isinstance(v, list) else v for v in res.values()) < NNUNET_CLIP
    return res


def unmodified_loss_on_f64(net32, image, text, ds_targets, loss_fn):
    """The official loss, unmodified, on the float64 network: returns float32."""
    net = copy.deepcopy(net32).double()
    set_train_mode(net)
    with torch.no_grad():
        loss = loss_fn(net(image, text), ds_targets)
    return loss


# --------------------------------------------------------------------------------------------
# optimiser unit case


OPTIM_SHAPES = [[7], [3, 4], [2, 3, 2], [5]]
OPTIM_LR = 0.1
OPTIM_SKIP = {3: [2]}  # p3 gets no gradient (None) at step 2
OPTIM_CONFIGS = {
    "nesterov_wd": dict(lr=OPTIM_LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY),
    "momentum": dict(lr=OPTIM_LR, momentum=MOMENTUM, nesterov=False, weight_decay=0.0),
}
OPTIM_CLIP = 1.5
# torch.optim.AdamW settings (amsgrad off); run on the same parameters and gradients.
ADAMW_CONFIGS = {
    "adamw": dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
    "adamw_nowd": dict(lr=0.003, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0),
}


def optim_case():
    g = gen_for("optim")
    tensors = {}
    p0 = [torch.randn(s, generator=g, dtype=F64) for s in OPTIM_SHAPES]
    for i, p in enumerate(p0):
        tensors[f"p{i}"] = p
    grads = {}
    for s in range(1, STEPS + 1):
        for i, shp in enumerate(OPTIM_SHAPES):
            if s in OPTIM_SKIP.get(i, []):
                continue
            grads[(i, s)] = torch.randn(shp, generator=g, dtype=F64) * (0.5 * s)
            tensors[f"g{i}.step{s}"] = grads[(i, s)]
    runs = [(n, torch.optim.SGD, kw) for n, kw in OPTIM_CONFIGS.items()]
    runs += [(n, torch.optim.AdamW, kw) for n, kw in ADAMW_CONFIGS.items()]
    for name, cls, kw in runs:
        ps = [torch.nn.Parameter(p.clone()) for p in p0]
        opt = cls(ps, **kw)
        for s in range(1, STEPS + 1):
            opt.zero_grad(set_to_none=True)
            for i, p in enumerate(ps):
                if (i, s) in grads:
                    p.grad = grads[(i, s)].clone()
            opt.step()
            for i, p in enumerate(ps):
                tensors[f"{name}.p{i}.step{s}"] = p.detach().clone()
        # a parameter skipped at a step keeps its value and momentum buffer
        for i, skipped in OPTIM_SKIP.items():
            for s in skipped:
                prev = tensors[f"p{i}"] if s == 1 else tensors[f"{name}.p{i}.step{s - 1}"]
                assert torch.equal(tensors[f"{name}.p{i}.step{s}"], prev)
    # clip_grad_norm_ on the step-1 gradients
    ps = [torch.nn.Parameter(p.clone()) for p in p0]
    for i, p in enumerate(ps):
        p.grad = grads[(i, 1)].clone()
    total = torch.nn.utils.clip_grad_norm_(ps, OPTIM_CLIP)
    assert float(total) > OPTIM_CLIP
    for i, p in enumerate(ps):
        tensors[f"clip.g{i}.step1"] = p.grad.detach().clone()
    tensors["clip.total_norm"] = total.detach().reshape(1).clone()
    meta = {
        "params": {f"p{i}": s for i, s in enumerate(OPTIM_SHAPES)},
        "steps": STEPS,
        "configs": {k: dict(v, dampening=0.0) for k, v in OPTIM_CONFIGS.items()},
        "adamw_configs": {k: dict(v, betas=list(v["betas"]), amsgrad=False)
                          for k, v in ADAMW_CONFIGS.items()},
        "no_grad_at_step": {f"p{i}": v for i, v in OPTIM_SKIP.items()},
        "clip_max_norm": OPTIM_CLIP,
        "clip_total_norm": float(total),
        "names": {
            "p{i}": "initial parameter",
            "g{i}.step{s}": "gradient set before step s (s = 1..3); absent = grad None",
            "{config}.p{i}.step{s}": "parameter after step s of torch.optim.SGD(**configs[config]) "
                                     "or torch.optim.AdamW(**adamw_configs[config])",
            "clip.g{i}.step1": "g{i}.step1 after clip_grad_norm_([p0..p3], clip_max_norm)",
            "clip.total_norm": "the total norm clip_grad_norm_ returned (before clipping)",
        },
    }
    return tensors, meta


# --------------------------------------------------------------------------------------------


def round_steps(steps):
    return [{k: (float(f"{v:.9g}") if isinstance(v, float) else v) for k, v in s.items()}
            for s in steps]


def main():
    fresh_output(OUT)

    shutil.copyfile(SRC / "plans.json", OUT / "plans.json")
    plans = json.loads((OUT / "plans.json").read_text())

    net = load_network()
    sd = net.state_dict()
    keys = canonical_keys(sd)
    ck = torch.load(SRC / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                    weights_only=False)["network_weights"]
    assert all(torch.equal(ck[k], sd[k]) for k in keys) and set(ck) == set(sd)
    pnames = [n for n, _ in net.named_parameters()]
    assert set(pnames) | {"pos_embed"} == set(keys) and len(pnames) + 1 == len(keys)
    init = {k: sd[k].detach().to(F64).contiguous() for k in keys}

    image, text, target, frac = make_batch()
    mode_info = check_modes(net, image.to(F32), text.to(F32))

    trainer = trainer_standin(plans)
    ds_scales = trainer._get_deep_supervision_scales()
    ds_targets = downsample_targets(target, ds_scales)
    default_loss, loss_fn = build_losses(trainer)

    r32 = train_run(net, image, text, ds_targets, loss_fn, F32)
    r64 = train_run(net, image, text, ds_targets, loss_fn, F64)
    loss64_unmod = unmodified_loss_on_f64(net, image, text, ds_targets, loss_fn)
    norm_evidence = explore_grad_norms(net, image, text, ds_targets, loss_fn)
    assert loss64_unmod.dtype == F32
    assert r32["out_shapes"] == [[B, N, *s] for s in
                                 [list(d.shape[2:]) for d in ds_targets]]
    assert torch.equal(ds_targets[0], target)

    # checks
    assert r32["no_grad"] == r64["no_grad"] and r32["param_names"] == r64["param_names"] == pnames
    grad_keys = [k for k in pnames if k not in r64["no_grad"]]
    bias_in = biases_before_instance_norm(net)
    for k in bias_in:
        g64 = r64["grad"][k].abs().max()
        assert g64 < 1e-12, (k, float(g64))
    flags = {d: [s["clipped"] for s in r["steps"]] for d, r in (("f64", r64), ("f32", r32))}
    assert flags["f64"] == flags["f32"] == [True, False, False], flags
    for r in (r64, r32):
        n = [s["grad_norm"] for s in r["steps"]]
        assert n[0] > 1.1 * CLIP_MAX_NORM and max(n[1:]) < 0.9 * CLIP_MAX_NORM, n
        assert max(n) < NNUNET_CLIP
    lt = r64["loss_terms"]
    w = loss_fn.weight_factors
    assert abs(float(sum(w[i] * lt[i] for i in range(5))) - float(r64["loss"][0])) < 1e-12
    assert torch.allclose(r64["loss_terms"], r64["bce_terms"] + r64["dice_terms"], atol=1e-14)
    assert abs(float(r64["loss"][0]) - float(r32["loss"][0])) < 1e-5
    for k in grad_keys:
        assert torch.allclose(r32["grad"][k].double(), r64["grad"][k], atol=1e-5, rtol=1e-3), k
        assert torch.allclose(r32["w3"][k].double(), r64["w3"][k], atol=1e-5, rtol=1e-4), k
    for k in r64["no_grad"]:
        assert torch.equal(r64["w3"][k], init[k]), k
    changed = [k for k in grad_keys if not torch.equal(r64["w3"][k], init[k])]
    assert changed == grad_keys

    # files
    save_file(init, str(OUT / "init.safetensors"))
    batch = {"image": image, "text": text, "target": target.to(torch.uint8)}
    for i, d in enumerate(ds_targets):
        batch[f"target.ds{i}"] = d.to(torch.uint8)
    save_file({k: v.contiguous() for k, v in batch.items()}, str(OUT / "batch.safetensors"))
    expected = {}
    for suffix, r in (("", r64), ("_f32", r32)):
        for name in ("loss", "loss_terms", "bce_terms", "dice_terms"):
            expected[f"{name}{suffix}"] = r[name].detach().reshape(-1).clone()
        for k in grad_keys:
            expected[f"grad{suffix}.{k}"] = r["grad"][k]
        for k in grad_keys:
            expected[f"w3{suffix}.{k}"] = r["w3"][k]
    save_file({k: v.contiguous() for k, v in expected.items()}, str(OUT / "expected.safetensors"))
    optim_tensors, optim_meta = optim_case()
    save_file({k: v.contiguous() for k, v in optim_tensors.items()},
              str(OUT / "optim.safetensors"))

    def diff(a, b):
        return float(f"{max(float((a[k].double() - b[k].double()).abs().max()) for k in a):.3g}")

    weights = [float(x) for x in loss_fn.weight_factors]
    max_update = max(float((r64["w3"][k] - init[k]).abs().max()) for k in grad_keys)
    config = {
        "generator": "tools/gen_train_fixtures.py",
        "source_model": "fixtures/fusion/cfg_b (checkpoint fold_0/checkpoint_final.pth)",
        "plans": "plans.json (byte copy of fixtures/fusion/cfg_b/plans.json)",
        "batch_size": B,
        "n_prompts": N,
        "patch_size": CFG["patch_size"],
        "text_embedding_dim": CFG["text_embedding_dim"],
        "empty_channel_per_sample": EMPTY_CHANNEL,
        "target_fraction": [[round(float(x), 6) for x in row] for row in frac],
        "image_normalisation": "nnunetv2 ZScoreNormalization(use_mask_for_norm=False), per image, "
                               "float64, then rounded to float32 (stored as f64)",
        "deep_supervision_scales": [[float(x) for x in s] for s in ds_scales],
        "deep_supervision_shapes": [list(d.shape) for d in ds_targets],
        "target_fraction_ds": [[[round(float(x), 6) for x in row]
                                for row in d.to(F64).mean((2, 3, 4))] for d in ds_targets],
        "target_downsampling": {
            "module": "batchgeneratorsv2.transforms.utils.deep_supervision_downsampling",
            "class": "DownsampleSegForDSTransform",
            "function": "torch.nn.functional.interpolate(seg[None].float(), new_shape, "
                        "mode='nearest-exact')[0].to(seg.dtype); scale 1 returns seg itself",
            "mode": "nearest-exact",
            "new_shape": "round(size * scale) per axis (Python round)",
            "input_dtype": "bool (as after ConvertSegmentationToRegionsTransform); stored u8",
            "applied": "per sample on (C, X, Y, Z), then stacked (nnUNetDataLoader)",
            "scales_from": "nnUNetTrainer._get_deep_supervision_scales: 1 / cumprod(strides)[:-1]",
        },
        "loss": {
            "class": "nnunetv2.training.loss.compound_losses.DC_and_BCE_loss",
            "built_by": "nnUNetTrainer._build_loss (has_regions=True, ignore_label None, "
                        "batch_dice from plans, not DDP, no compile); its inner loss is used",
            "bce_kwargs": {},
            "soft_dice_kwargs": LOSS_DICE_KWARGS,
            "use_ignore_label": False,
            "dice_class": "nnunetv2.training.loss.dice.MemoryEfficientSoftDiceLoss",
            "weight_ce": 1, "weight_dice": 1,
            "deep_supervision_wrapper": "nnunetv2.training.loss.deep_supervision."
                                        "DeepSupervisionWrapper",
            "ds_weights_raw": DS_WEIGHTS_RAW,
            "ds_weights": weights,
            "nnunet_default_ds_weights": [float(x) for x in default_loss.weight_factors],
        },
        "optimizer": {"class": "torch.optim.SGD", "lr": LR, "momentum": MOMENTUM,
                      "nesterov": NESTEROV, "weight_decay": WEIGHT_DECAY, "dampening": 0.0,
                      "params": "net.parameters() (247 tensors, aliases deduplicated)"},
        "clip_max_norm": CLIP_MAX_NORM,
        "nnunet_clip_max_norm": NNUNET_CLIP,
        "grad_norm_exploration_f32": norm_evidence,
        "clip_function": "torch.nn.utils.clip_grad_norm_(params, clip_max_norm): total = 2-norm "
                         "of the per-tensor 2-norms of the grads that exist; coef = max_norm / "
                         "(total + 1e-6) clamped to 1; every grad *= coef (also when coef = 1)",
        "steps": STEPS,
        "same_batch_every_step": True,
        "network_mode": "train(); the nn.Dropout and nn.MultiheadAttention modules of the "
                        "prompt decoder in eval() (dropout off)",
        "mode_checks": mode_info,
        "steps_f64": round_steps(r64["steps"]),
        "steps_f32": round_steps(r32["steps"]),
        "loss_at_w3_f64": r64["loss_at_w3"],
        "loss_at_w3_f32": r32["loss_at_w3"],
        "loss_f64": float(r64["loss"][0]),
        "loss_f32": float(r32["loss"][0]),
        "loss_f64_official_unmodified": float(loss64_unmod),
        "loss_terms_f64": [float(x) for x in r64["loss_terms"]],
        "bce_terms_f64": [float(x) for x in r64["bce_terms"]],
        "dice_terms_f64": [float(x) for x in r64["dice_terms"]],
        "output_positive_fraction_at_w0_f64": r64["positive_fraction"],
        "parameters": pnames,
        "parameters_without_grad": r64["no_grad"],
        "conv_biases_before_instance_norm": bias_in,
        "conv_biases_before_instance_norm_max_abs_grad": {
            "f64": float(f"{max(float(r64['grad'][k].abs().max()) for k in bias_in):.3g}"),
            "f32": float(f"{max(float(r32['grad'][k].abs().max()) for k in bias_in):.3g}")},
        "max_abs_diff_f32_vs_f64": {
            "grad": diff({k: r32["grad"][k] for k in grad_keys},
                         {k: r64["grad"][k] for k in grad_keys}),
            "w3": diff({k: r32["w3"][k] for k in grad_keys}, {k: r64["w3"][k] for k in grad_keys}),
            "loss": abs(float(r32["loss"][0]) - float(r64["loss"][0])),
        },
        "max_abs_update_w3_minus_w0_f64": float(f"{max_update:.3g}"),
        "storage": {
            "init": "init.safetensors: f64, canonical state_dict keys (pos_embed + the 247 "
                    "parameters)",
            "w3": "stored directly as w3 (not as a delta), only for parameters with a gradient; "
                  "parameters without one are never touched by SGD (w3 = w0, asserted)",
            "target.ds0": "equal to target (stored again for uniform naming)",
        },
        "files": {},
        "optim": optim_meta,
        "versions": package_versions(),
        "notes": notes(r64, r32, mode_info, float(loss64_unmod)),
    }
    write_json(OUT / "config.json", config)

    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file() and p.name != "config.json":
            config["files"][p.name] = {"bytes": p.stat().st_size}
    for name, d in (("batch.safetensors", batch), ("expected.safetensors", expected),
                    ("optim.safetensors", optim_tensors)):
        config["files"][name]["tensors"] = len(d)
    config["files"]["init.safetensors"]["tensors"] = len(init)
    write_json(OUT / "config.json", config)
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(ROOT)}: {p.stat().st_size} bytes  {sha256(p)[:16]}",
                  file=sys.stderr)
    for tag, r in (("f64", r64), ("f32", r32)):
        for s in r["steps"]:
            print(f"  {tag} step {s['step']}: loss {s['loss']:.9g} grad norm "
                  f"{s['grad_norm']:.9g} clipped {s['clipped']}", file=sys.stderr)
    total += OUT.stat().st_size  # the directory entry, as `du -sb` counts it
    print(f"{total} bytes in fixtures/train (du -sb)", file=sys.stderr)
    assert total <= BUDGET_BYTES, f"fixtures/train is {total} bytes, over the budget"


def notes(r64, r32, mode_info, unmod):
    return [
        "MemoryEfficientSoftDiceLoss returns -dice (mean over batch and channels of "
        "(2*I + smooth) / (sum_gt + sum_pred + smooth), clamp_min 1e-8), not 1 - dice; so "
        "DC_and_BCE_loss = BCE + (-dice) and the loss can be negative. With batch_dice False the "
        "sums run over the spatial axes only, per (sample, channel); do_bg True keeps every "
        "channel. The sigmoid is applied inside the dice (apply_nonlin=torch.sigmoid); sum_gt "
        "and the one-hot target are built under no_grad.",
        "An EMPTY target channel gives dice = smooth / (sum_pred + smooth) ~ 0, so it pulls the "
        "dice mean toward 0 (its gradient is ~smooth / sum_pred^2, tiny); its BCE term does "
        "push the logits down.",
        "BCE is torch.nn.BCEWithLogitsLoss() with reduction 'mean': the mean over ALL elements "
        "(B * N * voxels) of each output, then added to the dice with weights 1:1.",
        "DeepSupervisionWrapper: loss = sum_i w_i * loss(out_i, target_i) over outputs with "
        "w_i != 0 (zero weights are SKIPPED, their output is not evaluated; Python sum starting "
        "at 0). nnU-Net's own default (_build_loss) is 1/2^i with the last set to 0 then "
        "normalised ([8/15, 4/15, 2/15, 1/15, 0]); here all five are used: [1, 1/2, 1/4, 1/8, "
        "1/16] / (31/16) = [16, 8, 4, 2, 1] / 31. The weights are numpy float64; in the float32 "
        "run the products are float32.",
        "Precision of the official loss: MemoryEfficientSoftDiceLoss sums with "
        "dtype=torch.float32 and casts the target with .to(torch.float32); DC_and_BCE_loss casts "
        "the target with .float(), and BCEWithLogits(float64 logits, float32 target) returns "
        "float32. Unmodified, the loss of a float64 network is therefore float32 "
        f"(loss_f64_official_unmodified = {unmod:.9g} vs {float(r64['loss'][0]):.9g}). The "
        "float64 fixtures run the same official classes with those float32 literals redirected "
        "to float64 (dice module's torch.float32 and Tensor.float during the loss call), i.e. "
        "pure float64 arithmetic; the float32 fixtures use the classes unmodified.",
        "Dropout: the brief assumed none exists, but the DETR-style TransformerDecoderLayer of "
        f"the prompt decoder has dropout p = {mode_info['dropout_p']} "
        f"({mode_info['dropout_modules']} modules: nn.Dropout dropout/dropout1/2/3 and the "
        "attention-weight dropout of both MultiheadAttention per layer). A plain train() "
        "forward is random (checked: differs from eval and between seeds). The fixtures use "
        "train() with those modules in eval(); that forward equals eval() bit for bit "
        "(checked). Everything else is identical in train and eval: InstanceNorm3d has "
        "track_running_stats False (no running stats), there is no BatchNorm, and the convs' "
        "dropout_op is None.",
        "Parameters without gradient (grad None after backward, checked): every "
        "transformer_decoder.layers.*.self_attn.* and norm1.* (forward_pre has no "
        "self-attention) and decoder.seg_layers.4 (the last stage uses the einsum, not a seg "
        "layer). SGD skips them: no weight decay, no momentum buffer, w3 = w0 (asserted).",
        "Conv biases directly before an InstanceNorm (conv_biases_before_instance_norm) have a "
        "true gradient of 0 (the per-channel mean is removed); the float64 gradient is rounding "
        "noise (max listed), the float32 one larger; compare them with an absolute tolerance. "
        "They still move under weight decay and momentum of that noise.",
        "Clipping: the total gradient norm of this small network stays far below nnU-Net's 12 "
        "(grad_norm_exploration_f32: the batch at w0, targets set to the complement of the "
        "network's own prediction, all-empty targets, and 3 steps at lr 0.01 / 0.1 / 0.5 with "
        "clip 12; all asserted < 12), so clip_max_norm = 3.0 is used: clipped at step 1, not "
        "at steps 2 and 3 (asserted in both dtypes with a 10 % margin). The clip coefficient "
        "is computed in the parameters' dtype (float32 in the f32 run).",
        "SGD (torch 2.15, single-tensor path on CPU), per parameter with a grad: d = g + wd * p; "
        "step 1: buf = d (clone, not 0); later buf = momentum * buf + d (dampening 0); nesterov: "
        "d = d + momentum * buf, else d = buf; p = p - lr * d. The gradient used is the clipped "
        "one.",
        "Step records: steps_*[s].loss is the loss at the weights before step s (step 1: w0), "
        "grad_norm the value clip_grad_norm_ returned (before clipping), clip_coef "
        "min(max_norm / (grad_norm + 1e-6), 1).",
        "The float32 run starts from the f32 checkpoint weights (init.safetensors is their exact "
        "upcast) with image/text cast to float32 (exact: they are f32-representable); the "
        "float64 run is copy.deepcopy(net).double() (pos_embed upcast).",
        "Output order of the model with deep supervision: [full res (einsum), seg_layers[3], "
        "[2], [1], [0]]; target.ds{i} matches output i.",
    ]


if __name__ == "__main__":
    main()
