#!/usr/bin/env python3
"""Generate the highdicom cross-check fixtures of the DICOM SEG writer (issue 23).

Run from the repository root (venv: see tools/README.md, "highdicom cross-check"):

    tools/.venv-highdicom/bin/python tools/gen_seg_fixtures.py

Everything under ``fixtures/io/dicom_seg/`` is deleted and regenerated. For each
entry of ``SERIES`` (ct_axial, mr_oblique, ct_rle, ct_deflate and ct_rich with two
overlapping segments; ct_axial_one and ct_axial_gap with one):

* the masks, computed from the source pixels: the stored values rescaled (``value *
  RescaleSlope + RescaleIntercept`` in float64), segment 1 above the volume's median,
  segment 2 above its 90th percentile (``sorted[n // 2]`` and ``sorted[n * 9 // 10]``);
  segment 1 is cleared on the last slice and segment 2 on the first, so both writers must
  omit an empty frame ("gap": segment 1 alone, also cleared on the first and the middle
  slice). Slices are in the order of their position along the plane normal, ascending.
  ``<series>.masks.npy``: uint8, shape (segments, slices, rows, columns), slice ``k`` being
  the instance ``sop_instance_uids[k]`` of the manifest;
* the SEG that highdicom 0.28.2 writes for those masks over the same source images
  (``highdicom.seg.Segmentation``, BINARY, the labels, codes, colours and algorithm
  identification of the manifest, the options our writer gets; SegmentDescription
  (0062,0006) set to the label as ours). Its data set without PixelData as DICOM JSON
  (``Dataset.to_json_dict()``): ``<series>.highdicom.json``; its file meta group:
  ``<series>.highdicom_meta.json``;
* ``sources/ct_rich/``: ct_axial with more Patient and Study attributes (StudyDescription,
  IssuerOfPatientID, PatientAge/Size/Weight, a Latin-1 PatientName in ISO_IR 100) and new
  UIDs, the source of ct_rich;
* ``manifest.json``: per series the source folder, the mask variant, the instance order of
  the masks, each segment's description, the frame count, and the writer options and
  package versions.

highdicom's own choices that vary between runs are pinned so that two runs give
identical files: the SEG's Series/SOP Instance UIDs and DimensionOrganizationUID come
from a constant root, and every date/time it takes from the clock (also
ContributionDateTime in ContributingEquipmentSequence) is a constant (those attributes
are intended differences in the Rust test anyway). No random numbers are drawn.

The generator reads each SEG back with ``highdicom.seg.segread`` and checks that its
arrays equal the masks, and that the fixtures stay under 400 kB.

``build_highdicom_seg`` is also used by ``tools/seg_highdicom_check.py``.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "fixtures" / "io" / "dicom_seg"

HIGHDICOM_VERSION = "0.28.2"

# UIDs of the highdicom SEGs: a root of the fixture generators' own, kind 60.
UID_ROOT = "1.2.826.0.1.3680043.8.498.60."
# Clock-given dates and times of highdicom, pinned.
FIXED_DATE = "20250101"
FIXED_TIME = "120000"

# The options our writer gets (voxtell_io::dicom_seg::SegOptions) and their highdicom
# counterparts.
OPTIONS = {
    "algorithm_name": "VoxTell",
    "algorithm_version": "0.1.0",
    "manufacturer": "voxtell-rs",
    "series_number": 100,
    "series_description": "VoxTell segmentation",
}
# What our writer writes whatever the options: given to highdicom too.
CONTENT_LABEL = "VOXTELL"
CONTENT_DESCRIPTION = "Text-prompted segmentation"
DEVICE_SERIAL_NUMBER = "1"

ANATOMICAL_STRUCTURE = {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}
LIVER = {"value": "10200004", "scheme": "SCT", "meaning": "Liver"}
ABNORMAL = {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Abnormal Structure"}
LESION = {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}

ASCII_SEGMENTS = [
    {"text": "liver", "category": ANATOMICAL_STRUCTURE, "property": LIVER, "rgb": [221, 130, 101]},
    {"text": "liver lesion", "category": ABNORMAL, "property": LESION, "rgb": [255, 255, 0]},
]
# A non-ASCII label: both writers get UTF-8 (highdicom is told ISO_IR 192; by default it
# copies the source's ISO_IR 100, which cannot encode Greek).
GREEK_SEGMENTS = [
    {"text": "liver", "category": ANATOMICAL_STRUCTURE, "property": LIVER, "rgb": [200, 80, 60]},
    {"text": "ηπατική βλάβη", "category": ABNORMAL, "property": LESION, "rgb": [0, 151, 206]},
]

# The series: name, source folder (from the repository root), segment descriptions,
# SpecificCharacterSet given to highdicom (None: it copies the source's) and the masks'
# variant: "two" (two overlapping segments), "one" (segment 1 alone: one frame per
# position, equally spaced) or "gap" (segment 1 alone, also cleared on the first and the
# middle slice: its frames are no longer equally spaced, and no frame lies on the first).
SERIES = [
    ("ct_axial", "fixtures/io/dicom/ct_axial", ASCII_SEGMENTS, None, "two"),
    ("mr_oblique", "fixtures/io/dicom/mr_oblique", GREEK_SEGMENTS, "ISO_IR 192", "two"),
    ("ct_rle", "fixtures/io/dicom/ct_rle", ASCII_SEGMENTS, None, "two"),
    ("ct_deflate", "fixtures/io/dicom/ct_deflate", ASCII_SEGMENTS, None, "two"),
    ("ct_rich", "fixtures/io/dicom_seg/sources/ct_rich", ASCII_SEGMENTS, None, "two"),
    ("ct_axial_one", "fixtures/io/dicom/ct_axial", ASCII_SEGMENTS[:1], None, "one"),
    ("ct_axial_gap", "fixtures/io/dicom/ct_axial", ASCII_SEGMENTS[:1], None, "gap"),
]

# ct_rich: ct_axial with more Patient and Study attributes (and a Latin-1 name in
# ISO_IR 100), new UIDs: what a SEG copies of its source beyond the minimum.
RICH_FROM = "fixtures/io/dicom/ct_axial"
RICH_ATTRIBUTES = {
    "PatientName": "Müller^Jörg",
    "ReferringPhysicianName": "Doe^Jane",
    "IssuerOfPatientID": "VOXTELL",
    "PatientAge": "042Y",
    "PatientSize": "1.75",
    "PatientWeight": "70",
    "StudyDescription": "CT abdomen",
    "ManufacturerModelName": "Fixture CT",
    "InstitutionName": "Fixture Hospital",
}


def make_rich_source() -> None:
    """Write ct_rich (sources/ct_rich/) from ct_axial: new Series and SOP Instance UIDs."""
    out = OUT_DIR / "sources" / "ct_rich"
    out.mkdir(parents=True)
    for n, path in enumerate(sorted((REPO_ROOT / RICH_FROM).iterdir()), start=1):
        ds = pydicom.dcmread(path)
        for keyword, value in RICH_ATTRIBUTES.items():
            setattr(ds, keyword, value)
        ds.SeriesInstanceUID = f"{UID_ROOT}99.1"
        ds.SOPInstanceUID = f"{UID_ROOT}99.{n + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "CT axial with more patient and study attributes"
        ds.save_as(out / path.name, enforce_file_format=True)


def read_sorted(folder: Path) -> list[pydicom.Dataset]:
    """The series' instances, sorted by position along the plane normal (ascending)."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])

    def along(ds: pydicom.Dataset) -> float:
        return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64)))

    datasets.sort(key=along)
    assert len({along(d) for d in datasets}) == len(datasets), f"{folder}: duplicate positions"
    return datasets


