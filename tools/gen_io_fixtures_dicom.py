#!/usr/bin/env python3
"""Generate the DICOM test fixtures for the `voxtell-io` crate.

Run from the repository root:

    tools/.venv/bin/python tools/gen_io_fixtures_dicom.py

Everything under ``fixtures/io/dicom/`` is deleted and regenerated. The output
is deterministic (seeded RNG, UIDs derived from a constant root plus counters,
fixed dates/times, fixed implementation UID/version), so two runs produce
byte-identical files.

Layout produced:

* one sub-folder per case holding the DICOM input files. File names are chosen
  so that alphabetical order is *not* the slice order;
* for every readable case ``<case>_expected.npy`` (float32, shape
  ``(columns, rows, slices)``, C order -- the array nibabel gives for the NIfTI
  file SimpleITK writes), ``<case>_affine.npy`` (float64 4x4, RAS+, i.e.
  nibabel's ``img.affine``) and ``<case>_sitk.json`` (SimpleITK's origin,
  spacing, direction, size and sorted file list);
* the same three files for ``ct_jpegls`` too, although the Rust reader must
  reject it (``unsupported_transfer_syntax``): SimpleITK/GDCM decodes JPEG-LS;
* for ``two_series`` the same three files for each series read alone, named
  ``two_series_<last UID component>_*``;
* ``manifest.json`` describing every case.

Expected outputs are computed with SimpleITK's ImageSeriesReader (float64 output
pixel type, i.e. rescale slope/intercept applied in f64), written to a temporary
NIfTI file and read back with nibabel.

Compressed cases (``ct_j2k``, ``ct_jpeg_lossless``, ``ct_jpegls``) encode every
frame with ``imagecodecs`` and store it encapsulated (``pydicom.encaps.encapsulate``,
basic offset table present, undefined-length OB PixelData). Each frame is
decoded again with ``imagecodecs`` and must equal the stored integers exactly.
``imagecodecs.ljpeg_encode`` (liblj92) always writes predictor (selection value)
6, so ``ct_jpeg_lossless`` is labelled JPEG Lossless Process 14
(1.2.840.10008.1.2.4.57), not the SV1-only syntax 1.2.840.10008.1.2.4.70.

A short summary of how SimpleITK behaves on every case (including the ones the
Rust reader must reject) is printed to stdout; it is informational only and not
written to the fixture folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import imagecodecs
import nibabel
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "fixtures" / "io" / "dicom"

UID_ROOT = "1.2.826.0.1.3680043.8.498."
IMPLEMENTATION_CLASS_UID = UID_ROOT + "0.1"
IMPLEMENTATION_VERSION = "VOXTELL_FIXT_1"
SEED = 20240611

STUDY_DATE = "20240102"
STUDY_TIME = "101500.000000"


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


class UidFactory:
    """Deterministic UIDs: ``UID_ROOT + <kind>.<counter>``.

    kind 1 = study, 2 = series, 3 = SOP instance, 4 = frame of reference.
    Counters are global per kind, so the last UID component is unique.
    """

    def __init__(self) -> None:
        self._counters: dict[int, int] = {}

    def new(self, kind: int) -> str:
        n = self._counters.get(kind, 0) + 1
        self._counters[kind] = n
        uid = f"{UID_ROOT}{kind}.{n}"
        assert len(uid) <= 64
        return uid


def ds_str(value: float, decimals: int) -> str:
    """Format a float as a DICOM DS string (at most 16 characters)."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        raise ValueError(f"DS value too long: {text!r}")
    return text


def ds_list(values, decimals: int) -> list[str]:
    return [ds_str(float(v), decimals) for v in values]


