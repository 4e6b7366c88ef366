#!/usr/bin/env python3
"""A DICOM SEG written by `voxtell predict --output-type dicom-seg`, drawn back onto its series
from the SEG file's own frames (docs/figures/seg_on_series.png), run by tools/seg_figure.sh.

1. `voxtell phantom` makes one default phantom (fixed seed): NIfTI CT + label map.
2. The phantom is written as two DICOM CT series (pydicom, int16 stored values with
   RescaleIntercept -1024): (a) plain axial, ImageOrientationPatient 1\\0\\0\\0\\1\\0 (rows run
   anterior to posterior); (b) the same volume with a negated column cosine, 1\\0\\0\\0\\-1\\0
   (rows stored posterior to anterior, i.e. bottom to top of the usual display; the orientation
   TotalSegmentator mirrored before 2.18.0), its file names shuffled against the slice order.
   `voxtell info` must read each back with the phantom's voxels in the right place: its affine,
   applied to voxel (column, row, slice) of the files, has to land every voxel on the NIfTI voxel
   of equal value, and its shape and intensity range must match. SimpleITK reads them too, as a
   second opinion.
3. `voxtell predict ... --output-type dicom-seg` segments each series.
4. Each SEG is read with pydicom alone: the frames are unpacked (1 bit, LSB first), mapped to
   their source instances through ReferencedSOPInstanceUID, and placed in patient space by their
   own ImagePositionPatient and the SEG's ImageOrientationPatient / PixelSpacing. Outlines are
   drawn in the colour of each segment's RecommendedDisplayCIELabValue (DICOM CIELab, D65,
   converted to sRGB) over the source instance's pixels (window 40/400): an axial slice through
   the kidneys and a coronal reformat through them (slices stacked by position along the normal)
   per series. Every SEG mask is rebuilt in the phantom's voxel grid from the frame positions, its
   Dice with the phantom's label of that structure printed, and the two series' masks must be
   the same in patient space.

Exits non-zero, with a message naming what differs, on any failed check.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PROMPTS = ["liver", "spleen", "left kidney", "right kidney", "aorta"]
INTERCEPT = -1024.0
WINDOW = (40.0, 400.0)  # centre, width (HU)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


class CheckFailed(Exception):
    """A check of the script failed; the message says what differed."""


def fail(msg: str) -> None:
    raise CheckFailed(msg)


def uid(*parts: object) -> str:
    """A deterministic 2.25. UID from the given parts."""
    return generate_uid(prefix=None, entropy_srcs=["voxtell-seg-figure", *map(str, parts)])


def run(cmd: list[str], what: str) -> str:
    print("$ " + " ".join(f'"{c}"' if " " in c else c for c in cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        fail(f"{what} failed (exit {p.returncode})")
    return p.stdout + p.stderr


# ---------------------------------------------------------------------------------------------
# 1. the phantom


def make_phantom(voxtell: str, work: Path, seed: int):
    pdir = work / "phantom"
    run([voxtell, "phantom", str(pdir), "--cases", "1", "--seed", str(seed)], "voxtell phantom")
    ds_json = sorted(pdir.glob("*/dataset.json"))
    if len(ds_json) != 1:
        fail(f"expected one dataset.json under {pdir}, found {len(ds_json)}")
    root = ds_json[0].parent
    meta = json.loads(ds_json[0].read_text())
    images = sorted((root / "imagesTr").glob("*_0000.nii.gz"))
    labels = sorted((root / "labelsTr").glob("*.nii.gz"))
    if len(images) != 1 or len(labels) != 1:
        fail(f"expected one image and one label map in {root}, found {len(images)}, {len(labels)}")
    vocab = json.loads((pdir / "vocabulary.json").read_text())
    return images[0], labels[0], meta, vocab


def label_of_prompt(prompt: str, meta: dict, vocab: dict) -> tuple[str, list[int]]:
    """The phantom's label key and values a prompt stands for, from vocabulary.json (label key ->
    its prompts; a key `a+b` is the union of labels a and b, e.g. `liver+liver_lesion`) and
    dataset.json (label name -> value)."""
    (body,) = vocab.values()
    keys = [k for k, prompts in body.items() if isinstance(prompts, list) and prompt in prompts]
    keys = [k for k in keys if all(part in meta["labels"] for part in k.split("+"))]
    if len(keys) != 1:
        fail(f"prompt {prompt!r} matches label keys {keys} in vocabulary.json, expected exactly one")
    return keys[0], [int(meta["labels"][part]) for part in keys[0].split("+")]


# ---------------------------------------------------------------------------------------------
# 2. two DICOM series


def canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """The image in RAS+ array order (i toward Right, j Anterior, k Superior), and its affine;
    refuses rotated or sheared grids (an axial series of them would not be this volume)."""
    can = nib.as_closest_canonical(img)
    aff = can.affine
    off = aff[:3, :3] - np.diag(np.diag(aff[:3, :3]))
    if np.abs(off).max() > 1e-6 or (np.diag(aff[:3, :3]) <= 0).any():
        fail(f"phantom affine is not axis-aligned after reorientation:\n{aff}")
    return np.asarray(can.dataobj), aff


def write_series(ct_ras: np.ndarray, aff: np.ndarray, out: Path, variant: str, seed: int) -> dict:
    """Writes `ct_ras` (HU, RAS+ order, affine `aff`) as an axial CT series in `out`.

    variant "a": row cosine +x (toward patient Left), column cosine +y (toward Posterior).
    variant "b": column cosine -y: row r lies r rows anterior of the most posterior one; file
    names shuffled. Returns {SOPInstanceUID: path} and the series' UIDs.
    """
    out.mkdir(parents=True)
    ni, nj, nk = ct_ras.shape
    dx, dy, dz = np.diag(aff[:3, :3])
    row_cos = LPS_FROM_RAS @ (-aff[:3, 0] / dx)  # column index c grows toward -RAS x = Left
    if variant == "a":
        col_cos = LPS_FROM_RAS @ (-aff[:3, 1] / dy)  # row r grows toward Posterior
        j0 = nj - 1
    else:
        col_cos = LPS_FROM_RAS @ (aff[:3, 1] / dy)  # row r grows toward Anterior
        j0 = 0
    study, frame_of_ref = uid("study", seed), uid("frame-of-reference", seed)
    series = uid("series", variant, seed)
    names = [f"CT{k + 1:04d}.dcm" for k in range(nk)]
    if variant == "b":
        perm = np.random.default_rng(seed).permutation(nk)
        names = [f"IMG{perm[k]:04d}.dcm" for k in range(nk)]
    files = {}
    for k in range(nk):
        hu = ct_ras[::-1, :, k] if variant == "b" else ct_ras[::-1, ::-1, k]
        pixels = np.ascontiguousarray(hu.T)  # [row, column]
        stored = np.rint(pixels - INTERCEPT)
        if stored.min() < -32768 or stored.max() > 32767:
            fail("HU values do not fit int16 with the chosen intercept")
        ipp = LPS_FROM_RAS @ (aff @ np.array([ni - 1, j0, k, 1.0]))[:3]
        sop = uid("instance", variant, seed, k)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = uid("implementation")
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "voxtell seg_figure phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "voxtell phantom"
        ds.SeriesDescription = {
            "a": "phantom axial IOP 1/0/0/0/1/0",
            "b": "phantom axial IOP 1/0/0/0/-1/0 (rows P to A)",
        }[variant]
        ds.PatientName = "Phantom^SegFigure"
        ds.PatientID = f"PHANTOM{seed}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 1 if variant == "a" else 2
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_of_ref
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.SliceLocation = f"{ipp[2]:.6f}"
        ds.SliceThickness = f"{dz:.6f}"
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]  # row spacing, column spacing
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = f"{INTERCEPT:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = f"{WINDOW[0]:g}", f"{WINDOW[1]:g}"
        ds.PixelData = stored.astype("<i2").tobytes()
        path = out / names[k]
        ds.save_as(path, enforce_file_format=True)
        files[sop] = path
    return {"files": files, "series": series, "study": study, "frame_of_reference": frame_of_ref}


def read_instances(files: dict) -> dict:
    """pydicom view of a series: per SOPInstanceUID its HU pixels [row, column] and IPP."""
    out = {}
    for sop, path in files.items():
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out[sop] = {
            "hu": hu,
            "ipp": np.array([float(v) for v in ds.ImagePositionPatient]),
            "iop": np.array([float(v) for v in ds.ImageOrientationPatient]),
            "spacing": np.array([float(v) for v in ds.PixelSpacing]),  # row, column
            "series": ds.SeriesInstanceUID,
            "for": ds.FrameOfReferenceUID,
        }
    return out


def parse_info(text: str) -> dict:
    shape = re.search(r"shape:\s+(\d+) × (\d+) × (\d+)", text)
    rng = re.search(r"intensities:\s+\[(\S+), (\S+)\]", text)
    orient = re.search(r"orientation:\s+(\S+)", text)
    rows = re.findall(r"^\s+\[\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\]\s*$", text, re.M)
    if not (shape and rng and orient and len(rows) == 3):
        fail(f"could not parse `voxtell info` output:\n{text}")
    aff = np.eye(4)
    aff[:3] = np.array(rows, dtype=float)
    return {
        "shape": tuple(int(v) for v in shape.groups()),
        "range": (float(rng.group(1)), float(rng.group(2))),
        "axcodes": orient.group(1),
        "affine": aff,
    }


def verify_series(voxtell: str, sdir: Path, inst: dict, nifti: nib.Nifti1Image, name: str) -> str:
    """`voxtell info` must place every voxel of the files on the NIfTI voxel of equal value."""
    info = parse_info(run([voxtell, "info", str(sdir)], f"voxtell info {sdir}"))
    ct = np.asarray(nifti.dataobj).astype(np.float64)
    any_inst = next(iter(inst.values()))
    rows, cols = any_inst["hu"].shape
    if info["shape"] != (cols, rows, len(inst)):
        fail(f"series {name}: voxtell info shape {info['shape']}, files hold {cols}×{rows}×{len(inst)}")
    lo, hi = float(ct.min()), float(ct.max())
    if info["range"] != (lo, hi):
        fail(f"series {name}: voxtell info intensities {info['range']}, the phantom's [{lo}, {hi}]")
    aff = info["affine"]
    # slice k of voxtell's volume: the instance at the affine's position of voxel (0, 0, k)
    by_pos = [(LPS_FROM_RAS @ v["ipp"], sop) for sop, v in inst.items()]
    vol = np.empty((cols, rows, len(inst)))
    for k in range(len(inst)):
        p = (aff @ np.array([0, 0, k, 1.0]))[:3]
        hits = [sop for ras, sop in by_pos if np.abs(ras - p).max() < 0.01]
        if len(hits) != 1:
            fail(f"series {name}: voxtell's slice {k} at RAS {p} matches {len(hits)} instances")
        vol[:, :, k] = inst[hits[0]]["hu"].T
    ijk = np.stack(np.meshgrid(*map(np.arange, vol.shape), indexing="ij"), -1).reshape(-1, 3)
    to_nifti = np.linalg.inv(nifti.affine) @ aff
    idx = ijk @ to_nifti[:3, :3].T + to_nifti[:3, 3]
    if np.abs(idx - np.rint(idx)).max() > 0.01:
        fail(f"series {name}: voxtell's voxel centres do not fall on the phantom's grid")
    idx = np.rint(idx).astype(int)
    if (idx < 0).any() or (idx >= np.array(ct.shape)).any():
        fail(f"series {name}: voxtell places voxels outside the phantom's grid")
    want = ct[idx[:, 0], idx[:, 1], idx[:, 2]]
    bad = int((want != vol.reshape(-1)).sum())
    if bad:
        fail(f"series {name}: {bad} of {want.size} voxels differ from the phantom where voxtell places them")
    return info["axcodes"]


def verify_with_simpleitk(sdir: Path, ct_ras: np.ndarray, aff_ras: np.ndarray, name: str) -> None:
    """Second opinion: SimpleITK (GDCM) reads the series to the same RAS volume."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(sdir)))
    img = sitk.DICOMOrient(reader.Execute(), "LPS")  # ITK codes name where axes come FROM: RAS+
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))[::-1, ::-1, :]
    origin_ras = LPS_FROM_RAS @ np.array(img.TransformIndexToPhysicalPoint(
        (img.GetSize()[0] - 1, img.GetSize()[1] - 1, 0)))
    if arr.shape != ct_ras.shape or (arr != ct_ras).any() or np.abs(origin_ras - aff_ras[:3, 3]).max() > 1e-3:
        fail(f"series {name}: SimpleITK reads another volume than the phantom")


