#!/usr/bin/env python3
"""Generate the NIfTI fixtures of voxtell-io from the official reader/writer.

Run from the repository root with the pinned venv (see tools/README.md):

    tools/.venv/bin/python tools/gen_io_fixtures.py

Writes fixtures/io/nifti/ (deleted and rebuilt each run; byte-deterministic):

- orient/o00..o47: one float32 volume stored under each of the 48 axis permutations x flips,
  plus obl0/obl1 with oblique affines. For each: the input `.nii.gz`, what
  nnunetv2's NibabelIOWithReorient.read_images returns (`_read.npy`, the (S, A, R) float32
  array; `_affine.npy`, the reoriented affine), and what its write_seg writes for the label map
  `(x > 0) + (x > 500)` (`_seg.nii.gz`; obl1 uses labels 0/300 to exercise uint16).
- dtypes/: every supported datatype with several scl_slope/scl_inter pairs, stored as RAS and as
  LPS (nibabel scales reoriented images with different precision), with the reader's output.
- header/: qform-only, qfac 0, negative or zero pixdims, no xform (base affine), big endian,
  4-D with t = 1, uncompressed, an extension before the data, an invalid sform code.

manifest.json lists every case with its expected outcome (`read` or an error kind).
"""
import gzip
import hashlib
import io
import itertools
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "io" / "nifti"
RW = NibabelIOWithReorient()


def gz_bytes(raw: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6, filename="") as f:
        f.write(raw)
    return buf.getvalue()


def nifti_bytes(arr, affine=None, *, dtype=None, slope=np.nan, inter=np.nan, endian="<",
                sform_code=2, qform_code=0, qform_affine=None, edit=None, extension=b""):
    """Build a single-file NIfTI-1 byte string with full control over the header fields."""
    dtype = np.dtype(dtype or arr.dtype).newbyteorder(endian)
    hdr = nib.Nifti1Header(endianness=endian)
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(arr.shape)
    if affine is not None:
        hdr.set_sform(affine, code=sform_code)
        hdr.set_qform(qform_affine if qform_affine is not None else affine, code=qform_code)
    else:
        hdr["sform_code"] = 0
        hdr["qform_code"] = 0
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = inter
    hdr["vox_offset"] = 352 + len(extension)
    if edit:
        edit(hdr)
    ext_flag = bytes([1 if extension else 0, 0, 0, 0])
    data = np.asarray(arr, dtype=dtype).tobytes(order="F")
    return hdr.binaryblock + ext_flag + extension + data


def write(path: Path, raw: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gz_bytes(raw) if path.name.endswith(".gz") else raw)


def read_official(path: Path):
    data, props = RW.read_images([str(path)])
    return data[0], props


def rel(p: Path) -> str:
    return p.relative_to(OUT).as_posix()


def save_read(case: dict, path: Path, stem: Path):
    data, props = read_official(path)
    np.save(stem.with_name(stem.name + "_read.npy"), np.ascontiguousarray(data, dtype=np.float32))
    np.save(stem.with_name(stem.name + "_affine.npy"), props["nibabel_stuff"]["reoriented_affine"])
    case["read"] = rel(stem.with_name(stem.name + "_read.npy"))
    case["affine"] = rel(stem.with_name(stem.name + "_affine.npy"))
    case["axcodes"] = "".join(nib.aff2axcodes(props["nibabel_stuff"]["original_affine"]))
    return data, props


def orient_cases(rng, cases):
    shape = (5, 6, 7)
    base = np.round(rng.normal(0, 400, size=shape), 1).astype(np.float32)
    zooms = np.array([0.7, 1.3, 2.5])
    origin = np.array([-10.5, 20.25, 3.0])
    perms = list(itertools.permutations(range(3)))
    flips = list(itertools.product([1, -1], repeat=3))
    affines = []
    for p in perms:
        for f in flips:
            a = np.eye(4)
            a[:3, :3] = 0
            for col in range(3):
                a[p[col], col] = f[col] * zooms[col]
            a[:3, 3] = origin
            affines.append(a)
    # Two oblique affines: a mild rotation that keeps the closest axes, and a strong one.
    for angle, axis in ((20.0, (1.0, 2.0, 3.0)), (50.0, (0.0, 0.3, 1.0))):
        axis = np.asarray(axis) / np.linalg.norm(axis)
        t = np.deg2rad(angle)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)
        a = np.eye(4)
        a[:3, :3] = rot @ np.diag(zooms * np.array([1, -1, 1]))
        a[:3, 3] = origin
        affines.append(a)
    for idx, a in enumerate(affines):
        name = f"o{idx:02d}" if idx < 48 else f"obl{idx - 48}"
        stem = OUT / "orient" / name
        path = stem.with_name(name + ".nii.gz")
        nib.save(nib.Nifti1Image(base, a), str(path))
        case = {"name": f"orient/{name}", "input": rel(path), "expect": "read"}
        data, props = save_read(case, path, stem)
        if name == "obl1":
            seg = np.where(data > 0, 300, 0).astype(np.uint16)
        else:
            seg = ((data > 0).astype(np.uint8) + (data > 500).astype(np.uint8))
        seg_path = stem.with_name(name + "_seg.nii.gz")
        RW.write_seg(seg, str(seg_path), props)
        case["seg"] = rel(seg_path)
        case["seg_rule"] = "x>0 -> 300" if name == "obl1" else "(x>0)+(x>500)"
        cases.append(case)