def rotation_matrix(axis, angle_deg: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` by ``angle_deg`` degrees."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def make_pixels(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    slice_index: int,
    *,
    base: int,
    lo: int,
    hi: int,
    noise: int,
) -> np.ndarray:
    """Smooth, row/column-asymmetric pattern plus noise, distinct per slice."""
    r = np.arange(rows, dtype=np.float64)[:, None]
    c = np.arange(cols, dtype=np.float64)[None, :]
    k = float(slice_index)
    smooth = (
        base
        + 37.0 * r
        - 13.0 * c
        + 61.0 * k
        + 150.0 * np.sin(0.45 * r + 0.2 * c * c / cols + 0.9 * k)
        + 5.0 * r * c
    )
    vals = np.rint(smooth).astype(np.int64)
    vals += rng.integers(-noise, noise + 1, size=(rows, cols))
    return np.clip(vals, lo, hi)


@contextlib.contextmanager
def capture_stderr_fd():
    """Capture everything written to file descriptor 2 (ITK/GDCM warnings)."""
    sys.stderr.flush()
    saved = os.dup(2)
    tmp = tempfile.TemporaryFile(mode="w+b")
    os.dup2(tmp.fileno(), 2)
    box: dict[str, str] = {"text": ""}
    try:
        yield box
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        box["text"] = tmp.read().decode("utf-8", "replace")
        tmp.close()


# --------------------------------------------------------------------------
# DICOM writing
# --------------------------------------------------------------------------


class SeriesSpec:
    """Description of one series to write."""

    def __init__(
        self,
        *,
        modality: str,
        transfer_syntax: str,
        rows: int,
        cols: int,
        positions: list[np.ndarray],
        orientation: list[str],
        pixel_spacing: list[str],
        slice_thickness: str,
        signed: bool,
        bits_stored: int,
        rescale_slope: str,
        rescale_intercept: str,
        pixels: list[np.ndarray],
        file_names: list[str],
        series_number: int,
        series_description: str,
        orientation_override: dict[int, list[str]] | None = None,
    ) -> None:
        self.modality = modality
        self.transfer_syntax = transfer_syntax
        self.rows = rows
        self.cols = cols
        self.positions = positions
        self.orientation = orientation
        self.pixel_spacing = pixel_spacing
        self.slice_thickness = slice_thickness
        self.signed = signed
        self.bits_stored = bits_stored
        self.rescale_slope = rescale_slope
        self.rescale_intercept = rescale_intercept
        self.pixels = pixels
        self.file_names = file_names
        self.series_number = series_number
        self.series_description = series_description
        self.orientation_override = orientation_override or {}


def _jpeg_segment(stream: bytes, marker: bytes) -> bytes:
    """Payload (length field included) of the first JPEG segment ``marker``."""
    i = stream.find(marker)
    assert i >= 0, marker
    length = int.from_bytes(stream[i + 2 : i + 4], "big")
    return stream[i + 2 : i + 2 + length]


def encode_j2k(arr: np.ndarray, bits_stored: int) -> bytes:
    out = bytes(
        imagecodecs.jpeg2k_encode(
            arr,
            level=0,
            codecformat="j2k",
            reversible=True,
            bitspersample=bits_stored,
        )
    )
    assert out[:4] == b"\xff\x4f\xff\x51"  # SOC + SIZ: raw codestream
    back = imagecodecs.jpeg2k_decode(out)
    assert np.array_equal(back, arr), "JPEG 2000 encoding is not lossless"
    return out


def encode_ljpeg(arr: np.ndarray, bits_stored: int) -> bytes:
    out = bytes(imagecodecs.ljpeg_encode(arr, bitspersample=bits_stored))
    sof3 = _jpeg_segment(out, b"\xff\xc3")
    assert sof3[2] == bits_stored, sof3.hex()
    back = imagecodecs.ljpeg_decode(out)
    assert np.array_equal(back, arr), "lossless JPEG encoding is not lossless"
    return out


def encode_jpegls(arr: np.ndarray, bits_stored: int) -> bytes:
    del bits_stored  # charls (via imagecodecs) always writes P = 16 for uint16
    out = bytes(imagecodecs.jpegls_encode(arr, level=0))
    _jpeg_segment(out, b"\xff\xf7")  # SOF55 present
    back = imagecodecs.jpegls_decode(out)
    assert np.array_equal(back, arr), "JPEG-LS encoding is not lossless"
    return out


def ljpeg_predictor(stream: bytes) -> int:
    """Selection value (Ss) of the first SOS segment of a lossless JPEG."""
    sos = _jpeg_segment(stream, b"\xff\xda")
    ns = sos[2]
    return sos[3 + 2 * ns]


ENCAPSULATED_ENCODERS = {
    JPEG2000Lossless: encode_j2k,
    JPEGLossless: encode_ljpeg,
    JPEGLosslessSV1: encode_ljpeg,
    JPEGLSLossless: encode_jpegls,
}


def write_series(
    folder: Path,
    spec: SeriesSpec,
    uids: UidFactory,
    study_uid: str,
    frame_uid: str,
) -> dict:
    """Write all slices of ``spec`` into ``folder``; return series info."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = uids.new(2)
    sop_class = CTImageStorage if spec.modality == "CT" else MRImageStorage
    n = len(spec.positions)
    assert len(spec.pixels) == n and len(spec.file_names) == n
    written = []
    for idx in range(n):
        sop_uid = uids.new(3)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        # Always start uncompressed; RLE is applied by Dataset.compress below.
        meta.TransferSyntaxUID = (
            ExplicitVRLittleEndian
            if spec.transfer_syntax == RLELossless
            else spec.transfer_syntax
        )
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = STUDY_DATE
        ds.SeriesDate = STUDY_DATE
        ds.ContentDate = STUDY_DATE
        ds.StudyTime = STUDY_TIME
        ds.SeriesTime = STUDY_TIME
        ds.ContentTime = STUDY_TIME
        ds.AccessionNumber = "VTX0001"
        ds.Modality = spec.modality
        ds.Manufacturer = "VoxTell fixtures"
        ds.SeriesDescription = spec.series_description
        ds.PatientName = "Fixture^Phantom"
        ds.PatientID = "VOXTELL-0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.SliceThickness = spec.slice_thickness
        if spec.modality == "MR":
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "NONE"
            ds.MagneticFieldStrength = "3"
        else:
            ds.KVP = "120"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = spec.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = idx + 1
        pos = spec.positions[idx]
        ds.ImagePositionPatient = ds_list(pos, 10)
        ds.ImageOrientationPatient = spec.orientation_override.get(
            idx, spec.orientation
        )
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.cols
        ds.PixelSpacing = spec.pixel_spacing
        ds.BitsAllocated = 16
        ds.BitsStored = spec.bits_stored
        ds.HighBit = spec.bits_stored - 1
        ds.PixelRepresentation = 1 if spec.signed else 0
        ds.RescaleIntercept = spec.rescale_intercept
        ds.RescaleSlope = spec.rescale_slope
        ds.RescaleType = "HU" if spec.modality == "CT" else "US"

        px = spec.pixels[idx]
        assert px.shape == (spec.rows, spec.cols)
        dtype = "<i2" if spec.signed else "<u2"
        arr = px.astype(dtype)
        assert np.array_equal(arr.astype(np.int64), px)
        encoder = ENCAPSULATED_ENCODERS.get(spec.transfer_syntax)
        frame = None
        if encoder is None:
            ds.PixelData = arr.tobytes()
        else:
            frame = encoder(arr, spec.bits_stored)
            if spec.transfer_syntax == JPEGLosslessSV1:
                assert ljpeg_predictor(frame) == 1, "SV1 syntax needs predictor 1"
            ds.LossyImageCompression = "00"
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True

        if spec.transfer_syntax == RLELossless:
            ds.compress(RLELossless, generate_instance_uid=False)
            assert ds.SOPInstanceUID == sop_uid
            assert ds.file_meta.TransferSyntaxUID == RLELossless

        path = folder / spec.file_names[idx]
        ds.save_as(path, enforce_file_format=True)

        # Round-trip check with pydicom (decodes RLE / inflates deflate).
        back = pydicom.dcmread(path)
        assert back.file_meta.TransferSyntaxUID == spec.transfer_syntax
        assert back.file_meta.MediaStorageSOPInstanceUID == sop_uid
        if encoder is None:
            assert np.array_equal(back.pixel_array.astype(np.int64), px), path
        else:
            assert back["PixelData"].is_undefined_length
            frames = list(generate_frames(back.PixelData, number_of_frames=1))
            assert len(frames) == 1
            # encapsulate() pads odd-length frames with one zero byte.
            assert frames[0].rstrip(b"\x00") == frame.rstrip(b"\x00"), path
            # Decode with pydicom where this environment has a decoder for
            # the syntax (JPEG 2000 via Pillow); otherwise imagecodecs.
            decoder = pydicom.pixels.get_decoder(spec.transfer_syntax)
            if decoder.is_available:
                got = back.pixel_array
            else:
                decode = {
                    JPEG2000Lossless: imagecodecs.jpeg2k_decode,
                    JPEGLossless: imagecodecs.ljpeg_decode,
                    JPEGLosslessSV1: imagecodecs.ljpeg_decode,
                    JPEGLSLossless: imagecodecs.jpegls_decode,
                }[spec.transfer_syntax]
                got = decode(frames[0])
            assert np.array_equal(np.asarray(got).astype(np.int64), px), path
        written.append(
            {"file": spec.file_names[idx], "sop_uid": sop_uid, "pixels": px}
        )
    return {"series_uid": series_uid, "slices": written}


# --------------------------------------------------------------------------
# Case definitions
# --------------------------------------------------------------------------

AXIAL = ["1", "0", "0", "0", "1", "0"]
SAGITTAL = ["0", "1", "0", "0", "0", "-1"]
CORONAL = ["1", "0", "0", "0", "0", "-1"]


def cosines(orientation: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vals = np.array([float(v) for v in orientation], dtype=np.float64)
    row, col = vals[:3], vals[3:]
    normal = np.cross(row, col)
    normal = normal / np.linalg.norm(normal)
    return row, col, normal


def stack_positions(origin, step_vector, count: int) -> list[np.ndarray]:
    origin = np.asarray(origin, dtype=np.float64)
    step_vector = np.asarray(step_vector, dtype=np.float64)
    return [origin + k * step_vector for k in range(count)]


def shuffled_names(rng: np.random.Generator, count: int, start: int = 1) -> list[str]:
    """``IM%04d.dcm`` names assigned to slices in a shuffled order.

    Re-draws until the alphabetical order differs from the slice order both
    forwards and backwards.
    """
    numbers = [start + 3 * i for i in range(count)]
    while True:
        perm = rng.permutation(count)
        if list(perm) != list(range(count)) and list(perm) != list(
            range(count - 1, -1, -1)
        ):
            break
    return [f"IM{numbers[p]:04d}.dcm" for p in perm]


def hex_names(rng: np.random.Generator, count: int) -> list[str]:
    """Random hexadecimal names (alphabetical order is effectively random)."""
    names: list[str] = []
    while len(names) < count:
        name = "".join(f"{b:02x}" for b in rng.integers(0, 256, size=6)) + ".dcm"
        if name not in names:
            names.append(name)
    if sorted(names) == names or sorted(names) == names[::-1]:
        names = names[1:] + names[:1]
    return names


def ct_pixels(rng, rows, cols, count, offset=0):
    return [
        make_pixels(rng, rows, cols, k + offset, base=1100, lo=0, hi=4095, noise=20)
        for k in range(count)
    ]


def ct_spec(
    *,
    positions: list[np.ndarray],
    pixels: list[np.ndarray],
    file_names: list[str],
    series_number: int,
    series_description: str,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rows: int = 12,
    cols: int = 10,
    orientation: list[str] = AXIAL,
    pixel_spacing: list[str] | None = None,
    slice_thickness: str = "2.5",
    orientation_override: dict[int, list[str]] | None = None,
) -> SeriesSpec:
    """CT series spec with the shared defaults (unsigned 12-bit, HU rescale).

    ``pixels`` and ``file_names`` are evaluated by the caller, so the order of
    RNG draws stays visible (and fixed) at the call site: pixels first.
    """
    return SeriesSpec(
        modality="CT",
        transfer_syntax=transfer_syntax,
        rows=rows,
        cols=cols,
        positions=positions,
        orientation=orientation,
        orientation_override=orientation_override,
        pixel_spacing=["0.8", "0.7"] if pixel_spacing is None else pixel_spacing,
        slice_thickness=slice_thickness,
        signed=False,
        bits_stored=12,
        rescale_slope="1",
        rescale_intercept="-1024",
        pixels=pixels,
        file_names=file_names,
        series_number=series_number,
        series_description=series_description,
    )


def build_cases(rng: np.random.Generator) -> list[dict]:
    """Return the list of case descriptions (specs not yet written)."""
    cases: list[dict] = []

    def case(name, readable, expect_error, *series, **extra):
        """A case description: its name, whether a reader must read it (else the error it must
        report), extra keys (`garbage_file`, `reference`) and its series specs."""
        return {"name": name, "readable": readable, "expect_error": expect_error, **extra,
                "series": list(series)}

    def ct_case(name, origin, step, count, offset, series_number, description, *,
                transfer_syntax=ExplicitVRLittleEndian, orientation=AXIAL, names=shuffled_names,
                readable=True, expect_error=None, **extra):
        """A case of one 12x10 CT series of `count` slices from `origin`, `step` mm apart along
        the normal of `orientation` (slice thickness |step|); pixels drawn before names."""
        _, _, normal = cosines(orientation)
        spec = ct_spec(
            transfer_syntax=transfer_syntax,
            positions=stack_positions(origin, step * normal, count),
            orientation=orientation,
            slice_thickness=ds_str(abs(step), 6),
            pixels=ct_pixels(rng, 12, 10, count, offset=offset),
            file_names=names(rng, count),
            series_number=series_number,
            series_description=description,
        )
        return case(name, readable, expect_error, spec, **extra)

    # 1. ct_axial --------------------------------------------------------
    cases.append(ct_case("ct_axial", [-4.2, -3.85, -120.0], 2.5, 7, 0, 2, "CT axial explicit VR"))

    # 2. mr_oblique ------------------------------------------------------
    rows, cols, count = 12, 10, 6
    rot = rotation_matrix([1.0, 2.0, 3.0], 20.0)
    row_dir = rot @ np.array([1.0, 0.0, 0.0])
    col_dir = rot @ np.array([0.0, 1.0, 0.0])
    oblique = ds_list(row_dir, 10) + ds_list(col_dir, 10)
    _, _, normal = cosines(oblique)
    positions = stack_positions([-60.5, -70.25, 30.125], 1.5 * normal, count)
    names_by_position = [f"IM{count - k:04d}.dcm" for k in range(count)]  # reversed
    cases.append(case(
        "mr_oblique", True, None,
        SeriesSpec(
            modality="MR",
            transfer_syntax=ImplicitVRLittleEndian,
            rows=rows,
            cols=cols,
            positions=positions,
            orientation=oblique,
            pixel_spacing=["1.25", "1.1"],
            slice_thickness="1.5",
            signed=True,
            bits_stored=16,
            rescale_slope="0.5",
            rescale_intercept="3.25",
            pixels=[
                make_pixels(
                    rng, rows, cols, k, base=-300, lo=-32768, hi=32767, noise=25
                )
                for k in range(count)
            ],
            file_names=names_by_position,
            series_number=3,
            series_description="MR oblique implicit VR",
        ),
    ))

    # 3. ct_rle (sagittal) ----------------------------------------------
    cases.append(ct_case("ct_rle", [15.0, -40.6, 55.3], 2.5, 6, 1, 4, "CT sagittal RLE",
                         transfer_syntax=RLELossless, orientation=SAGITTAL, names=hex_names))

    # 4. ct_deflate (coronal; positions step *against* the normal) --------
    cases.append(ct_case("ct_deflate", [-3.5, 20.0, 44.0], -2.5, 6, 2, 5, "CT coronal deflated",
                         transfer_syntax=DeflatedExplicitVRLittleEndian, orientation=CORONAL))

    # 5. two_series ------------------------------------------------------
    _, _, normal = cosines(AXIAL)
    names = shuffled_names(rng, 6)
    cases.append(case(
        "two_series", False, "multiple_series",
        ct_spec(
            positions=stack_positions([0.0, 0.0, -10.0], 2.5 * normal, 3),
            pixels=ct_pixels(rng, 12, 10, 3),
            file_names=[names[0], names[2], names[4]],
            series_number=6,
            series_description="two_series A",
        ),
        ct_spec(
            rows=8,
            cols=9,
            positions=stack_positions([5.0, 6.0, -12.0], 3.0 * normal, 3),
            pixel_spacing=["1.0", "0.9"],
            slice_thickness="3",
            pixels=ct_pixels(rng, 8, 9, 3, offset=5),
            file_names=[names[1], names[3], names[5]],
            series_number=7,
            series_description="two_series B",
        ),
    ))

    # 6. missing_slice (7 planned, the middle one removed) ----------------
    rows, cols, count = 12, 10, 7
    positions = stack_positions([1.0, 2.0, -30.0], 2.5 * normal, count)
    pixels = ct_pixels(rng, rows, cols, count)
    names = shuffled_names(rng, count)
    drop = count // 2
    keep = [k for k in range(count) if k != drop]
    cases.append(case(
        "missing_slice", False, "uneven_spacing",
        ct_spec(
            positions=[positions[k] for k in keep],
            pixels=[pixels[k] for k in keep],
            file_names=[names[k] for k in keep],
            series_number=8,
            series_description="missing slice",
        ),
    ))

    # 7. not_dicom (valid 4-slice series + one garbage IM9999.dcm) --------
    rows, cols, count = 12, 10, 4
    cases.append(case(
        "not_dicom", False, "not_dicom",
        ct_spec(
            positions=stack_positions([0.0, 0.0, 0.0], 2.5 * normal, count),
            pixels=ct_pixels(rng, rows, cols, count),
            file_names=shuffled_names(rng, count),
            series_number=9,
            series_description="not dicom",
        ),
        garbage_file="IM9999.dcm",
    ))

    # 9. mixed_orientation (slice index 2 tilted by ~15 deg about x) ------
    rows, cols, count = 12, 10, 4
    tilt = rotation_matrix([1.0, 0.0, 0.0], 15.0)
    tilted = ds_list(tilt @ np.array([1.0, 0.0, 0.0]), 10) + ds_list(
        tilt @ np.array([0.0, 1.0, 0.0]), 10
    )
    cases.append(case(
        "mixed_orientation", False, "inconsistent_orientation",
        ct_spec(
            positions=stack_positions([0.0, 0.0, 10.0], 2.5 * normal, count),
            orientation_override={2: tilted},
            pixels=ct_pixels(rng, rows, cols, count),
            file_names=shuffled_names(rng, count),
            series_number=10,
            series_description="mixed orientation",
        ),
    ))
    # 10-12. compressed (encapsulated) CT series -------------------------
    # Each with `reference`: the SimpleITK reference is written even for the unreadable case.

    # ct_j2k: axial plane rotated 30 deg in-plane (about z).
    rot = rotation_matrix([0.0, 0.0, 1.0], 30.0)
    axial_rot = ds_list(rot @ np.array([1.0, 0.0, 0.0]), 10) + ds_list(
        rot @ np.array([0.0, 1.0, 0.0]), 10
    )
    cases.append(ct_case("ct_j2k", [-10.5, 7.25, -80.0], 2.0, 5, 3, 11, "CT JPEG 2000 lossless",
                         transfer_syntax=JPEG2000Lossless, orientation=axial_rot, reference=True))
    # ct_jpeg_lossless: coronal tilted 25 deg about x, stepping against the normal.
    rot = rotation_matrix([1.0, 0.0, 0.0], 25.0)
    coronal_tilt = ds_list(rot @ np.array([1.0, 0.0, 0.0]), 10) + ds_list(
        rot @ np.array([0.0, 0.0, -1.0]), 10
    )
    cases.append(ct_case("ct_jpeg_lossless", [12.0, -33.5, 18.75], -3.0, 6, 4, 12, "CT JPEG lossless P14",
                         transfer_syntax=JPEGLossless, orientation=coronal_tilt, reference=True))
    # ct_jpegls: sagittal.
    cases.append(ct_case("ct_jpegls", [-22.0, 5.5, 40.0], 2.5, 5, 5, 13, "CT JPEG-LS lossless",
                         transfer_syntax=JPEGLSLossless, orientation=SAGITTAL, readable=False,
                         expect_error="unsupported_transfer_syntax", reference=True))
    return cases


# --------------------------------------------------------------------------
# SimpleITK reference
# --------------------------------------------------------------------------


def sitk_reference(folder: Path, series_id: str, tmp_dir: Path, tag: str):
    """Read a series exactly like the reference recipe; return arrays + info."""
    reader = sitk.ImageSeriesReader()
    if series_id:
        files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    else:
        files = reader.GetGDCMSeriesFileNames(str(folder))
    files = list(files)
    if not files:
        raise RuntimeError(f"SimpleITK found no series in {folder} ({series_id!r})")
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat64)
    img = reader.Execute()

    nii_path = tmp_dir / f"{tag}.nii"
    sitk.WriteImage(img, str(nii_path))
    nii = nibabel.load(str(nii_path))
    data64 = np.asarray(nii.dataobj)
    assert data64.dtype == np.float64, data64.dtype
    data32 = np.ascontiguousarray(data64.astype(np.float32))
    # float32 copy must equal the float64 data cast to f32 (and, for these
    # fixtures, represent it exactly).
    assert np.array_equal(data32, data64.astype(np.float32))
    assert np.array_equal(data32.astype(np.float64), data64)
    affine = np.ascontiguousarray(np.asarray(nii.affine, dtype=np.float64))

    header = nii.header
    info = {
        "series_id": series_id,
        "origin": list(img.GetOrigin()),
        "spacing": list(img.GetSpacing()),
        "direction": list(img.GetDirection()),
        "size": list(img.GetSize()),
        "files": [os.path.basename(f) for f in files],
        "nifti_qform_code": int(header["qform_code"]),
        "nifti_sform_code": int(header["sform_code"]),
    }
    return data32, data64, affine, info


def check_against_stored(
    data64: np.ndarray, info: dict, series_by_file: dict, slope: float, intercept: float
) -> None:
    """Slice k of the reference must be stored pixels of files[k], rescaled."""
    assert data64.shape == (info["size"][0], info["size"][1], info["size"][2])
    for k, fname in enumerate(info["files"]):
        stored = series_by_file[fname].astype(np.float64)  # (rows, cols)
        expected = stored * slope + intercept
        assert np.array_equal(data64[:, :, k], expected.T), (fname, k)


def save_reference(prefix: str, data32, affine, info) -> dict:
    np.save(OUT_DIR / f"{prefix}_expected.npy", data32, allow_pickle=False)
    np.save(OUT_DIR / f"{prefix}_affine.npy", affine, allow_pickle=False)
    with open(OUT_DIR / f"{prefix}_sitk.json", "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return {
        "expected": f"{prefix}_expected.npy",
        "affine": f"{prefix}_affine.npy",
        "sitk": f"{prefix}_sitk.json",
    }


# --------------------------------------------------------------------------
# Informational probe of SimpleITK behaviour (stdout only)
# --------------------------------------------------------------------------


def probe(folder: Path, series_id: str = "") -> dict:
    result: dict = {"folder": folder.name, "series_id": series_id}
    with capture_stderr_fd() as box:
        try:
            reader = sitk.ImageSeriesReader()
            result["series_ids"] = list(reader.GetGDCMSeriesIDs(str(folder)))
            files = list(reader.GetGDCMSeriesFileNames(str(folder), series_id))
            result["files"] = [os.path.basename(f) for f in files]
            reader.SetFileNames(files)
            reader.SetOutputPixelType(sitk.sitkFloat64)
            img = reader.Execute()
            result["size"] = list(img.GetSize())
            result["spacing"] = [round(v, 6) for v in img.GetSpacing()]
            result["origin"] = [round(v, 6) for v in img.GetOrigin()]
            result["direction"] = [round(v, 6) for v in img.GetDirection()]
            result["meta_keys"] = [
                k for k in img.GetMetaDataKeys() if k.startswith("ITK_")
            ]
            for key in result["meta_keys"]:
                result[key] = img.GetMetaData(key)
        except Exception as exc:  # noqa: BLE001 - informational only
            result["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    text = box["text"].strip()
    if text:
        result["stderr"] = " | ".join(
            line.strip() for line in text.splitlines() if line.strip()
        )[:600]
    return result


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main() -> int:
    rng = np.random.default_rng(SEED)
    uids = UidFactory()

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)

    study_uid = uids.new(1)
    cases = build_cases(rng)
    manifest_cases = []

    with tempfile.TemporaryDirectory(prefix="voxtell_dicom_fix_") as tmp:
        tmp_dir = Path(tmp)
        for case in cases:
            name = case["name"]
            folder = OUT_DIR / name
            frame_uid = uids.new(4)
            written = [
                write_series(folder, spec, uids, study_uid, frame_uid)
                for spec in case["series"]
            ]
            if "garbage_file" in case:
                garbage = (
                    b"VoxTell fixture notes\n"
                    b"This file is deliberately NOT a DICOM file, despite its name.\n"
                    b"A reader asked to load this folder must report an error.\n"
                )
                (folder / case["garbage_file"]).write_bytes(garbage)

            entry: dict = {
                "name": name,
                "folder": name,
                "readable": case["readable"],
                "expect_error": case["expect_error"],
                "num_files": len(sorted(p for p in folder.iterdir() if p.is_file())),
                "series_uids": [w["series_uid"] for w in written],
                "transfer_syntax": case["series"][0].transfer_syntax,
                "modality": case["series"][0].modality,
            }

            def reference_for(series_idx: int, series_id: str, prefix: str) -> dict:
                spec = case["series"][series_idx]
                by_file = {
                    s["file"]: s["pixels"] for s in written[series_idx]["slices"]
                }
                data32, data64, affine, info = sitk_reference(
                    folder, series_id, tmp_dir, prefix
                )
                check_against_stored(
                    data64,
                    info,
                    by_file,
                    float(spec.rescale_slope),
                    float(spec.rescale_intercept),
                )
                assert sorted(info["files"]) == sorted(by_file), info["files"]
                return {**save_reference(prefix, data32, affine, info), "shape": list(data32.shape)}

            if case["readable"] or case.get("reference"):
                entry.update(reference_for(0, "", name))
                if name == "ct_axial" or case.get("reference"):
                    # Values must be the stored integers - 1024, slice by slice.
                    data = np.load(OUT_DIR / f"{name}_expected.npy")
                    info = json.loads((OUT_DIR / f"{name}_sitk.json").read_text())
                    by_file = {s["file"]: s["pixels"] for s in written[0]["slices"]}
                    for k, fname in enumerate(info["files"]):
                        want = (by_file[fname].astype(np.int64) - 1024).T
                        assert np.array_equal(data[:, :, k], want.astype(np.float32))
            if name == "two_series":
                subs = []
                for idx, w in enumerate(written):
                    uid = w["series_uid"]
                    suffix = uid.rsplit(".", 1)[1]
                    prefix = f"two_series_{suffix}"
                    sub = reference_for(idx, uid, prefix)
                    subs.append(
                        {
                            "series_uid": uid,
                            "uid_suffix": suffix,
                            "readable": True,
                            "num_files": len(w["slices"]),
                            **sub,
                        }
                    )
                entry["sub_cases"] = subs
            manifest_cases.append(entry)

    manifest = {
        "generator": "tools/gen_io_fixtures_dicom.py",
        "pydicom": pydicom.__version__,
        "simpleitk": sitk.Version.VersionString(),
        "nibabel": nibabel.__version__,
        "notes": (
            "expected.npy: float32, shape (columns, rows, slices), C order, "
            "SimpleITK ImageSeriesReader (float64, rescale applied) -> NIfTI -> "
            "nibabel dataobj. affine.npy: nibabel affine (RAS+, float64; the "
            "NIfTI sform is stored as float32 so values carry f32 rounding). "
            "sitk.json: SimpleITK origin/spacing/direction (LPS, double precision), "
            "size and GetGDCMSeriesFileNames order."
        ),
        "cases": manifest_cases,
    }
    with open(OUT_DIR / "manifest.json", "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")

    # Informational probe (stdout only).
    print("SimpleITK behaviour probe:")
    for entry in manifest_cases:
        print(json.dumps(probe(OUT_DIR / entry["name"]), sort_keys=True))
        if entry["name"] == "two_series":
            for uid in entry["series_uids"]:
                print(json.dumps(probe(OUT_DIR / entry["name"], uid), sort_keys=True))
    print(f"wrote fixtures to {OUT_DIR.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
