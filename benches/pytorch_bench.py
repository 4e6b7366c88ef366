#!/usr/bin/env python3
"""Time the official PyTorch (CPU) implementation of VoxTell's vision ops, ResEncL encoder and full model.

Gives the reference numbers that Rust timings are divided by (Rust/PyTorch ratios in
docs/performance.md). Run with the project venv:

    tools/.venv/bin/python benches/pytorch_bench.py --threads 2 --json /tmp/pytorch_bench.json

--only ops|encoder|model|all
                         which part to run (default all); the encoder and each full-model run
                         always run in a fresh subprocess so that their peak RSS is their own.
--prompts 1,4,13         prompt counts N for the full-model benchmark (one subprocess per N).
--quick                  skip the 192^3 conv shape, the encoder and the full model.
--warmup                 do one untimed encoder / model forward before the timed one
                         (without it: a single cold forward).
--json PATH              write results as a list of {name, ms_best, ms_median, gflops[, peak_rss_mb]}.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_SECONDS = 1.0
MIN_REPS = 2


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def time_fn(fn, min_reps=MIN_REPS, min_seconds=MIN_SECONDS, warmup=True):
    """Warm up once, then repeat until both min_reps and min_seconds are reached. Returns ms list."""
    if warmup:
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def result(name, times, flops=None, **extra):
    best, med = min(times), statistics.median(times)
    r = {"name": name, "ms_best": best, "ms_median": med,
         "gflops": (flops / (best * 1e-3) / 1e9) if flops else None, "reps": len(times)}
    r.update(extra)
    return r


def conv_flops(cin, cout, k, out_vox, n=1):
    return 2 * cout * cin * k ** 3 * out_vox * n


def bench_ops(quick):
    results = []
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    # conv3d 3x3x3 padding 1: (cin, cout, input size, stride)
    convs = [(32, 32, 192, 1), (32, 32, 96, 1), (64, 64, 96, 1), (128, 128, 48, 1),
             (256, 256, 24, 1), (320, 320, 12, 1),
             (32, 64, 192, 2), (64, 128, 96, 2), (128, 256, 48, 2), (256, 320, 24, 2),
             (320, 320, 12, 2)]
    for cin, cout, s, stride in convs:
        if quick and s == 192:
            continue
        x, w, b = rnd(1, cin, s, s, s), rnd(cout, cin, 3, 3, 3) * 0.05, rnd(cout)
        so = (s + 2 - 3) // stride + 1
        flops = conv_flops(cin, cout, 3, so ** 3)
        # the 192^3 stride-1 shape is slow: time a single rep after the warm-up
        slow = s == 192 and stride == 1
        with torch.inference_mode():
            times = time_fn(lambda: F.conv3d(x, w, b, stride=stride, padding=1),
                            min_reps=1 if slow else MIN_REPS, min_seconds=0 if slow else MIN_SECONDS)
        name = f"conv3d {cin}->{cout} @{s}^3" + (f" s2->{so}^3" if stride == 2 else "")
        results.append(result(name, times, flops))
        del x, w, b

    # conv3d backward (grad input + grad weight) via autograd
    for cin, cout, s in [(32, 32, 96), (320, 320, 12)]:
        x = rnd(1, cin, s, s, s).requires_grad_(True)
        w = (rnd(cout, cin, 3, 3, 3) * 0.05).requires_grad_(True)
        b = rnd(cout).requires_grad_(True)
        g = rnd(1, cout, s, s, s)

        def fwd_bwd_prepare():
            return F.conv3d(x, w, b, padding=1)

        times = []
        out = fwd_bwd_prepare()
        out.backward(g)  # warm-up
        start = time.perf_counter()
        while len(times) < MIN_REPS or time.perf_counter() - start < MIN_SECONDS:
            x.grad = w.grad = b.grad = None
            out = fwd_bwd_prepare()
            t0 = time.perf_counter()
            out.backward(g)
            times.append((time.perf_counter() - t0) * 1e3)
        flops = 2 * conv_flops(cin, cout, 3, s ** 3)
        results.append(result(f"conv3d backward {cin}->{cout} @{s}^3", times, flops))
        del x, w, b, g, out

    # conv_transpose3d kernel = stride = 2, bias on: (cin, cout, input size)
    for cin, cout, s in [(320, 320, 6), (64, 32, 96)]:
        x, w, b = rnd(1, cin, s, s, s), rnd(cin, cout, 2, 2, 2) * 0.05, rnd(cout)
        flops = 2 * cin * cout * 8 * s ** 3
        with torch.inference_mode():
            times = time_fn(lambda: F.conv_transpose3d(x, w, b, stride=2))
        results.append(result(f"conv_transpose3d {cin}->{cout} @{s}^3->{2 * s}^3", times, flops))
        del x, w, b

    # instance norm (affine, eps 1e-5) + leaky relu 0.01
    for c, s in [(32, 192), (64, 96)]:
        x, gamma, beta = rnd(1, c, s, s, s), rnd(c), rnd(c)
        with torch.inference_mode():
            times = time_fn(lambda: F.leaky_relu(
                F.instance_norm(x, weight=gamma, bias=beta, eps=1e-5), 0.01))
        results.append(result(f"instance_norm3d+leaky_relu (1,{c},{s}^3)", times))
        del x, gamma, beta
    return results


def build_encoder():
    from dynamic_network_architectures.building_blocks.residual import BasicBlockD
    from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
    return ResidualEncoder(
        input_channels=1, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320],
        conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_blocks_per_stage=[1, 3, 4, 6, 6, 6], conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, block=BasicBlockD, return_skips=True)


def encoder_flops(enc, size):
    """Sum of 2*Cout*Cin/groups*prod(k)*out_voxels over all Conv3d, shapes from a meta-device pass."""
    import copy
    total = [0]

    def hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2]
        total[0] += 2 * m.out_channels * (m.in_channels // m.groups) * k * out[0].numel() // m.out_channels

    meta = copy.deepcopy(enc).to("meta")
    hooks = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, nn.Conv3d)]
    with torch.inference_mode():
        meta(torch.empty(1, 1, size, size, size, device="meta"))
    for h in hooks:
        h.remove()
    return total[0]


def bench_encoder(warmup, size=192):
    torch.manual_seed(0)
    enc = build_encoder().eval()
    flops = encoder_flops(enc, size)
    x = torch.randn(1, 1, size, size, size)
    with torch.inference_mode():
        if warmup:
            enc(x)
        t0 = time.perf_counter()
        skips = enc(x)
        ms = (time.perf_counter() - t0) * 1e3
    assert len(skips) == 6 and skips[-1].shape == (1, 320, size // 32, size // 32, size // 32)
    del skips
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    name = f"ResEncL encoder fwd @{size}^3" + (" (warm)" if warmup else " (cold)")
    return [result(name, [ms], flops, peak_rss_mb=rss_mb, total_gflop=flops / 1e9)]


def build_voxtell_model():
    """Full VoxTellModel exactly as voxtell.inference.predictor builds it from the released plans
    (arch_kwargs of plans.json, class names resolved with pydoc.locate); random (default) init."""
    import pydoc
    from voxtell.model.voxtell_model import VoxTellModel
    arch_kwargs = {
        "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
        "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    for key in ["conv_op", "norm_op", "dropout_op", "nonlin"]:
        if arch_kwargs[key] is not None:
            arch_kwargs[key] = pydoc.locate(arch_kwargs[key])
            assert arch_kwargs[key] is not None, key
    return VoxTellModel(input_channels=1, **arch_kwargs, decoder_layer=4, text_embedding_dim=2560,
                        num_maskformer_stages=5, num_heads=32, query_dim=2048,
                        project_to_decoder_hidden_dim=2048, deep_supervision=False)


def bench_model(n_prompts, warmup, size=192):
    torch.manual_seed(0)
    net = build_voxtell_model().eval()
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn(1, 1, size, size, size, dtype=torch.float32)
    text = torch.randn(1, n_prompts, 2560, dtype=torch.float32)
    with torch.inference_mode():
        if warmup:
            net(x, text)
        t0 = time.perf_counter()
        out = net(x, text)
        ms = (time.perf_counter() - t0) * 1e3
    assert tuple(out.shape) == (1, n_prompts, size, size, size), tuple(out.shape)
    del out
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    name = f"VoxTell full model fwd @{size}^3, {n_prompts} prompt(s)" + (" (warm)" if warmup else " (cold)")
    return [result(name, [ms], None, peak_rss_mb=rss_mb, n_prompts=n_prompts, n_params=n_params)]


def run_child(threads, warmup, extra=()):
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(threads), *extra]
    if warmup:
        cmd.append("--warmup")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_table(results):
    w = max([44] + [len(r["name"]) for r in results])
    print(f"\n{'benchmark':<{w}} {'best ms':>11} {'median ms':>11} {'GFLOP/s':>9} {'reps':>5} {'peak RSS MB':>12}")
    print("-" * (w + 53))
    for r in results:
        gf = f"{r['gflops']:.1f}" if r["gflops"] else "-"
        rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else ""
        print(f"{r['name']:<{w}} {r['ms_best']:>11.2f} {r['ms_median']:>11.2f} {gf:>9} {r['reps']:>5} {rss:>12}")
        if "total_gflop" in r:
            print(f"  (encoder conv FLOPs: {r['total_gflop']:.1f} GFLOP)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["ops", "encoder", "model", "all"], default="all")
    ap.add_argument("--prompts", default="1,4,13", help="prompt counts for the full-model benchmark")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--warmup", action="store_true", help="warm-up encoder/model forward before timing")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-model", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompt_counts = [int(p) for p in args.prompts.split(",") if p.strip()]
    if any(n < 1 for n in prompt_counts):
        ap.error("--prompts: counts must be >= 1")

    if args.child_model is not None:  # fresh process for one full-model run: emit JSON only
        print(json.dumps(bench_model(args.child_model, args.warmup)))
        return

    if args.child:  # fresh process for the encoder: emit JSON only
        print(json.dumps(bench_encoder(args.warmup)))
        return

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU: {cpu_model()}, "
          f"mkldnn available: {torch.backends.mkldnn.is_available()}")
    results = []
    if args.only in ("ops", "all"):
        results += bench_ops(args.quick)
    if args.only in ("encoder", "all") and not args.quick:
        results += run_child(args.threads, args.warmup, ["--child"])
    if args.only in ("model", "all") and not args.quick:
        for n in prompt_counts:
            r = run_child(args.threads, args.warmup, ["--child-model", str(n)])
            print(f"{r[0]['name']}: {r[0]['ms_best']:.0f} ms, peak RSS {r[0]['peak_rss_mb']:.0f} MB",
                  flush=True)
            results += r
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
