#!/usr/bin/env python3
"""Generate the end-to-end inference fixtures (read -> crop -> z-score -> pad -> sliding window ->
threshold -> un-crop -> write) from the OFFICIAL `VoxTellPredictor` (voxtell 0.1.2).

Run from the repository root with the pinned venv (see tools/README.md):

    tools/.venv/bin/python tools/gen_infer_fixtures.py

It needs fixtures/fusion/cfg_a (written by gen_fusion_fixtures.py), which is the model used here
(patch 32^3, text_embedding_dim 24, no deep supervision); it is loaded in place, not copied,
through `VoxTellPredictor(model_dir=..., device=cpu, embedding_bank=bank.npz)` inside
`gen_fusion_fixtures.official_patches(CONFIGS["cfg_a"])`.

Writes fixtures/infer/predict/ only (deleted and rebuilt each run; nothing else under
fixtures/infer/ is touched). CPU, one thread, no network (HF_HUB_OFFLINE=1), byte-deterministic,
at most 1.6 MB (asserted).

- `bank.npz`: an embedding bank in the official layout (`labels`: numpy unicode `<U..`, the 4
  prompts lowercased; `embeddings`: float16 (4, 24), ~N(0, 1) like the `text` input of
  gen_fusion_fixtures), written with np.savez_compressed and zip member times pinned to 1980.
  The official loader (`load_embedding_bank`) reads it; the predictor answers every prompt from it
  (the Qwen backbone is never loaded, asserted).
- `images/{case}.nii.gz`: the input volumes (header built by nibabel, data written verbatim,
  gzip mtime 0):
  - `ct_oblique`: int16 with scl_slope 0.75 / scl_inter -768 (stored 1024 reads as 0.0), stored
    as P-L-S with a small rotation (oblique), spacing (0.8, 1.25, 2.5); zero border on 5 of the
    6 sides, a zero pocket inside the crop box; cropped (19, 49, 36) = padded on axis 0 (19 ->
    32, pads 6/7), 3 tiles on axis 1 (steps [0, 8, 17]: 8.5 rounds half-to-even to 8) and 2 tiles
    on axis 2 (steps [0, 4]): 6 tiles.
  - `mr_small`: float32 (multiples of 1/8), RAS storage, spacing (1.1, 0.9, 3.0); cropped
    (20, 27, 23), smaller than the 32^3 patch on every axis: one tile, padded on all axes.
  Intensities: a few smooth Gaussian blobs plus noise.
- `official/{case}_{safe}.nii.gz`: the per-prompt masks written by the official
  `predict_from_jobs` (names exactly as it wrote them: `_safe_prompt_name`, original case).
- `official_combined/{case}.nii.gz`: the same with `save_combined=True` (label i+1 for prompt i,
  later prompts overwrite).
- `{case}.safetensors`:
  - `input_padded` f32 (Z'', Y'', X''): the official `preprocess` output (crop + z-score) after
    the official `pad_nd_image(x, patch_size, 'constant', {'value': 0}, True, None)`, i.e. what
    the tiles are sliced from (every patch the network saw was checked against it);
  - `logits` f16 (N, Z', Y', X'): `predict_sliding_window_return_logits` (fp16 accumulation,
    division, padding removed);
  - `tile_out` f32 (N, 32, 32, 32), only for cases with more than one tile: the network output
    `predictor.network(patch, text_embeddings)[0]` of the tile with index 1 in the official tile
    order (origin in config.json), captured by a forward hook during the official run.
- `stub.safetensors`: the accumulation with the network replaced by a deterministic hash stub
  (definition in config.json `stub.hash`) and a NON-cube patch size (`predictor.patch_size =
  [20, 24, 16]`; the official code reads self.patch_size for padding, tiling and the Gaussian):
  `input_padded` f32, `logits` f16 (N, Z', Y', X'), `masks` u8 (N, S, A, R) from the official
  `predict_single_image(data, text_embeddings=...)` with the stub.
- `config.json`: per case: file, storage (dtype, scaling, axcodes, affine as read), reoriented
  affine, prompts as typed, safe names, shapes (orig (S, A, R) after the official reader,
  cropped, padded), bbox (half-open), padding (slicer_revert_padding), steps, tile origins in the
  official order, logit statistics (positive fraction, abs max, min |logit|, exact zeros, f16
  subnormals), output file names and header facts; the stub (case, prompts, patch, tiles, hash
  definition, causes of its exact-zero logits); the Gaussian maps used; package versions (the
  list of tools/fixture_versions.py); `notes` on the official behaviour.

Checked (asserted) against the official code before anything is kept: the reader returns the
designed (S, A, R) arrays; the crop box; each official per-prompt file equals `logits > 0` put
back into the original shape and written in the original voxel order (checked both through the
official reader and independently voxel by voxel through the two affines); the combined file
equals label i+1 where mask i is set, later prompts winning; 10-90 % positive voxels per prompt;
the stub equals a pure-Python evaluation of the hash.
"""
import ast
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import zlib
from importlib.metadata import version
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("VOXTELL_MODEL", None)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import voxtell.inference.predictor as vx_predictor  # noqa: E402
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image  # noqa: E402
from acvl_utils.cropping_and_padding.padding import pad_nd_image  # noqa: E402
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient  # noqa: E402
from nnunetv2.inference.sliding_window_prediction import compute_gaussian  # noqa: E402
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero  # noqa: E402
from voxtell.utils.embedding_bank import load_embedding_bank  # noqa: E402

from fixture_common import fresh_output, report_files  # noqa: E402
from gen_fusion_fixtures import CONFIGS, official_patches  # noqa: E402
from gen_io_fixtures import gz_bytes, nifti_bytes  # noqa: E402
from gen_text_fixtures import fixed_zip_time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "infer" / "predict"
MODEL_DIR = ROOT / "fixtures" / "fusion" / "cfg_a"
CFG = CONFIGS["cfg_a"]
BASE_SEED = 20261231
BUDGET_BYTES = 1_600_000
BANK_SEED_NAME = "bank"  # the bank vectors' seed; with it every prompt is 10-90 % positive