# ---------------------------------------------------------------------------------------------
# 4. reading a SEG with pydicom


def dicom_lab_to_srgb(lab16) -> tuple[float, float, float]:
    """DICOM CIELab (L 0-100 and a, b -128..127 scaled to 0-65535; D65 white) to sRGB 0-1."""
    l_ = lab16[0] / 65535 * 100
    a = lab16[1] / 65535 * 255 - 128
    b = lab16[2] / 65535 * 255 - 128
    fy = (l_ + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200

    def finv(t):
        return t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)

    xyz = np.array([0.95047 * finv(fx), 1.0 * finv(fy), 1.08883 * finv(fz)])
    m = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    lin = np.clip(m @ xyz, 0, 1)
    rgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return tuple(float(v) for v in np.clip(rgb, 0, 1))


def first(seq_owner, *names):
    """Walks single-item sequences: first(ds, "A", "B") is ds.A[0].B[0]."""
    x = seq_owner
    for n in names:
        if n not in x or len(x[n].value) == 0:
            return None
        x = x[n].value[0]
    return x


def read_seg(path: Path, inst: dict, series_uid: str, name: str) -> dict:
    ds = pydicom.dcmread(path)
    if ds.SOPClassUID != SEG_STORAGE:
        fail(f"{path}: SOPClassUID {ds.SOPClassUID}, not Segmentation Storage")
    if ds.SegmentationType != "BINARY" or int(ds.BitsAllocated) != 1:
        fail(f"{path}: SegmentationType {ds.SegmentationType}, BitsAllocated {ds.BitsAllocated}")
    refs = [s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence]
    if refs != [series_uid]:
        fail(f"{path}: ReferencedSeriesSequence names {refs}, not the source series {series_uid}")
    if ds.FrameOfReferenceUID != next(iter(inst.values()))["for"]:
        fail(f"{path}: FrameOfReferenceUID differs from the source series'")
    n, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")
    if bits.size < n * rows * cols:
        fail(f"{path}: PixelData holds {bits.size} bits, {n} frames of {rows}×{cols} need more")
    frames = bits[: n * rows * cols].reshape(n, rows, cols).astype(bool)
    segments = {}
    for s in ds.SegmentSequence:
        segments[int(s.SegmentNumber)] = {
            "label": str(s.SegmentLabel),
            "rgb": dicom_lab_to_srgb([int(v) for v in s.RecommendedDisplayCIELabValue]),
            "lab": [int(v) for v in s.RecommendedDisplayCIELabValue],
        }
    shared = ds.SharedFunctionalGroupsSequence[0]
    out = []
    problems = []
    for f, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        src = first(fg, "DerivationImageSequence", "SourceImageSequence")
        pos = first(fg, "PlanePositionSequence")
        sid = first(fg, "SegmentIdentificationSequence")
        if src is None or pos is None or sid is None:
            fail(f"{path}: frame {f + 1} lacks its source, position or segment")
        ori = first(fg, "PlaneOrientationSequence") or first(shared, "PlaneOrientationSequence")
        meas = first(fg, "PixelMeasuresSequence") or first(shared, "PixelMeasuresSequence")
        sop = src.ReferencedSOPInstanceUID
        if sop not in inst:
            fail(f"{path}: frame {f + 1} references {sop}, not an instance of the series")
        ipp = np.array([float(v) for v in pos.ImagePositionPatient])
        iop = np.array([float(v) for v in ori.ImageOrientationPatient])
        spacing = np.array([float(v) for v in meas.PixelSpacing])
        seg = int(sid.ReferencedSegmentNumber)
        if seg not in segments:
            fail(f"{path}: frame {f + 1} names segment {seg}, not in SegmentSequence")
        src_i = inst[sop]
        if np.abs(ipp - src_i["ipp"]).max() > 1e-3:
            problems.append(f"frame {f + 1}: ImagePositionPatient {ipp} but its source instance lies at {src_i['ipp']}")
        if np.abs(iop - src_i["iop"]).max() > 1e-4 or np.abs(spacing - src_i["spacing"]).max() > 1e-4:
            problems.append(f"frame {f + 1}: orientation/spacing {iop}/{spacing} differ from the source's {src_i['iop']}/{src_i['spacing']}")
        out.append({"sop": sop, "ipp": ipp, "iop": iop, "spacing": spacing, "segment": seg, "mask": frames[f]})
    if problems:
        fail(f"series {name}, {path.name}: {len(problems)} frames disagree with their sources:\n  "
             + "\n  ".join(problems[:10]))
    return {"segments": segments, "frames": out, "path": path}


