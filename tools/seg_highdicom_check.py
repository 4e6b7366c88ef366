#!/usr/bin/env python3
"""Read every SEG of ours with highdicom 0.28.2 and compare its arrays (issue 23).

    tools/.venv-highdicom/bin/python tools/seg_highdicom_check.py DIR

DIR holds our SEGs as ``crates/voxtell-io/tests/dicom_seg_highdicom.rs`` writes them with
``VOXTELL_SEG_OUT=DIR`` (``<series>.dcm`` for every series of
``fixtures/io/dicom_seg/manifest.json``); ``tools/seg_highdicom_check.sh`` does both steps.
For each series:

* ``segread``: highdicom parses our file (its warnings are counted);
* ``by instance``: ``get_pixels_by_source_instance`` over the manifest's instances equals the
  fixture's masks, segment by segment;
* ``volume``: ``get_volume`` (highdicom's own geometry from our per-frame positions) puts each
  source instance's mask at the slice its ImagePositionPatient maps to, and zeros elsewhere;
* ``vs highdicom``: highdicom's own SEG of the same masks (rebuilt by
  ``gen_seg_fixtures.build_highdicom_seg``) gives the same arrays, and its volume the same
  affine and shape as ours;
* ``segments``: labels, property codes and algorithm name as highdicom reads them;
* ``dciodvfy``: no error line (skipped where dicom3tools is not installed).

Prints one PASS/FAIL row per check and series; exits 1 on any FAIL.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_seg_fixtures  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "fixtures" / "io" / "dicom_seg"


class Counter(logging.Handler):
    """Counts highdicom's warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def by_instance(seg: hd.seg.Segmentation, uids: list[str], segments: int) -> np.ndarray:
    """(segments, slices, rows, columns), slices in the manifest's instance order."""
    numbers = list(range(1, segments + 1))
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, dtype=np.uint8)
    return np.moveaxis(pixels, -1, 0)


def volume_check(
    seg: hd.seg.Segmentation, entry: dict, masks: np.ndarray
) -> tuple[bool, str, hd.Volume]:
    """Each source instance's mask at the volume slice its position maps to; zeros elsewhere."""
    segments = len(entry["segments"])
    vol = seg.get_volume(segment_numbers=list(range(1, segments + 1)), dtype=np.uint8)
    array = np.moveaxis(vol.array, -1, 0)  # (segments, slices, rows, columns)
    inverse = np.linalg.inv(vol.affine)
    sources = {
        s.SOPInstanceUID: s for s in gen_seg_fixtures.read_sorted(REPO_ROOT / entry["folder"])
    }
    covered = set()
    for j, uid in enumerate(entry["sop_instance_uids"]):
        ipp = np.asarray(sources[uid].ImagePositionPatient, dtype=np.float64)
        index = inverse @ np.append(ipp, 1.0)
        k = int(round(index[0]))
        if not np.allclose(index[:3], [k, 0, 0], atol=1e-4):
            return False, f"{uid} maps to volume index {index[:3]}", vol
        if 0 <= k < array.shape[1]:
            covered.add(k)
            if not np.array_equal(array[:, k], masks[:, j]):
                return False, f"{uid}: volume slice {k} differs from its mask", vol
        elif masks[:, j].any():
            return False, f"{uid}: outside the volume (slice {k}) but its mask is not empty", vol
    extra = [k for k in range(array.shape[1]) if k not in covered and array[:, k].any()]
    if extra:
        return False, f"volume slices {extra} lie on no source instance", vol
    return True, f"{array.shape[1]} slices", vol


def dciodvfy(path: Path) -> tuple[bool | None, str]:
    if shutil.which("dciodvfy") is None:
        return None, "dciodvfy not installed"
    out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    return not errors, f"{len(errors)} errors" + (f": {errors[0]}" if errors else "")