# The prompts as a user types them; the bank holds them lowercased.
PROMPTS = ["Liver", "left kidney", "lesion (liver)/segment 4", "Läsion der Leber"]

STUB_PATCH = [20, 24, 16]
STUB_CASE = "ct_oblique"
STUB_PROMPTS = ["left kidney", "Läsion der Leber"]
HASH_MULT = {"t": 73856093, "p": 19349663, "i": 83492791, "j": 2654435761, "k": 97531}
U64 = (1 << 64) - 1

# Each case is designed in the reader's (S, A, R) voxel order: orig shape and the zero border
# (voxels before / after the crop box on each axis).
CASES = {
    "ct_oblique": dict(
        prompts=["Liver", "lesion (liver)/segment 4"],
        cropped=[19, 49, 36], before=[2, 0, 5], after=[3, 4, 1],
        storage="int16",
        # storage axes (i, j, k) = (P, L, S): i runs toward -A, j toward -R, k toward +S
        storage_dirs=[[0, -1, 0], [-1, 0, 0], [0, 0, 1]],  # RAS direction of each storage axis
        spacing=[0.8, 1.25, 2.5], rotate_deg=(6.0, -4.0, 3.0),
        origin=[118.25, 96.5, -305.0],
    ),
    "mr_small": dict(
        prompts=list(PROMPTS),
        cropped=[20, 27, 23], before=[1, 3, 0], after=[2, 1, 4],
        storage="float32",
        storage_dirs=[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        spacing=[1.1, 0.9, 3.0], rotate_deg=(0.0, 0.0, 0.0),
        origin=[-12.5, -40.0, 17.75],
    ),
}
CT_SLOPE, CT_INTER, CT_ZERO_RAW = 0.75, -768.0, 1024  # 1024 * 0.75 - 768 == 0 exactly


def seed_for(name: str) -> int:
    return BASE_SEED + zlib.crc32(name.encode())


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def versions():
    """The package list of tools/fixture_versions.py (read, not imported: importing it rewrites
    fixtures/VERSIONS.txt)."""
    tree = ast.parse((ROOT / "tools" / "fixture_versions.py").read_text())
    pkgs = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == "PACKAGES" for t in n.targets))
    out = {"python": platform.python_version()}
    out.update({p: version(p) for p in pkgs})
    out["safetensors"] = version("safetensors")
    return out


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def make_bank():
    g = torch.Generator().manual_seed(seed_for(BANK_SEED_NAME))
    emb = torch.randn((len(PROMPTS), CFG["text_embedding_dim"]), generator=g,
                      dtype=torch.float64).to(torch.float32).numpy()
    emb16 = emb.astype(np.float16)
    labels = np.array([p.lower() for p in PROMPTS])
    assert labels.dtype.kind == "U"
    with fixed_zip_time():
        np.savez_compressed(OUT / "bank.npz", labels=labels, embeddings=emb16)
    bank = load_embedding_bank(str(OUT / "bank.npz"))  # official loader
    assert list(bank) == [p.lower() for p in PROMPTS]
    for i, p in enumerate(PROMPTS):
        assert bank[p.lower()].dtype == np.float16 and np.array_equal(bank[p.lower()], emb16[i])
    return labels, emb16


def rotation(deg):
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(shape, rng, n_blobs):
    """A sum of Gaussian blobs with random centres, widths and signed amplitudes (float64)."""
    grid = np.indices(shape, dtype=np.float64)
    field = np.zeros(shape)
    for _ in range(n_blobs):
        c = [rng.uniform(-0.1, 1.1) * (n - 1) for n in shape]
        s = [rng.uniform(0.15, 0.45) * n for n in shape]
        a = rng.uniform(-1.0, 1.0)
        d2 = sum(((grid[ax] - c[ax]) / s[ax]) ** 2 for ax in range(3))
        field += a * np.exp(-0.5 * d2)
    return field