def mask_in_phantom_grid(seg: dict, nifti_affine: np.ndarray, shape, flip_rows: bool = False) -> dict:
    """Per segment label, the SEG's mask in the phantom's own voxel grid, placed by each frame's
    ImagePositionPatient, ImageOrientationPatient and PixelSpacing alone. `flip_rows` reads every
    frame upside down (what a row mirror in the SEG would look like)."""
    inv = np.linalg.inv(nifti_affine)
    masks = {s["label"]: np.zeros(shape, bool) for s in seg["segments"].values()}
    for fr in seg["frames"]:
        m = fr["mask"][::-1] if flip_rows else fr["mask"]
        r, c = np.nonzero(m)
        if r.size == 0:
            continue
        row_cos, col_cos = fr["iop"][:3], fr["iop"][3:]
        lps = fr["ipp"] + np.outer(c * fr["spacing"][1], row_cos) + np.outer(r * fr["spacing"][0], col_cos)
        ras = lps @ LPS_FROM_RAS.T
        idx = ras @ inv[:3, :3].T + inv[:3, 3]
        if np.abs(idx - np.rint(idx)).max() > 1e-2:
            fail(f"{seg['path'].name}: frame pixels do not fall on the phantom's voxel centres")
        idx = np.rint(idx).astype(int)
        if (idx < 0).any() or (idx >= np.array(shape)).any():
            fail(f"{seg['path'].name}: frame pixels lie outside the phantom")
        masks[seg["segments"][fr["segment"]]["label"]][idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


# ---------------------------------------------------------------------------------------------
# the figure


def display_axial(img: np.ndarray, iop: np.ndarray) -> np.ndarray:
    """Radiological display of an axial [row, column] array: patient right on the image's left
    (LPS +x to the right), anterior at the top (LPS +y downward)."""
    row_cos, col_cos = iop[:3], iop[3:]
    if abs(abs(row_cos[0]) - 1) > 1e-4 or abs(abs(col_cos[1]) - 1) > 1e-4:
        fail(f"not an axial orientation with x rows and y columns: {iop}")
    out = img
    if col_cos[1] < 0:
        out = out[::-1, :]
    if row_cos[0] < 0:
        out = out[:, ::-1]
    return out


def window(hu: np.ndarray) -> np.ndarray:
    c, w = WINDOW
    return np.clip((hu - (c - w / 2)) / w, 0, 1)


def stack(seg: dict, inst: dict):
    """Source instances and SEG frames stacked by position along the slice normal.
    Returns the HU stack [slice, row, column], per segment label a mask stack, the LPS z of each
    slice, the orientation and spacing."""
    iop = next(iter(inst.values()))["iop"]
    normal = np.cross(iop[:3], iop[3:])
    order = sorted(inst, key=lambda s: float(inst[s]["ipp"] @ normal))
    proj = np.array([inst[s]["ipp"] @ normal for s in order])
    hu = np.stack([inst[s]["hu"] for s in order])
    masks = {s["label"]: np.zeros(hu.shape, bool) for s in seg["segments"].values()}
    for fr in seg["frames"]:
        k = np.flatnonzero(np.abs(proj - fr["ipp"] @ normal) < 1e-3)
        if k.size != 1:
            fail(f"{seg['path'].name}: a frame at {fr['ipp']} matches {k.size} source slices by position")
        masks[seg["segments"][fr["segment"]]["label"]][k[0]] |= fr["mask"]
    z = np.array([inst[s]["ipp"][2] for s in order])
    return hu, masks, z, iop, next(iter(inst.values()))["spacing"], np.array([inst[s]["ipp"] for s in order])


def draw(ax, img, masks, colours, aspect, title):
    ax.imshow(window(img), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
    for label, m in masks.items():
        if m.any():
            ax.contour(m.astype(float), levels=[0.5], colors=[colours[label]], linewidths=1.3)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def figure(panels, colours, legend_labels, out: Path, suptitle: str) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(16, 6.4), dpi=100,
                             gridspec_kw={"width_ratios": [p["width"] for p in panels]})
    for ax, p in zip(axes, panels):
        draw(ax, p["img"], p["masks"], colours, p["aspect"], p["title"])
        for (x, y, t, ha, va) in p.get("marks", []):
            ax.text(x, y, t, color="yellow", fontsize=9, ha=ha, va=va, transform=ax.transAxes)
    handles = [Line2D([], [], color=colours[k], lw=3) for k in legend_labels]
    fig.legend(handles, [legend_labels[k] for k in legend_labels], loc="lower center",
               ncol=len(legend_labels), fontsize=10, frameon=False,
               title="SegmentLabel (colour from RecommendedDisplayCIELabValue) — Dice vs phantom label, series (a) / (b)")
    fig.suptitle(suptitle, fontsize=12)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.13, wspace=0.04)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    buf.seek(0)
    # a fixed palette (the segment colours exactly, the text's yellow, 240 grey levels) keeps the
    # file small and the outline colours true
    pal = [tuple(round(255 * c) for c in colours[k]) for k in colours] + [(255, 255, 0)]
    pal += [(g, g, g) for g in np.linspace(0, 255, 256 - len(pal)).round().astype(int)]
    pimg = Image.new("P", (1, 1))
    pimg.putpalette([int(v) for rgb in pal for v in rgb])
    im = Image.open(buf).convert("RGB").quantize(palette=pimg, dither=Image.Dither.NONE)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out, optimize=True)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voxtell", required=True, help="the voxtell binary")
    ap.add_argument("--work", required=True, type=Path, help="an empty working folder")
    ap.add_argument("--model", default="assets/demo/model")
    ap.add_argument("--bank", default="assets/demo/bank.npz")
    ap.add_argument("--out", default="docs/figures/seg_on_series.png", type=Path)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    work = a.work
    if work.exists() and any(work.iterdir()):
        fail(f"{work} is not empty")
    work.mkdir(parents=True, exist_ok=True)

    # 1. phantom
    image_path, label_path, meta, vocab = make_phantom(a.voxtell, work, a.seed)
    nifti = nib.load(image_path)
    lab_img = nib.load(label_path)
    labels = np.asarray(lab_img.dataobj).astype(np.int64)
    if not np.allclose(nifti.affine, lab_img.affine) or labels.shape != nifti.shape:
        fail("phantom image and label map differ in grid")
    print(f"phantom {image_path.name}: shape {nifti.shape}, orientation "
          f"{''.join(nib.aff2axcodes(nifti.affine))}, spacing {np.round(nifti.header.get_zooms(), 3)} mm")
    ct_ras, aff_ras = canonical(nifti)
    ct_ras = ct_ras.astype(np.float64)

    # 2. two series
    series = {}
    for v in "ab":
        sdir = work / f"series_{v}"
        s = write_series(ct_ras, aff_ras, sdir, v, a.seed)
        s["dir"] = sdir
        s["inst"] = read_instances(s["files"])
        s["axcodes"] = verify_series(a.voxtell, sdir, s["inst"], nifti, v)
        verify_with_simpleitk(sdir, ct_ras, aff_ras, v)
        print(f"series ({v}) {sdir}: {len(s['files'])} files, voxtell info reads {s['axcodes']}; "
              "every voxel matches the phantom where voxtell places it; SimpleITK agrees")
        series[v] = s

    # 3. predict
    for v, s in series.items():
        out = work / f"seg_{v}"
        log = run([a.voxtell, "predict", "-i", str(s["dir"]), "-m", a.model, "--embeddings", a.bank,
                   "-p", *PROMPTS, "--output-type", "dicom-seg", "-o", str(out)], f"voxtell predict ({v})")
        for line in log.strip().splitlines()[-3:]:
            print("    " + line)
        segs = sorted(out.glob("*_seg.dcm"))
        if len(segs) != 1:
            fail(f"expected one *_seg.dcm in {out}, found {[p.name for p in segs]}")
        s["seg_path"] = segs[0]

    # 4. read the SEGs
    for v, s in series.items():
        s["seg"] = read_seg(s["seg_path"], s["inst"], s["series"], v)
        s["grid"] = mask_in_phantom_grid(s["seg"], nifti.affine, nifti.shape)
        s["grid_flipped"] = mask_in_phantom_grid(s["seg"], nifti.affine, nifti.shape, flip_rows=True)
        segs = s["seg"]["segments"]
        print(f"SEG ({v}) {s['seg_path'].name}: {len(s['seg']['frames'])} frames, segments "
              + ", ".join(f"{n}={d['label']}" for n, d in sorted(segs.items())))

    la, lb = (set(series[v]["grid"]) for v in "ab")
    if la != lb:
        fail(f"the two SEGs hold different segments: {sorted(la)} vs {sorted(lb)}")
    missing = [p for p in PROMPTS if p not in la]
    # same masks in patient space
    for lbl in sorted(la):
        ma, mb = series["a"]["grid"][lbl], series["b"]["grid"][lbl]
        if (ma != mb).any():
            fail(f"segment {lbl!r}: series (a) and (b) give masks differing in {int((ma != mb).sum())} "
                 f"voxels of patient space ({int(ma.sum())} vs {int(mb.sum())} voxels)")
    print("series (a) and (b) give identical masks in patient space for every segment")

    # Dice table
    rows = []
    print()
    print(f"{'segment':<14}{'phantom label':<27}{'SEG vox':>8}{'label vox':>10}"
          f"{'Dice (a)':>10}{'Dice (b)':>10}{'rows mirrored':>15}")
    dices = {}
    for p in PROMPTS:
        key, vals = label_of_prompt(p, meta, vocab)
        val = "+".join(map(str, vals))
        ref = np.isin(labels, vals)
        if p not in la:
            print(f"{p:<14}{f'{key} ({val})':<27}{'absent':>8}{int(ref.sum()):>10}{0.0:>10.3f}{0.0:>10.3f}{'':>15}")
            dices[p] = (0.0, 0.0)
            continue
        da = dice(series["a"]["grid"][p], ref)
        db = dice(series["b"]["grid"][p], ref)
        dflip = dice(series["b"]["grid_flipped"][p], ref)
        dices[p] = (da, db)
        rows.append((p, da, db))
        print(f"{p:<14}{f'{key} ({val})':<27}{int(series['a']['grid'][p].sum()):>8}{int(ref.sum()):>10}"
              f"{da:>10.3f}{db:>10.3f}{dflip:>15.3f}")
    print("(rows mirrored: Dice of series (b)'s SEG read with every frame upside down, i.e. what a "
          "row mirror in the SEG would score)")
    print()
    if missing:
        print(f"warning: no segment for prompts {missing} (empty predictions are not written)")

    # the figure: axial slice through the kidneys, coronal through them
    kl = np.isin(labels, label_of_prompt("left kidney", meta, vocab)[1])
    kr = np.isin(labels, label_of_prompt("right kidney", meta, vocab)[1])
    kid = kl | kr
    ijk = np.argwhere(kid)
    ras = ijk @ nifti.affine[:3, :3].T + nifti.affine[:3, 3]
    lps = ras @ LPS_FROM_RAS.T
    # axial: the patient z where both kidneys are widest together
    zl = np.argwhere(kl) @ nifti.affine[2, :3] + nifti.affine[2, 3]
    zr = np.argwhere(kr) @ nifti.affine[2, :3] + nifti.affine[2, 3]
    zs = np.unique(np.round(np.concatenate([zl, zr]), 3))
    score = [min((np.abs(zl - z) < 1e-3).sum(), (np.abs(zr - z) < 1e-3).sum()) for z in zs]
    z0 = float(zs[int(np.argmax(score))])
    y0 = float(np.median(lps[:, 1]))  # LPS y of the kidneys (coronal plane)

    colours, names = {}, {}
    for sg in series["a"]["seg"]["segments"].values():
        colours[sg["label"]] = sg["rgb"]
    for sg in series["b"]["seg"]["segments"].values():
        if np.abs(np.array(colours[sg["label"]]) - sg["rgb"]).max() > 1e-6:
            fail(f"segment {sg['label']!r} has different colours in the two SEGs")
    for p in PROMPTS:
        if p in colours:
            names[p] = f"{p}  {dices[p][0]:.3f} / {dices[p][1]:.3f}"

    panels_axial, panels_cor = [], []
    for v, s in series.items():
        hu, mstack, z, iop, spacing, ipps = stack(s["seg"], s["inst"])
        k = int(np.argmin(np.abs(z - z0)))
        if abs(z[k] - z0) > 1e-2:
            fail(f"series {v}: no slice at z = {z0}")
        # the axial slice: the source instance there, the frames that reference it
        sop = [u for u, d in s["inst"].items() if abs(d["ipp"][2] - z[k]) < 1e-3][0]
        src = s["inst"][sop]
        fmasks = {lbl: np.zeros(src["hu"].shape, bool) for lbl in colours}
        nref = 0
        for fr in s["seg"]["frames"]:
            if fr["sop"] == sop:
                fmasks[s["seg"]["segments"][fr["segment"]]["label"]] |= fr["mask"]
                nref += 1
        iop_txt = "\\".join(f"{x:g}" for x in np.round(iop, 3))
        rows_dir = "A→P" if iop[4] > 0 else "P→A"
        panels_axial.append({
            "img": display_axial(src["hu"], iop),
            "masks": {lbl: display_axial(m, iop) for lbl, m in fmasks.items()},
            "aspect": spacing[0] / spacing[1],
            "width": 1.0,
            "title": f"({v}) axial, IOP {iop_txt}\nstored rows {rows_dir}; z = {z[k]:.1f} mm, "
                     f"{nref} frames → this instance",
            "marks": [(0.02, 0.98, "R", "left", "top"), (0.98, 0.98, "L", "right", "top"),
                      (0.5, 0.98, "A", "center", "top")],
        })
        # coronal: row r at LPS y0 (rows are along the column cosine), slices by position
        r = (y0 - ipps[0][1]) / (spacing[0] * iop[4])
        r = int(np.rint(r))
        order = np.argsort(-z)  # superior at the top
        cimg = hu[order, r, :]
        cmask = {lbl: m[order, r, :] for lbl, m in mstack.items()}
        if iop[0] < 0:
            cimg = cimg[:, ::-1]
            cmask = {lbl: m[:, ::-1] for lbl, m in cmask.items()}
        dz = float(np.abs(np.diff(np.sort(z))).mean())
        panels_cor.append({
            "img": cimg, "masks": cmask, "aspect": dz / spacing[1], "width": 0.9,
            "title": f"({v}) coronal reformat at y = {y0:.1f} mm (LPS)\n"
                     f"{len(z)} slices stacked by position along the normal",
            "marks": [(0.02, 0.99, "R", "left", "top"), (0.98, 0.99, "L", "right", "top"),
                      (0.5, 0.99, "S", "center", "top")],
        })
    panels = [panels_axial[0], panels_axial[1], panels_cor[0], panels_cor[1]]
    figure(panels, colours, names, a.out,
           f"voxtell predict --output-type dicom-seg on a phantom (seed {a.seed}) written as two DICOM "
           "series; outlines from each SEG's own frames (read with pydicom) over their source instances")
    size = a.out.stat().st_size
    print(f"wrote {a.out} ({size // 1024} KB)")
    if size > 300 * 1024:
        fail(f"{a.out} is {size // 1024} KB, over 300 KB")
    low = [p for p, (da, db) in dices.items() if min(da, db) < 0.5]
    if low:
        fail(f"Dice below 0.5 for {low}: a mirrored or misplaced SEG, or a failed prediction")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
