#!/usr/bin/env python3
"""Generate the fixtures of voxtell-vision from torch and dynamic-network-architectures.

Run from the repository root with the pinned venv (see tools/README.md):

    tools/.venv/bin/python tools/gen_vision_fixtures.py

Writes fixtures/vision/ (deleted and rebuilt each run; byte-deterministic, CPU, one thread):

- ops.safetensors + ops.json: single operations computed in float64 with torch.nn.functional
  (conv3d, conv_transpose3d with kernel == stride, instance_norm with biased variance,
  leaky_relu, avg_pool3d with kernel == stride), and their gradients from autograd. For each case
  `name`: `name/input`, `name/weight` and `name/bias` (when the op has them), `name/output`,
  `name/grad_output` (random normal, shape of the output), `name/grad_input`, `name/grad_weight`,
  `name/grad_bias`. Layout NCDHW; conv weight (Cout, Cin, k, k, k); transposed-conv weight
  (Cin, Cout, kd, kh, kw). ops.json lists every case with its op and parameters.
- encoder_iso / encoder_aniso (.safetensors + .json): the official ResidualEncoder (BasicBlockD,
  InstanceNorm3d affine, LeakyReLU, conv bias, return_skips) with every parameter randomised.
  The safetensors holds the full state_dict (keys prefixed `encoder.`, including the
  `all_modules.*` aliases) in float32, `input` and the skips `skip.{i}` computed in float32, and
  `input_f64` / `skip_f64.{i}` from a float64 copy of the same model. The json holds the
  arch_kwargs as an nnU-Net plans.json writes them, the input shape and the skip shapes.
- stacked_conv (.safetensors + .json): an official StackedConvBlocks (two convs, first with
  stride 2, as a decoder stage uses them), keys prefixed `block.`, `input`/`output` in float32 and
  `input_f64`/`output_f64` in float64.
"""
import copy
import json
import math
import sys
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from fixture_common import fresh_output, report_files, resenc_arch_kwargs
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "vision"
BASE_SEED = 20261207
F64 = torch.float64

NORM_KWARGS = {"eps": 1e-5, "affine": True}
NONLIN_KWARGS = {"inplace": True}


def gen_for(name: str) -> torch.Generator:
    """A generator seeded from the case name, so cases do not shift when others are added."""
    return torch.Generator().manual_seed(BASE_SEED + zlib.crc32(name.encode()))


def randn(g, shape, dtype=F64):
    return torch.randn(tuple(shape), generator=g, dtype=F64).to(dtype)


def save(path: Path, tensors: dict, metadata=None):
    """safetensors save with every tensor contiguous and owning its storage (aliases cloned)."""
    clean = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_file(clean, str(path), metadata=metadata)


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Single operations (float64, autograd)
# ---------------------------------------------------------------------------------------------

# (N, Cin, D, H, W, Cout, k, stride, bias)
CONV3D = [
    ("conv3d_basic", (1, 3, 5, 6, 7), 4, 3, (1, 1, 1), True),
    ("conv3d_stride2_odd", (2, 4, 7, 5, 6), 5, 3, (2, 2, 2), True),
    ("conv3d_aniso_stride", (1, 5, 6, 7, 5), 3, 3, (2, 1, 2), False),
    ("conv3d_k1", (1, 4, 5, 5, 5), 6, 1, (1, 1, 1), False),
    ("conv3d_k1_stride2", (1, 6, 9, 7, 8), 6, 1, (2, 2, 2), False),
    ("conv3d_k5", (1, 2, 6, 6, 6), 3, 5, (1, 1, 1), True),
    # The wide-channel cases are kept small in space (and the strided one doubles 16 -> 32 channels
    # rather than keeping 32) so that fixtures/vision stays under 2.5 MB: a 32x32x27 float64 weight
    # and its gradient alone take 442 kB.
    ("conv3d_c16", (1, 16, 4, 5, 8), 16, 3, (1, 1, 1), True),
    ("conv3d_c20_c24", (1, 20, 3, 5, 9), 24, 3, (1, 1, 1), True),
    ("conv3d_c16_c32_stride2", (1, 16, 6, 6, 6), 32, 3, (2, 2, 2), True),
    ("conv3d_stem_cin1", (1, 1, 9, 8, 7), 8, 3, (1, 1, 1), True),
    ("conv3d_cout40", (1, 8, 3, 4, 6), 40, 3, (1, 1, 1), False),
]