def check(entry: dict, ours_dir: Path) -> list[tuple[str, bool | None, str]]:
    name = entry["name"]
    masks = np.load(FIXTURES / entry["masks"])
    uids = entry["sop_instance_uids"]
    segments = len(entry["segments"])
    rows: list[tuple[str, bool | None, str]] = []
    path = ours_dir / f"{name}.dcm"

    counter = Counter()
    logging.getLogger("highdicom").addHandler(counter)
    try:
        ours = hd.seg.segread(path)
        ours_pixels = by_instance(ours, uids, segments)
        ours_ok, ours_note, ours_vol = volume_check(ours, entry, masks)
    finally:
        logging.getLogger("highdicom").removeHandler(counter)
    warnings = f"{len(counter.messages)} warnings"
    if counter.messages:
        warnings += f": {counter.messages[0]}"
    rows.append(("segread", not counter.messages, f"{int(ours.NumberOfFrames)} frames, {warnings}"))

    same = np.array_equal(ours_pixels, masks)
    if same:
        note = f"{int(masks.sum())} voxels"
    elif ours_pixels.shape == masks.shape:
        note = f"{int((ours_pixels != masks).sum())} voxels differ"
    else:
        note = f"shape {ours_pixels.shape}, masks {masks.shape}"
    rows.append(("by instance", same, note))
    rows.append(("volume", ours_ok, ours_note))

    theirs_ds, _, theirs_masks = gen_seg_fixtures.build_highdicom_seg(name)
    theirs = hd.seg.segread(io.BytesIO(gen_seg_fixtures.roundtrip(theirs_ds)))
    theirs_pixels = by_instance(theirs, uids, segments)
    _, _, theirs_vol = volume_check(theirs, entry, masks)
    same_shape = theirs_vol.array.shape == ours_vol.array.shape
    differences = [
        what
        for what, equal in [
            ("masks", np.array_equal(theirs_masks, masks)),
            ("arrays by instance", np.array_equal(theirs_pixels, ours_pixels)),
            ("volume shape", same_shape),
            ("volume", same_shape and np.array_equal(theirs_vol.array, ours_vol.array)),
            ("affine", np.allclose(theirs_vol.affine, ours_vol.affine, atol=1e-6)),
        ]
        if not equal
    ]
    note = "differ: " + ", ".join(differences) if differences else "arrays, volume and affine equal"
    rows.append(("vs highdicom", not differences, note))

    problems = []
    for number, want in enumerate(entry["segments"], start=1):
        d = ours.get_segment_description(number)
        algorithm = d.algorithm_identification
        got = (
            d.segment_label,
            d.segmented_property_category.value,
            d.segmented_property_type.value,
            algorithm[0].AlgorithmName if algorithm else None,
        )
        expected = (
            want["text"][:64],
            want["category"]["value"],
            want["property"]["value"],
            gen_seg_fixtures.OPTIONS["algorithm_name"],
        )
        if got != expected:
            problems.append(f"segment {number}: {got} != {expected}")
    rows.append(("segments", not problems, "; ".join(problems) or f"{segments} as described"))

    rows.append(("dciodvfy", *dciodvfy(path)))
    return rows


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ours_dir = Path(sys.argv[1])
    manifest = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
    print(f"highdicom {hd.__version__}: our SEGs in {ours_dir}")
    print(f"{'series':<14} {'check':<13} {'result':<6} note")
    failed = 0
    for entry in manifest["series"]:
        try:
            rows = check(entry, ours_dir)
        except Exception as e:  # a file highdicom cannot read at all is a failure too
            rows = [("error", False, f"{type(e).__name__}: {e}")]
        for what, ok, note in rows:
            result = "SKIP" if ok is None else "PASS" if ok else "FAIL"
            failed += result == "FAIL"
            print(f"{entry['name']:<14} {what:<13} {result:<6} {note}")
    print("seg_highdicom_check:", "FAIL" if failed else "PASS", f"({failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