def dtype_cases(rng, cases):
    shape = (4, 3, 2)
    ras = np.diag([1.5, 1.0, 2.0, 1.0])
    ras[:3, 3] = [1, 2, 3]
    lps = np.diag([-1.5, -1.0, 2.0, 1.0])
    lps[:3, 3] = [1, 2, 3]
    dtypes = ["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64"]
    scalings = {
        "none": (np.nan, np.nan),
        "unit": (1.0, 0.0),
        "slope0": (0.0, 5.0),
        "frac": (0.1, 1.0 / 3.0),
        "big": (2.5, -1024.0),
        "infslope": (np.inf, 0.0),
        "badinter": (2.0, np.inf),
    }
    for dt in dtypes:
        info = np.iinfo(dt) if np.dtype(dt).kind in "iu" else np.finfo(dt)
        vals = rng.uniform(-3000, 3000, size=shape)
        if np.dtype(dt).kind in "iu":
            lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
            vals = np.clip(np.round(vals * (hi - lo) / 6000.0), lo, hi)
            arr = vals.astype(dt)
            arr.flat[0], arr.flat[1] = info.min, info.max
            if dt in ("int64",):
                arr.flat[2] = np.int64(2**53 + 1)
        else:
            arr = (vals * 1.0001).astype(dt)
            arr.flat[0] = np.float32(1.0e-3)
        for sname, (slope, inter) in scalings.items():
            for oname, aff in (("ras", ras), ("lps", lps)):
                if oname == "lps" and sname in ("none", "slope0", "infslope", "badinter"):
                    continue
                name = f"{dt}_{sname}_{oname}"
                stem = OUT / "dtypes" / name
                path = stem.with_name(name + ".nii.gz")
                write(path, nifti_bytes(arr, aff, slope=slope, inter=inter))
                case = {"name": f"dtypes/{name}", "input": rel(path)}
                if sname == "badinter":
                    case["expect"] = "error:BadHeader"
                    try:
                        read_official(path)
                        raise SystemExit(f"{name}: the official reader accepted an invalid intercept")
                    except Exception as e:  # noqa: BLE001 - nibabel raises HeaderDataError
                        case["official_error"] = type(e).__name__
                else:
                    case["expect"] = "read"
                    save_read(case, path, stem)
                cases.append(case)


def header_cases(rng, cases):
    shape = (4, 5, 3)
    arr = rng.normal(0, 100, size=shape).astype(np.float32)
    rot = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]])
    qaff = np.eye(4)
    qaff[:3, :3] = rot @ np.diag([0.9, 1.1, -1.7])
    qaff[:3, 3] = [5.0, -6.0, 7.5]

    def pix(index, value):
        def edit(h):
            h["pixdim"][index] = value
        return edit

    def set_field(field, value):
        def edit(h):
            h[field] = value
        return edit

    def add_ext():
        ext = nib.nifti1.Nifti1Extension("comment", b"voxtell fixture extension")
        buf = io.BytesIO()
        ext.write_to(buf, False)
        return buf.getvalue()

    variants = {
        "qform_only": dict(affine=qaff, sform_code=0, qform_code=1),
        "qform_qfac0": dict(affine=qaff, sform_code=0, qform_code=1, edit=pix(0, 0.0)),
        "qform_negpix": dict(affine=qaff, sform_code=0, qform_code=1, edit=pix(2, -1.1)),
        "base_affine": dict(affine=None, edit=None),
        "base_zero_pixdim": dict(affine=None, edit=pix(1, 0.0)),
        "base_neg_pixdim": dict(affine=None, edit=pix(3, -2.0)),
        "sform_and_qform": dict(affine=qaff, sform_code=1, qform_code=1,
                                qform_affine=np.diag([2.0, 2.0, 2.0, 1.0])),
        "bad_sform_code": dict(affine=qaff, sform_code=0, qform_code=1, edit=set_field("sform_code", 7)),
        "big_endian": dict(affine=qaff, endian=">"),
        "extension": dict(affine=qaff, extension=add_ext()),
    }
    for name, kw in variants.items():
        aff = kw.pop("affine")
        suffix = ".nii" if name == "extension" else ".nii.gz"
        stem = OUT / "header" / name
        path = stem.with_name(name + suffix)
        write(path, nifti_bytes(arr, aff, **kw))
        case = {"name": f"header/{name}", "input": rel(path), "expect": "read"}
        save_read(case, path, stem)
        cases.append(case)
    # Uncompressed, and 4-D with a trailing dimension of 1 (the official reader asserts 3-D; the
    # expected result is that of the same data stored as 3-D).
    stem = OUT / "header" / "uncompressed"
    write(stem.with_name("uncompressed.nii"), nifti_bytes(arr, qaff))
    case = {"name": "header/uncompressed", "input": "header/uncompressed.nii", "expect": "read"}
    save_read(case, stem.with_name("uncompressed.nii"), stem)
    cases.append(case)
    stem4 = OUT / "header" / "four_d_t1"
    write(stem4.with_name("four_d_t1.nii.gz"), nifti_bytes(arr[..., None], qaff))
    case = {"name": "header/four_d_t1", "input": "header/four_d_t1.nii.gz", "expect": "read",
            "read": case["read"], "affine": case["affine"], "axcodes": case["axcodes"]}
    cases.append(case)


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "orient").mkdir(parents=True)
    (OUT / "dtypes").mkdir()
    (OUT / "header").mkdir()
    rng = np.random.default_rng(20261129)
    cases = []
    orient_cases(rng, cases)
    dtype_cases(rng, cases)
    header_cases(rng, cases)
    manifest = {"generator": "tools/gen_io_fixtures.py", "cases": cases}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            digest.update(p.read_bytes())
    print(f"{len(cases)} cases, {total} bytes, sha256 {digest.hexdigest()[:16]}", file=sys.stderr)


if __name__ == "__main__":
    main()