# (N, Cin, D, H, W, Cout, stride (== kernel), bias)
CONV_T3D = [
    ("conv_t3d_basic", (1, 4, 3, 4, 5), 3, (2, 2, 2), True),
    ("conv_t3d_aniso", (2, 5, 3, 3, 2), 4, (2, 1, 2), True),
    ("conv_t3d_aniso_nobias", (1, 6, 2, 3, 3), 5, (1, 2, 2), False),
    ("conv_t3d_c20_c17", (1, 20, 3, 3, 3), 17, (2, 2, 2), True),
]

# (shape, affine, constant channel)
INORM = [
    ("inorm_affine_const", (2, 3, 4, 5, 6), True, True),
    ("inorm_plain", (1, 4, 3, 3, 3), False, False),
    ("inorm_size1_axis", (1, 2, 5, 1, 4), True, False),
]

AVGPOOL = [
    ("avgpool_222", (1, 3, 6, 7, 8), (2, 2, 2)),
    ("avgpool_212", (2, 2, 5, 6, 4), (2, 1, 2)),
]

EPS = 1e-5
SLOPE = 0.01


def run_case(name, g, inputs: dict, fn, tensors: dict):
    """Forward `fn(**inputs)` in float64, backprop a random grad_output, store everything."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**leaves)
    grad_out = randn(g, out.shape)
    out.backward(grad_out)
    for k, v in inputs.items():
        tensors[f"{name}/{k}"] = v
    tensors[f"{name}/output"] = out.detach()
    tensors[f"{name}/grad_output"] = grad_out
    for k, v in leaves.items():
        tensors[f"{name}/grad_{k}"] = v.grad.detach()
    return out


def op_cases():
    tensors, cases = {}, []

    for name, shape, cout, k, stride, bias in CONV3D:
        g = gen_for(name)
        cin = shape[1]
        pad = [(k - 1) // 2] * 3
        inputs = {"input": randn(g, shape),
                  "weight": randn(g, (cout, cin, k, k, k)) / math.sqrt(cin * k ** 3)}
        if bias:
            inputs["bias"] = randn(g, (cout,)) * 0.1

        def fn(input, weight, bias=None, stride=stride, pad=pad):
            return F.conv3d(input, weight, bias, stride=stride, padding=pad)

        out = run_case(name, g, inputs, fn, tensors)
        cases.append({"name": name, "op": "conv3d", "kernel": [k, k, k], "stride": list(stride),
                      "padding": pad, "bias": bias, "input_shape": list(shape),
                      "output_shape": list(out.shape)})

    for name, shape, cout, stride, bias in CONV_T3D:
        g = gen_for(name)
        cin = shape[1]
        inputs = {"input": randn(g, shape),
                  "weight": randn(g, (cin, cout, *stride)) / math.sqrt(cin * math.prod(stride))}
        if bias:
            inputs["bias"] = randn(g, (cout,)) * 0.1

        def fn(input, weight, bias=None, stride=stride):
            return F.conv_transpose3d(input, weight, bias, stride=stride)

        out = run_case(name, g, inputs, fn, tensors)
        cases.append({"name": name, "op": "conv_transpose3d", "kernel": list(stride),
                      "stride": list(stride), "bias": bias, "input_shape": list(shape),
                      "output_shape": list(out.shape)})

    for name, shape, affine, const in INORM:
        g = gen_for(name)
        c = shape[1]
        x = randn(g, shape)
        if const:
            x[0, 1] = 3.0  # zero variance: only eps keeps the denominator away from zero
        inputs = {"input": x}
        if affine:
            inputs["weight"] = 1.0 + 0.2 * randn(g, (c,))
            inputs["bias"] = 0.1 * randn(g, (c,))

        def fn(input, weight=None, bias=None):
            return F.instance_norm(input, weight=weight, bias=bias, use_input_stats=True, eps=EPS)

        out = run_case(name, g, inputs, fn, tensors)
        cases.append({"name": name, "op": "instance_norm3d", "eps": EPS, "affine": affine,
                      "input_shape": list(shape), "output_shape": list(out.shape)})

    name = "leaky_relu"
    g = gen_for(name)
    shape = (2, 3, 4, 5, 6)
    x = randn(g, shape)
    x.view(-1)[::7] = 0.0  # exact zeros: torch's derivative there is `slope`
    out = run_case(name, g, {"input": x}, lambda input: F.leaky_relu(input, SLOPE), tensors)
    cases.append({"name": name, "op": "leaky_relu", "slope": SLOPE, "input_shape": list(shape),
                  "output_shape": list(out.shape)})

    for name, shape, kernel in AVGPOOL:
        g = gen_for(name)

        def fn(input, kernel=kernel):
            return F.avg_pool3d(input, kernel, kernel, padding=0, ceil_mode=False)

        out = run_case(name, g, {"input": randn(g, shape)}, fn, tensors)
        cases.append({"name": name, "op": "avg_pool3d", "kernel": list(kernel),
                      "stride": list(kernel), "input_shape": list(shape),
                      "output_shape": list(out.shape)})

    save(OUT / "ops.safetensors", tensors)
    write_json(OUT / "ops.json", {"generator": "tools/gen_vision_fixtures.py", "dtype": "float64",
                                  "cases": cases})
    return cases


# ---------------------------------------------------------------------------------------------
# Official modules (ResidualEncoder, StackedConvBlocks)
# ---------------------------------------------------------------------------------------------

def randomize(module: torch.nn.Module, g: torch.Generator):
    """Overwrite every parameter (the official init leaves some norms at 1/0 or zero)."""
    with torch.no_grad():
        for m in module.modules():  # deduplicated: the all_modules aliases are visited once
            if isinstance(m, torch.nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(randn(g, m.weight.shape) / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(randn(g, m.bias.shape) * 0.1)
            elif isinstance(m, torch.nn.InstanceNorm3d):
                m.weight.copy_(1.0 + 0.2 * randn(g, m.weight.shape))
                m.bias.copy_(0.1 * randn(g, m.bias.shape))
    n_params = sum(p.numel() for p in module.parameters())
    n_set = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                for m in module.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.InstanceNorm3d)))
    assert n_params == n_set, "a parameter was not randomised"


def module_input(g, shape):
    x = randn(g, shape, torch.float32)
    x[..., :4, :4, :4] = 2.5  # a constant block: zero local variance after the stem conv
    return x


ENCODERS = {
    "encoder_iso": dict(n_stages=4, features_per_stage=[4, 8, 12, 16],
                        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                        n_blocks_per_stage=[1, 2, 2, 1], input_shape=[1, 1, 16, 16, 16]),
    # last stage keeps its channels: its first block's skip is the AvgPool alone (as in VoxTell)
    "encoder_aniso": dict(n_stages=4, features_per_stage=[4, 6, 8, 8],
                          strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 1]],
                          n_blocks_per_stage=[1, 2, 1, 2], input_shape=[1, 1, 8, 16, 12]),
}


def encoder_case(name, cfg):
    g = gen_for(name)
    n = cfg["n_stages"]
    kernel_sizes = [[3, 3, 3]] * n
    enc = ResidualEncoder(
        input_channels=1, n_stages=n, features_per_stage=cfg["features_per_stage"],
        conv_op=torch.nn.Conv3d, kernel_sizes=kernel_sizes, strides=cfg["strides"],
        n_blocks_per_stage=cfg["n_blocks_per_stage"], conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs=dict(NORM_KWARGS), dropout_op=None,
        dropout_op_kwargs=None, nonlin=torch.nn.LeakyReLU, nonlin_kwargs=dict(NONLIN_KWARGS),
        block=BasicBlockD, return_skips=True).eval()
    randomize(enc, g)
    size = list(cfg["input_shape"][2:])
    for s in cfg["strides"]:
        size = [a // b for a, b in zip(size, s)]
        assert all(a >= 2 for a in size), f"{name}: a stage has fewer than 2 voxels on an axis"

    x = module_input(g, cfg["input_shape"])
    with torch.no_grad():
        skips = enc(x.clone())
        enc64 = copy.deepcopy(enc).double()
        x64 = x.double()
        skips64 = enc64(x64.clone())

    tensors = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in tensors.values())
    tensors["input"] = x
    for i, s in enumerate(skips):
        tensors[f"skip.{i}"] = s
    tensors["input_f64"] = x64
    for i, s in enumerate(skips64):
        tensors[f"skip_f64.{i}"] = s
    save(OUT / f"{name}.safetensors", tensors)

    arch_kwargs = resenc_arch_kwargs(cfg["features_per_stage"], cfg["strides"], cfg["n_blocks_per_stage"])
    assert arch_kwargs["n_stages"] == n and arch_kwargs["kernel_sizes"] == kernel_sizes
    write_json(OUT / f"{name}.json", {
        "generator": "tools/gen_vision_fixtures.py",
        "arch_kwargs": arch_kwargs,
        "input_shape": list(x.shape),
        "skip_shapes": [list(s.shape) for s in skips],
    })
    return enc, [list(s.shape) for s in skips]


def stacked_conv_case():
    name = "stacked_conv"
    g = gen_for(name)
    kwargs = dict(num_convs=2, input_channels=6, output_channels=4, kernel_size=3,
                  initial_stride=2, conv_bias=True)
    block = StackedConvBlocks(
        conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs=dict(NORM_KWARGS), dropout_op=None, dropout_op_kwargs=None,
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs=dict(NONLIN_KWARGS), **kwargs).eval()
    randomize(block, g)
    x = module_input(g, (1, 6, 7, 8, 6))
    with torch.no_grad():
        out = block(x.clone())
        block64 = copy.deepcopy(block).double()
        x64 = x.double()
        out64 = block64(x64.clone())
    tensors = {f"block.{k}": v for k, v in block.state_dict().items()}
    tensors.update({"input": x, "output": out, "input_f64": x64, "output_f64": out64})
    save(OUT / f"{name}.safetensors", tensors)
    write_json(OUT / f"{name}.json", {
        "generator": "tools/gen_vision_fixtures.py",
        "kwargs": {**kwargs, "conv_op": "torch.nn.modules.conv.Conv3d",
                   "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                   "norm_op_kwargs": dict(NORM_KWARGS), "dropout_op": None,
                   "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                   "nonlin_kwargs": dict(NONLIN_KWARGS)},
        "padding": [1, 1, 1],
        "input_shape": list(x.shape),
        "output_shape": list(out.shape),
    })
    return list(out.shape)


def main():
    fresh_output(OUT, BASE_SEED)

    cases = op_cases()
    by_op = {}
    for c in cases:
        by_op[c["op"]] = by_op.get(c["op"], 0) + 1
    print(f"ops: {len(cases)} cases " + ", ".join(f"{k} {v}" for k, v in by_op.items()),
          file=sys.stderr)
    for name, cfg in ENCODERS.items():
        enc, shapes = encoder_case(name, cfg)
        print(f"{name}: {len(enc.state_dict())} state_dict keys, skips {shapes}", file=sys.stderr)
    print(f"stacked_conv: output {stacked_conv_case()}", file=sys.stderr)

    report_files(OUT)


if __name__ == "__main__":
    main()