def masks_of(datasets: list[pydicom.Dataset], variant: str) -> np.ndarray:
    """uint8 (segments, slices, rows, columns): the two thresholds, each cleared on one end
    slice; for "one" and "gap" the first alone ("gap": also cleared on the first and the
    middle slice)."""
    values = np.stack(
        [
            ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1.0))
            + float(ds.get("RescaleIntercept", 0.0))
            for ds in datasets
        ]
    )
    flat = np.sort(values, axis=None)
    low, high = flat[flat.size // 2], flat[flat.size * 9 // 10]
    masks = np.stack([values > low, values > high]).astype(np.uint8)
    masks[0, -1] = 0
    masks[1, 0] = 0
    if variant != "two":
        masks = masks[:1]
    if variant == "gap":
        masks[0, 0] = 0
        masks[0, len(datasets) // 2] = 0
    for s in range(len(masks)):
        assert masks[s].any(), f"segment {s + 1} is empty"
        assert not masks[s].all(axis=(1, 2)).any()
    if variant == "two":
        assert (masks.sum(axis=0) > 1).any(), "the segments must overlap"
    return masks


def coded(code: dict) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(
        value=code["value"], scheme_designator=code["scheme"], meaning=code["meaning"]
    )


def descriptions(segments: list[dict]) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=OPTIONS["algorithm_name"],
        family=codes.cid7162.ArtificialIntelligence,
        version=OPTIONS["algorithm_version"],
    )
    out = []
    for number, seg in enumerate(segments, start=1):
        d = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=seg["text"],
            segmented_property_category=coded(seg["category"]),
            segmented_property_type=coded(seg["property"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*seg["rgb"]),
        )
        # Our writer puts the whole prompt in SegmentDescription (0062,0006), an optional
        # attribute that SegmentDescription's constructor has no argument for.
        d.SegmentDescription = seg["text"]
        out.append(d)
    return out


def build_highdicom_seg(name: str) -> tuple[pydicom.Dataset, list[pydicom.Dataset], np.ndarray]:
    """highdicom's SEG of the masks of series `name`, its sorted sources and the masks."""
    index, (_, folder, segments, charset, variant) = next(
        (i, s) for i, s in enumerate(SERIES, start=1) if s[0] == name
    )
    sources = read_sorted(REPO_ROOT / folder)
    masks = masks_of(sources, variant)
    extra = {} if charset is None else {"specific_character_set": charset}
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.moveaxis(masks, 0, -1),  # (slices, rows, columns, segments)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions(segments),
        series_instance_uid=f"{UID_ROOT}{index}.1",
        series_number=OPTIONS["series_number"],
        sop_instance_uid=f"{UID_ROOT}{index}.2",
        instance_number=1,
        manufacturer=OPTIONS["manufacturer"],
        manufacturer_model_name=OPTIONS["algorithm_name"],
        software_versions=OPTIONS["algorithm_version"],
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description=CONTENT_DESCRIPTION,
        content_label=CONTENT_LABEL,
        series_description=OPTIONS["series_description"],
        series_date=FIXED_DATE,
        series_time=FIXED_TIME,
        content_date=FIXED_DATE,
        content_time=FIXED_TIME,
        **extra,
    )
    # The clock and the random UIDs highdicom has no argument for.
    seg.InstanceCreationDate = FIXED_DATE
    seg.InstanceCreationTime = FIXED_TIME
    for item in seg.ContributingEquipmentSequence:
        if "ContributionDateTime" in item:
            item.ContributionDateTime = FIXED_DATE + FIXED_TIME
    dimension_uid = f"{UID_ROOT}{index}.3"
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    return seg, sources, masks