def design_case(name, c):
    """The (S, A, R) array the official reader must return, and the stored voxel array."""
    rng = np.random.default_rng(seed_for(name))
    cropped = c["cropped"]
    orig = [b + n + a for b, n, a in zip(c["before"], cropped, c["after"])]
    field = smooth_field(cropped, rng, 7)
    noise = rng.standard_normal(cropped)
    box = np.ones(cropped, dtype=bool)
    # a zero corner (the box stays the bbox: every face keeps non-zero voxels) and an inner pocket
    box[: cropped[0] // 3, : cropped[1] // 4, cropped[2] - cropped[2] // 4:] = False
    m = [n // 2 for n in cropped]
    box[m[0] - 1:m[0] + 1, m[1] - 2:m[1] + 1, m[2] - 1:m[2] + 2] = False
    if c["storage"] == "int16":
        hu = 40.0 + 180.0 * field + 12.0 * noise  # Hounsfield-like
        raw = np.rint((hu - CT_INTER) / CT_SLOPE).astype(np.int64)
        raw[raw == CT_ZERO_RAW] = CT_ZERO_RAW + 1  # only the masked voxels read as 0
        raw = np.where(box, raw, CT_ZERO_RAW)
        raw_full = np.full(orig, CT_ZERO_RAW, dtype=np.int16)
        sl = tuple(slice(b, b + n) for b, n in zip(c["before"], cropped))
        raw_full[sl] = raw.astype(np.int16)
        sar = (raw_full.astype(np.float64) * CT_SLOPE + CT_INTER).astype(np.float32)
        stored_sar = raw_full
    else:
        # multiples of 1/8: exact in float32 and better compressible than full-mantissa noise
        val = (np.rint((300.0 + 120.0 * field + 15.0 * noise) * 8) / 8).astype(np.float32)
        val[val == 0] = 1.0
        val = np.where(box, val, np.float32(0))
        full = np.zeros(orig, dtype=np.float32)
        sl = tuple(slice(b, b + n) for b, n in zip(c["before"], cropped))
        full[sl] = val
        sar = full
        stored_sar = full
    # (S, A, R) -> (R, A, S) -> storage order given by storage_dirs
    ras = stored_sar.transpose(2, 1, 0)
    dirs = np.array(c["storage_dirs"], dtype=np.float64)  # row i: RAS direction of storage axis i
    perm = [int(np.argmax(np.abs(d))) for d in dirs]  # RAS axis of each storage axis
    stored = ras.transpose(perm)
    flips = [ax for ax, d in enumerate(dirs) if d[perm[ax]] < 0]
    if flips:
        stored = np.flip(stored, axis=flips)
    stored = np.ascontiguousarray(stored)
    aff = np.eye(4)
    aff[:3, :3] = rotation(c["rotate_deg"]) @ dirs.T @ np.diag(c["spacing"])
    aff[:3, 3] = c["origin"]
    return sar, stored, aff, orig


def write_image(path, stored, aff, c):
    if c["storage"] == "int16":
        raw = nifti_bytes(stored, aff, dtype=np.int16, slope=CT_SLOPE, inter=CT_INTER)
    else:
        raw = nifti_bytes(stored, aff, dtype=np.float32)
    path.write_bytes(gz_bytes(raw))
    img = nib.load(str(path))
    assert img.shape == stored.shape and np.array_equal(np.asarray(img.dataobj.get_unscaled()),
                                                        stored)
    return img


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def storage_to_sar_index(shape, orig_aff, reor_aff):
    """For every stored voxel (i, j, k): its (s, a, r) index in the reader's array, from the two
    affines only (world = A_orig v; reoriented index = A_reor^-1 world; (r, a, s) -> (s, a, r))."""
    v = np.indices(shape).reshape(3, -1).astype(np.float64)
    world = orig_aff[:3, :3] @ v + orig_aff[:3, 3:4]
    inv = np.linalg.inv(reor_aff)
    ras = inv[:3, :3] @ world + inv[:3, 3:4]
    idx = np.rint(ras).astype(np.int64)
    assert np.abs(ras - idx).max() < 1e-6
    return idx[2], idx[1], idx[0]


def check_written(path, seg_sar, props, rw):
    """An official output file holds `seg_sar` (S, A, R) in the original voxel order."""
    img = nib.load(str(path))
    stored = np.asarray(img.dataobj)
    assert stored.dtype == np.uint8, stored.dtype
    orig_aff = props["nibabel_stuff"]["original_affine"]
    assert np.allclose(img.affine, orig_aff, atol=1e-5)
    s, a, r = storage_to_sar_index(stored.shape, orig_aff, props["nibabel_stuff"]["reoriented_affine"])
    assert np.array_equal(stored.reshape(-1), seg_sar[s, a, r]), path.name
    back, _ = rw.read_seg(str(path))
    assert np.array_equal(back[0], seg_sar.astype(np.float32)), path.name
    return {"dtype": str(stored.dtype), "stored_shape": list(stored.shape),
            "sform_code": int(img.header["sform_code"]), "qform_code": int(img.header["qform_code"])}


def logit_stats(logits):
    x = logits.float()
    stats = []
    for n in range(x.shape[0]):
        xn = x[n]
        nonzero = xn[xn != 0].abs()
        pos = xn > 0
        stats.append({
            "positive_fraction": round(float(pos.double().mean()), 4),
            "abs_max": float(xn.abs().max()),
            "min_abs": float(xn.abs().min()),
            "min_abs_nonzero": float(nonzero.min()) if nonzero.numel() else None,
            "exact_zeros": int((xn == 0).sum()),
            "f16_subnormal": int(((xn != 0) & (xn.abs() < 2.0 ** -14)).sum()),
            # voxels where `logits > 0` (0.1.2) and `sigmoid(logits.float()) > 0.5` (git HEAD)
            # disagree
            "gt0_vs_sigmoid_disagree": int((pos != (torch.sigmoid(xn) > 0.5)).sum()),
        })
    return stats


@contextlib.contextmanager
def capture_output(sink: list):
    """Collect what the official code prints (stdout and stderr, tqdm bars included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield
    sink.append(out.getvalue() + err.getvalue())


def warning_lines(texts):
    lines = []
    for t in texts:
        for line in t.replace("\r", "\n").splitlines():
            if "warn" in line.lower() and line.strip() not in lines:
                lines.append(line.strip())
    return lines


# ---------------------------------------------------------------------------------------------
# Hash stub
# ---------------------------------------------------------------------------------------------

def hash_values(t, n, shape, fine=False):
    """((h mod 4001) - 2000) / 128 with h = (t*M_t) ^ (p*M_p) ^ (i*M_i) ^ (j*M_j) ^ (k*M_k)
    mod 2^64, for prompts p < n and tile-local voxels (i, j, k), as float32 (n, *shape).
    `fine`: ((h mod 2^24) - 2^23) / 2^20 instead (24 significant bits, still exact in float32),
    so that pred * g rounds in float32 and the f16 accumulation meets double rounding."""
    m = {k: np.uint64(v) for k, v in HASH_MULT.items()}
    p = np.arange(n, dtype=np.uint64)[:, None, None, None]
    i = np.arange(shape[0], dtype=np.uint64)[None, :, None, None]
    j = np.arange(shape[1], dtype=np.uint64)[None, None, :, None]
    k = np.arange(shape[2], dtype=np.uint64)[None, None, None, :]
    with np.errstate(over="ignore"):  # uint64 multiplication wraps mod 2^64, like Rust's
        h = (np.uint64(t) * m["t"]) ^ (p * m["p"]) ^ (i * m["i"]) ^ (j * m["j"]) ^ (k * m["k"])
    if fine:
        v = (h % np.uint64(1 << 24)).astype(np.int64) - (1 << 23)
        return (v.astype(np.float32) / np.float32(1 << 20)).astype(np.float32)
    v = (h % np.uint64(4001)).astype(np.int64) - 2000
    return (v.astype(np.float32) / np.float32(128)).astype(np.float32)


def hash_reference_fine(t, p, i, j, k):
    t, p, i, j, k = int(t), int(p), int(i), int(j), int(k)
    h = ((t * HASH_MULT["t"]) ^ (p * HASH_MULT["p"]) ^ (i * HASH_MULT["i"])
         ^ (j * HASH_MULT["j"]) ^ (k * HASH_MULT["k"])) & U64
    return ((h % (1 << 24)) - (1 << 23)) / (1 << 20)


def hash_reference(t, p, i, j, k):
    t, p, i, j, k = int(t), int(p), int(i), int(j), int(k)
    h = ((t * HASH_MULT["t"]) ^ (p * HASH_MULT["p"]) ^ (i * HASH_MULT["i"])
         ^ (j * HASH_MULT["j"]) ^ (k * HASH_MULT["k"])) & U64
    return ((h % 4001) - 2000) / 128


def check_hash():
    rng = np.random.default_rng(seed_for("hash"))
    for t in (0, 1, 15, 1 << 40, (1 << 64) - 1):
        vals = hash_values(t, 3, STUB_PATCH)
        pts = [(0, 0, 0, 0), (2, 19, 23, 15)] + [tuple(int(rng.integers(0, s)) for s in
                                                     (3, *STUB_PATCH)) for _ in range(200)]
        fine = hash_values(t, 3, STUB_PATCH, fine=True)
        for p, i, j, k in pts:
            assert float(vals[p, i, j, k]) == hash_reference(t, p, i, j, k), (t, p, i, j, k)
            assert float(fine[p, i, j, k]) == hash_reference_fine(t, p, i, j, k), (t, p, i, j, k)
    # huge indices, where the products exceed 2^63 (and 2^64): numpy uint64 wraps like u64
    for t, p, i, j, k in [((1 << 62) + 5, 3, 7, 11, 13), (1 << 63, 1, 2, 3, 4)]:
        m = {kk: np.uint64(v) for kk, v in HASH_MULT.items()}
        with np.errstate(over="ignore"):
            h = ((np.uint64(t) * m["t"]) ^ (np.uint64(p) * m["p"]) ^ (np.uint64(i) * m["i"])
                 ^ (np.uint64(j) * m["j"]) ^ (np.uint64(k) * m["k"]))
        assert float((int(h) % 4001 - 2000) / 128) == hash_reference(t, p, i, j, k)
    # tiles 0 and 1 in full
    for t in (0, 1):
        vals = hash_values(t, 2, STUB_PATCH)
        ref = np.array([[[[hash_reference(t, p, i, j, k) for k in range(STUB_PATCH[2])]
                          for j in range(STUB_PATCH[1])] for i in range(STUB_PATCH[0])]
                        for p in range(2)], dtype=np.float64)
        assert np.array_equal(vals.astype(np.float64), ref)


class HashStub(torch.nn.Module):
    """Replaces predictor.network: forward(patch, text_embeddings) -> (1, N, *patch) float32."""

    def __init__(self, patch_size, fine=False):
        super().__init__()
        self.patch_size = list(patch_size)
        self.fine = fine
        self.t = 0

    def forward(self, patch, text_embeddings):
        assert list(patch.shape) == [1, 1, *self.patch_size], patch.shape
        vals = hash_values(self.t, int(text_embeddings.shape[1]), self.patch_size, self.fine)
        self.t += 1
        return torch.from_numpy(vals)[None]


# ---------------------------------------------------------------------------------------------
# Official runs
# ---------------------------------------------------------------------------------------------

def zero_edge_distance(logits):
    """Largest, over the voxels with an exact 0 logit, of their distance (in voxels) to the
    nearest face of the (unpadded) logits array; None if there is no exact zero."""
    z = (logits == 0).nonzero()[:, 1:]
    if z.numel() == 0:
        return None
    shape = torch.tensor(logits.shape[1:])
    dist = torch.minimum(z, shape - 1 - z).min(dim=1).values
    return int(dist.max())


def stub_zero_causes(logits, revert, slicers):
    """Classify the exact-zero stub logits: `hash_zero` where every tile covering the voxel had
    the hash value exactly 0 there; `f16_rounding` otherwise (tiny Gaussian weights: underflow
    to 0 or exact cancellation in the f16 accumulator)."""
    off = [int(s.start) for s in revert[1:]]
    origins = tile_origins(slicers)
    out = {"hash_zero": 0, "f16_rounding": 0}
    for p, *v in (logits == 0).nonzero().tolist():
        pv = [a + o for a, o in zip(v, off)]  # padded coordinates
        vals = []
        for t, o in enumerate(origins):
            loc = [a - b for a, b in zip(pv, o)]
            if all(0 <= x < n for x, n in zip(loc, STUB_PATCH)):
                vals.append(hash_reference(t, p, *loc))
        out["hash_zero" if all(x == 0 for x in vals) else "f16_rounding"] += 1
    return out


def tile_origins(slicers):
    return [[int(s.start) for s in sl[1:]] for sl in slicers]


def official_window(predictor, data, emb, record=False):
    """predict_sliding_window_return_logits, plus what it sliced and fed to the network."""
    padded, revert = pad_nd_image(data, predictor.patch_size, "constant", {"value": 0}, True, None)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    calls = []

    def hook(_m, args, out):
        calls.append((args[0].detach().clone(), out[0].detach().clone() if record else None))

    h = predictor.network.register_forward_hook(hook)
    try:
        logits = predictor.predict_sliding_window_return_logits(data, emb)
    finally:
        h.remove()
    assert len(calls) == len(slicers)
    for (patch, _), sl in zip(calls, slicers):  # the tiles came from `padded`, in this order
        assert torch.equal(patch[0], padded[sl])
    return padded, revert, slicers, logits.clone().contiguous(), calls


def gaussian_info(patch):
    g = compute_gaussian(tuple(patch), sigma_scale=1. / 8, value_scaling_factor=10,
                         device=torch.device("cpu"))
    gmin = g.min()
    return {"patch_size": list(patch), "dtype": str(g.dtype).replace("torch.", ""),
            "max": float(g.max()), "min": float(gmin), "voxels_at_min": int((g == gmin).sum()),
            "center": [n // 2 for n in patch], "value_at_center": float(g[tuple(n // 2 for n in patch)])}


def run_case(predictor, rw, name, c, img_path, emb_all, printed):
    img, props = rw.read_images([str(img_path)])
    prompts = c["prompts"]
    emb = torch.stack([emb_all[PROMPTS.index(p)] for p in prompts]).view(1, len(prompts), -1)
    with capture_output(printed):
        emb_check = predictor.embed_text_prompts(prompts)
    assert torch.equal(emb_check, emb) and predictor.text_backbone is None

    data, bbox, orig_shape = predictor.preprocess(img)
    _, _, bbox2 = crop_to_nonzero(img.astype(np.float32).copy(), None)
    assert [list(b) for b in bbox] == [list(b) for b in bbox2]
    with capture_output(printed):
        padded, revert, slicers, logits, calls = official_window(predictor, data, emb, record=True)
    n_tiles = len(slicers)
    tensors = {"input_padded": padded[0].float().contiguous(), "logits": logits}
    assert logits.dtype == torch.float16 and list(logits.shape) == [len(prompts), *data.shape[1:]]
    tile_index = None
    if n_tiles > 1:
        tile_index = 1
        _, out = calls[tile_index]
        with torch.no_grad():
            again = predictor.network(padded[slicers[tile_index]][None].clone(), emb)[0]
        assert torch.equal(again, out) and out.dtype == torch.float32
        assert any(s != 0 for s in tile_origins(slicers)[tile_index])
        tensors["tile_out"] = out.contiguous()

    # predict_single_image = threshold logits > 0, un-crop into the original shape
    with capture_output(printed):
        seg = predictor.predict_single_image(img, text_embeddings=emb)
    expect = np.zeros((len(prompts), *orig_shape), dtype=np.uint8)
    expect = insert_crop_into_image(expect, (logits > 0).numpy(), bbox)
    assert seg.dtype == np.uint8 and np.array_equal(seg, expect)

    stats = logit_stats(logits)
    for p, s in zip(prompts, stats):
        assert 0.1 <= s["positive_fraction"] <= 0.9, (name, p, s)

    return dict(img=img, props=props, prompts=prompts, emb=emb, bbox=[list(map(int, b)) for b in bbox],
                orig_shape=list(orig_shape), cropped=list(data.shape[1:]),
                padded=list(padded.shape[1:]), revert=revert, slicers=slicers,
                tile_index=tile_index, tensors=tensors, seg=seg, stats=stats)


def run_stub(predictor, rw, img_path, emb_all, printed):
    img, _ = rw.read_images([str(img_path)])
    emb = torch.stack([emb_all[PROMPTS.index(p)] for p in STUB_PROMPTS]).view(1, len(STUB_PROMPTS), -1)
    saved = predictor.network, predictor.patch_size
    stub = HashStub(STUB_PATCH)
    predictor.network = stub
    predictor.patch_size = list(STUB_PATCH)
    try:
        data, bbox, orig_shape = predictor.preprocess(img)
        with capture_output(printed):
            padded, revert, slicers, logits, calls = official_window(predictor, data, emb)
        assert stub.t == len(slicers) >= 12
        stub.t = 0
        with capture_output(printed):
            masks = predictor.predict_single_image(img, text_embeddings=emb)
        assert stub.t == len(slicers)
        fine = HashStub(STUB_PATCH, fine=True)
        predictor.network = fine
        with capture_output(printed):
            _, _, _, logits_fine, _ = official_window(predictor, data, emb)
        assert fine.t == len(slicers)
    finally:
        predictor.network, predictor.patch_size = saved
    expect = np.zeros((len(STUB_PROMPTS), *orig_shape), dtype=np.uint8)
    expect = insert_crop_into_image(expect, (logits > 0).numpy(), bbox)
    assert masks.dtype == np.uint8 and np.array_equal(masks, expect)
    assert torch.isfinite(logits).all()
    assert torch.isfinite(logits_fine).all()
    tensors = {"input_padded": padded[0].float().contiguous(), "logits": logits,
               "logits_fine": logits_fine,
               "masks": torch.from_numpy(np.ascontiguousarray(masks))}
    info = {
        "case": STUB_CASE,
        "prompts": STUB_PROMPTS,
        "patch_size": STUB_PATCH,
        "orig_shape": list(orig_shape),
        "bbox": [list(map(int, b)) for b in bbox],
        "cropped_shape": list(data.shape[1:]),
        "padded_shape": list(padded.shape[1:]),
        "pad": pad_info(padded.shape[1:], revert),
        "steps": steps_of(slicers),
        "n_tiles": len(slicers),
        "tile_origins": tile_origins(slicers),
        "logit_stats": logit_stats(logits),
        "exact_zero_logits_max_edge_distance": zero_edge_distance(logits),
        "exact_zero_logit_causes": stub_zero_causes(logits, revert, slicers),
        "hash": {
            "value": "((h mod 4001) - 2000) / 128, float32, at prompt p and tile-local voxel "
                     "(i, j, k) (axes of the padded (Z'', Y'', X'') array)",
            "h": "((t*73856093) ^ (p*19349663) ^ (i*83492791) ^ (j*2654435761) ^ (k*97531)) "
                 "mod 2^64 (u64 wrapping arithmetic)",
            "t": "network call count: 0 for the first tile of the run, +1 per tile in the "
                 "official tile order (reset before each run)",
            "multipliers": HASH_MULT,
            "output_shape": "(1, N, *patch_size) float32, N = text_embeddings.shape[1]",
            "fine": "`logits_fine`: the same run with ((h mod 2^24) - 2^23) / 2^20 (24 significant "
                    "bits, exact in float32), so that pred * g rounds in float32 and the f16 "
                    "accumulator sees double rounding (f16(f32(acc) + p) vs a single rounding)",
        },
        "gaussian": gaussian_info(STUB_PATCH),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                    for k, v in tensors.items()},
    }
    return tensors, info


def pad_info(padded, revert):
    """Per spatial axis: the official slicer_revert_padding [start, stop) and the padding below /
    above the cropped data."""
    return [{"slicer": [int(s.start), int(s.stop)], "below": int(s.start), "above": int(n - s.stop)}
            for n, s in zip(padded, revert[1:])]


def steps_of(slicers):
    origins = tile_origins(slicers)
    return [sorted({o[a] for o in origins}) for a in range(3)]


# ---------------------------------------------------------------------------------------------

def main():
    assert MODEL_DIR.joinpath("fold_0", "checkpoint_final.pth").is_file(), \
        "run tools/gen_fusion_fixtures.py first"
    fresh_output(OUT)
    for d in ("images", "official", "official_combined"):
        (OUT / d).mkdir(parents=True)
    check_hash()

    labels, emb16 = make_bank()
    rw = NibabelIOWithReorient()
    printed = []

    # inputs
    designs = {}
    for name, c in CASES.items():
        sar, stored, aff, orig = design_case(name, c)
        path = OUT / "images" / f"{name}.nii.gz"
        img = write_image(path, stored, aff, c)
        data, props = rw.read_images([str(path)])
        assert data.shape == (1, *orig) and np.array_equal(data[0], sar), name
        designs[name] = dict(path=path, affine=img.affine, stored_shape=list(stored.shape),
                             reoriented_affine=props["nibabel_stuff"]["reoriented_affine"],
                             axcodes="".join(nib.aff2axcodes(aff)),
                             spacing=[float(z) for z in img.header.get_zooms()],
                             reader_spacing=props["spacing"])
        exp_bbox = [[b, b + n] for b, n in zip(c["before"], c["cropped"])]
        _, _, bbox = crop_to_nonzero(data.copy(), None)
        assert [list(map(int, b)) for b in bbox] == exp_bbox, (name, bbox, exp_bbox)

    config = {"generator": "tools/gen_infer_fixtures.py", "model_dir": "fixtures/fusion/cfg_a",
              "patch_size": CFG["patch_size"], "text_embedding_dim": CFG["text_embedding_dim"],
              "bank": {"file": "bank.npz", "labels": labels.tolist(),
                       "labels_dtype": labels.dtype.str, "embeddings_dtype": str(emb16.dtype),
                       "embeddings_shape": list(emb16.shape)},
              "prompts": PROMPTS, "cases": {}}

    with official_patches(CFG):
        predictor = vx_predictor.VoxTellPredictor(model_dir=str(MODEL_DIR),
                                                  device=torch.device("cpu"),
                                                  embedding_bank=str(OUT / "bank.npz"))
    assert predictor.patch_size == CFG["patch_size"] and predictor.tile_step_size == 0.5
    assert predictor.perform_everything_on_device and not predictor.network.training
    with capture_output(printed):
        emb_all = predictor.embed_text_prompts(PROMPTS)[0]
    assert predictor.text_backbone is None
    assert torch.equal(emb_all, torch.from_numpy(emb16.astype(np.float32)))

    results = {}
    for name, c in CASES.items():
        results[name] = run_case(predictor, rw, name, c, designs[name]["path"], emb_all, printed)

    # the official file-to-file path, per prompt and combined
    jobs = [{"image": str(designs[n]["path"]), "prompts": c["prompts"]} for n, c in CASES.items()]
    written = {}
    with tempfile.TemporaryDirectory() as tmp:
        for combined in (False, True):
            od = Path(tmp) / ("combined" if combined else "single")
            with capture_output(printed):
                paths = predictor.predict_from_jobs(jobs, od, save_combined=combined)
            assert sorted(os.listdir(od)) == sorted(Path(p).name for p in paths)
            written[combined] = [Path(p) for p in paths]
            assert predictor.text_backbone is None
        for name, c in CASES.items():
            r = results[name]
            names, files = [], {}
            for i, p in enumerate(c["prompts"]):
                fname = f"{name}_{vx_predictor.VoxTellPredictor._safe_prompt_name(p)}.nii.gz"
                src = Path(tmp) / "single" / fname
                assert src in written[False], fname
                files[fname] = check_written(src, r["seg"][i], r["props"], rw)
                shutil.copyfile(src, OUT / "official" / fname)
                names.append(fname)
            combined_sar = np.zeros(r["orig_shape"], dtype=np.uint8)
            for i in range(len(c["prompts"])):
                combined_sar[r["seg"][i] > 0] = i + 1  # later prompts overwrite
            overlap = int((r["seg"].sum(0) > 1).sum())
            cname = f"{name}.nii.gz"
            src = Path(tmp) / "combined" / cname
            assert src in written[True]
            files[cname] = check_written(src, combined_sar, r["props"], rw)
            shutil.copyfile(src, OUT / "official_combined" / cname)
            r["outputs"] = names
            r["combined"] = cname
            r["files"] = files
            r["overlap"] = overlap

    for name, c in CASES.items():
        r = results[name]
        save_file(r["tensors"], str(OUT / f"{name}.safetensors"))
        d = designs[name]
        config["cases"][name] = {
            "file": f"images/{name}.nii.gz",
            "storage": {
                "dtype": c["storage"],
                "scl_slope": CT_SLOPE if c["storage"] == "int16" else None,
                "scl_inter": CT_INTER if c["storage"] == "int16" else None,
                "stored_shape": d["stored_shape"], "axcodes": d["axcodes"],
                "zooms": d["spacing"], "affine": d["affine"].tolist(),
            },
            "reoriented_affine": d["reoriented_affine"].tolist(),
            "reader_spacing": d["reader_spacing"],
            "prompts": r["prompts"],
            "safe_names": [vx_predictor.VoxTellPredictor._safe_prompt_name(p) for p in r["prompts"]],
            "orig_shape": r["orig_shape"],
            "bbox": r["bbox"],
            "cropped_shape": r["cropped"],
            "padded_shape": r["padded"],
            "pad": pad_info(r["padded"], r["revert"]),
            "steps": steps_of(r["slicers"]),
            "n_tiles": len(r["slicers"]),
            "tile_origins": tile_origins(r["slicers"]),
            "tile_out_index": r["tile_index"],
            "tile_out_origin": (tile_origins(r["slicers"])[r["tile_index"]]
                                if r["tile_index"] is not None else None),
            "logit_stats": r["stats"],
            "exact_zero_logits_max_edge_distance": zero_edge_distance(r["tensors"]["logits"]),
            "voxels_with_overlapping_masks": r["overlap"],
            "official_outputs": [f"official/{n}" for n in r["outputs"]],
            "official_combined": f"official_combined/{r['combined']}",
            "output_files": r["files"],
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                        for k, v in r["tensors"].items()},
        }

    stub_tensors, stub_info = run_stub(predictor, rw, designs[STUB_CASE]["path"], emb_all, printed)
    save_file(stub_tensors, str(OUT / "stub.safetensors"))
    stub_info["file"] = "stub.safetensors"
    config["stub"] = stub_info
    config["gaussian"] = gaussian_info(CFG["patch_size"])
    config["printed_warnings"] = warning_lines(printed)
    config["f16_add_double_rounding_differences"] = check_torch_f16_add()
    config["versions"] = versions()
    config["notes"] = notes(config)
    write_json(OUT / "config.json", config)

    # summary
    for name, cc in config["cases"].items():
        print(f"{name}: orig {cc['orig_shape']} bbox {cc['bbox']} cropped {cc['cropped_shape']} "
              f"padded {cc['padded_shape']} steps {cc['steps']} ({cc['n_tiles']} tiles)",
              file=sys.stderr)
        for p, s in zip(cc["prompts"], cc["logit_stats"]):
            print(f"  {p!r}: {s}", file=sys.stderr)
    s = config["stub"]
    print(f"stub: {s['case']} patch {s['patch_size']} padded {s['padded_shape']} steps {s['steps']} "
          f"({s['n_tiles']} tiles) {s['logit_stats']}", file=sys.stderr)
    print(f"warnings printed by the official code: {config['printed_warnings']}", file=sys.stderr)
    report_files(OUT, BUDGET_BYTES)


def check_torch_f16_add():
    """What `f16_tensor += f32_tensor` / `f16 / f16` do in torch on CPU (the accumulation rule the
    notes state): f16(f32(a) + b) and f16(f32(a) / f32(b)). Returns how many of the sums differ
    from a single rounding of the exact sum (f64 -> f16)."""
    g = torch.Generator().manual_seed(seed_for("f16-add"))
    a = (torch.randn(200_000, generator=g) * 4).half()
    b = torch.randn(200_000, generator=g) * torch.rand(200_000, generator=g) ** 8
    x = a.clone()
    x += b
    assert x.dtype == torch.float16
    ref32 = (a.numpy().astype(np.float32) + b.numpy()).astype(np.float16)
    ref64 = (a.numpy().astype(np.float64) + b.numpy().astype(np.float64)).astype(np.float16)
    assert np.array_equal(x.numpy(), ref32)
    w = (torch.rand(200_000, generator=g) * 10 + 1e-3).half()
    q = a.clone()
    torch.div(q, w, out=q)
    assert np.array_equal(q.numpy(), (a.numpy().astype(np.float32) / w.numpy().astype(np.float32))
                          .astype(np.float16))
    return int((ref32 != ref64).sum())


def notes(config):
    ct, mr, st = config["cases"]["ct_oblique"], config["cases"]["mr_small"], config["stub"]
    g32, gst = config["gaussian"], st["gaussian"]
    zeros = {n: [x["exact_zeros"] for x in c["logit_stats"]] for n, c in config["cases"].items()}
    zeros["stub"] = [x["exact_zeros"] for x in st["logit_stats"]]
    return [
        "Accumulation (voxtell 0.1.2 `_internal_predict_sliding_window_return_logits`, CPU): "
        "`predicted_logits` (N, Z'', Y'', X'') and `n_predictions` (Z'', Y'', X'') are "
        "torch.half; the network runs in float32 (autocast only on CUDA); `prediction *= "
        "gaussian` stays float32 (the f16 Gaussian is upcast); `predicted_logits[tile] += "
        "prediction` rounds once per tile as f16(f32(acc) + pred) (torch semantics checked on "
        "random data: equal to numpy float16(float32(a) + b); a single rounding of the exact sum "
        f"differs in {config['f16_add_double_rounding_differences']} of 200000 random sums, so "
        "the f32 intermediate matters); `n_predictions[tile] += gaussian` is f16 + f16; then "
        "`torch.div(predicted_logits, n_predictions, out=predicted_logits)` = f16(f32(a) / "
        "f32(b)), an inf check, and the padding slicer. `logits` in the safetensors is that f16 "
        "tensor.",
        "Gaussian: compute_gaussian(tuple(self.patch_size), sigma_scale=1/8, "
        "value_scaling_factor=10, device) (lru_cache keyed by tile size), float16, peak exactly "
        f"10 at index n//2 per axis; its zeros are replaced by the smallest non-zero f16 value: "
        f"{g32['min']} for 32^3 ({g32['voxels_at_min']} voxels at that value) and {gst['min']} "
        f"for the stub patch {gst['patch_size']} ({gst['voxels_at_min']} voxels).",
        "Exact-zero logits (f16 underflow): near the faces of the cropped volume the Gaussian "
        "weight of every covering tile is tiny (sigma = patch/8 = 4 voxels for 32^3, so "
        "~exp(-8) per axis at a tile face), |pred * g| < 2^-25 rounds to +0 in the f16 "
        "accumulator and the division gives exactly 0, which `logits > 0` maps to background "
        f"whatever the network said. Exact zeros per prompt: {zeros}; those of the real network "
        f"all lie within {ct['exact_zero_logits_max_edge_distance']} (ct_oblique) / "
        f"{mr['exact_zero_logits_max_edge_distance']} (mr_small) voxels of a face. The stub's "
        f"zeros {st['exact_zero_logit_causes']}: some are hash values that are exactly 0 "
        "(h mod 4001 = 2000) under a single covering tile, the others are underflow or an exact "
        "cancellation of two subnormal f16 terms (e.g. -6.49 * 2^-24 + 0.578 * 11 * 2^-24 "
        "rounds to 0). Logits there "
        "are f16 subnormal sums divided by subnormal weights: only a bit-exact f16 "
        "accumulation reproduces them (see logit_stats min_abs_nonzero, f16_subnormal).",
        "predict_single_image (0.1.2) thresholds `(logits > 0)` on the f16 logits (no sigmoid) "
        "and inserts the mask into zeros(uint8, (N, *orig_shape)) at the crop bbox "
        "(insert_crop_into_image); asserted equal for every case and for the stub. git HEAD uses "
        "sigmoid(logits.float()) > 0.5 instead; for these fixtures both agree on every voxel "
        "(logit_stats gt0_vs_sigmoid_disagree).",
        "pad_nd_image centres the data: below = d // 2, above = d - d // 2 (ct_oblique axis 0: "
        f"19 -> 32 = {ct['pad'][0]['below']} + 19 + {ct['pad'][0]['above']}; stub axis 0: 19 -> 20 "
        f"= {st['pad'][0]['below']} + 19 + {st['pad'][0]['above']}; mr_small all axes), value 0 "
        "(the z-scored mean); axes >= patch are not padded.",
        "Steps use numpy round (half to even): ct_oblique axis 1, length 49, patch 32: delta = "
        f"8.5 -> {ct['steps'][1]} (round-half-away would give 9); stub axis 1, 49 with patch 24: "
        f"delta 25/3 -> {st['steps'][1]}; stub axis 2, 36 with patch 16: delta 20/3 -> "
        f"{st['steps'][2]}. Tile order: axis 0 slowest, axis 2 fastest; ct_oblique tile 1 "
        f"(tile_out) has origin {ct['tile_out_origin']}.",
        "The official code reads self.patch_size for pad_nd_image, the slicers and "
        "compute_gaussian, so setting predictor.patch_size (stub: [20, 24, 16]) is enough for a "
        "non-cube tile; the network gets (1, 1, *patch) contiguous float32 clones.",
        "Crop/normalisation: crop_to_nonzero on the float32 (1, S, A, R) array; the z-score is "
        "over the whole crop box (unmasked), including the zero corner and the zero pocket that "
        "both cases have inside the box. ct_oblique is int16 with scl_slope 0.75 / scl_inter "
        "-768: its border is stored as 1024, which reads as exactly 0.0 (a stored 0 would read "
        "as -768 and nothing would be cropped).",
        "Output files (write_seg): uint8 (max < 255, also for the combined map), the original "
        "voxel order (ct_oblique stored P-L-S, shape (A, R, S) = "
        f"{ct['output_files'][ct['official_outputs'][0].split('/')[-1]]['stored_shape']}), "
        "affine = the original one (np.allclose check passes for the oblique affine, no "
        "warning), a fresh nibabel header (sform_code 2, qform_code 0), gzip by nibabel "
        "(mtime 0, compresslevel 1). Checked against the logits both through the official "
        "reader and voxel by voxel through the two affines.",
        "Combined map: label i+1 where mask i is set, later prompts overwrite earlier ones "
        f"(ct_oblique: {ct['voxels_with_overlapping_masks']} voxels, mr_small: "
        f"{mr['voxels_with_overlapping_masks']} voxels where several masks overlap).",
        "Names: `{case}_{safe}.nii.gz` keeps the prompt's case and Unicode letters "
        "(str.isalnum): 'Läsion der Leber' -> 'Läsion_der_Leber'; '(', ')', '/' and spaces "
        "become '_': 'lesion (liver)/segment 4' -> 'lesion__liver__segment_4'. The bank lookup "
        "lowercases the prompt ('Liver' -> 'liver'); the bank labels are stored lowercase.",
        "predict_from_jobs embeds the union of the prompts once (first-seen order) and, with "
        "every prompt in the bank, never loads the Qwen backbone (asserted).",
        "Printed by the official code: only tqdm progress bars on stderr (one per sliding "
        "window, plus an 'Images' bar when more than one job); no WARNING line for these "
        "inputs (printed_warnings).",
        "mr_small is a single tile (cropped < 32 on every axis), so it has no tile with index "
        "1 and no `tile_out` (a tile-0 copy would cost 4 x 128 KiB of the size budget).",
        "config.json storage.affine is the affine nibabel reads from the file (sform stored as "
        "float32).",
    ]


if __name__ == "__main__":
    main()