def roundtrip(seg: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def check_arrays(name: str, data: bytes, sources: list[pydicom.Dataset], masks: np.ndarray) -> None:
    """highdicom's segread of `data` gives the masks, instance by instance."""
    back = hd.seg.segread(io.BytesIO(data))
    uids = [s.SOPInstanceUID for s in sources]
    numbers = list(range(1, len(masks) + 1))
    pixels = back.get_pixels_by_source_instance(uids, segment_numbers=numbers, dtype=np.uint8)
    got = np.moveaxis(pixels, -1, 0)
    if not np.array_equal(got, masks):
        raise SystemExit(f"{name}: highdicom's own SEG does not read back as the masks")


def dump(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True, ensure_ascii=False)
        fh.write("\n")


def main() -> int:
    if hd.__version__ != HIGHDICOM_VERSION:
        print(f"highdicom {hd.__version__} found, {HIGHDICOM_VERSION} required", file=sys.stderr)
        return 1
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    make_rich_source()
    manifest = {
        "generator": "tools/gen_seg_fixtures.py",
        "versions": {p: version(p) for p in ("highdicom", "pydicom", "numpy")},
        "options": OPTIONS,
        "series": [],
    }
    for name, folder, segments, _, variant in SERIES:
        seg, sources, masks = build_highdicom_seg(name)
        data = roundtrip(seg)
        check_arrays(name, data, sources, masks)
        written = pydicom.dcmread(io.BytesIO(data))
        del written.PixelData
        np.save(OUT_DIR / f"{name}.masks.npy", masks)
        dump(OUT_DIR / f"{name}.highdicom.json", written.to_json_dict())
        dump(OUT_DIR / f"{name}.highdicom_meta.json", written.file_meta.to_json_dict())
        manifest["series"].append(
            {
                "name": name,
                "folder": folder,
                "variant": variant,
                "masks": f"{name}.masks.npy",
                "highdicom": f"{name}.highdicom.json",
                "highdicom_meta": f"{name}.highdicom_meta.json",
                "sop_instance_uids": [s.SOPInstanceUID for s in sources],
                "segments": segments,
                "frames": int(written.NumberOfFrames),
            }
        )
        voxels = masks.reshape(len(masks), -1).sum(axis=1).tolist()
        print(f"{name}: {len(sources)} slices, {int(written.NumberOfFrames)} frames, "
              f"voxels per segment {voxels}")
    dump(OUT_DIR / "manifest.json", manifest)
    total = sum(p.stat().st_size for p in OUT_DIR.rglob("*") if p.is_file())
    print(f"{OUT_DIR.relative_to(REPO_ROOT)}: {total} bytes")
    assert total < 400_000, "fixtures too large"
    return 0


if __name__ == "__main__":
    sys.exit(main())
