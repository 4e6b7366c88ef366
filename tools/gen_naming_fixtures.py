#!/usr/bin/env python3
"""Generate fixtures/infer/naming.json from the official output-naming rules of voxtell.

Run from the repository root with the pinned venv (see tools/README.md):

    tools/.venv/bin/python tools/gen_naming_fixtures.py

Asks the official classmethods `VoxTellPredictor._safe_prompt_name` (prompt -> file-name
fragment) and `VoxTellPredictor._case_name` (image path -> case identifier); no model is loaded.
The prompts cover ASCII punctuation, non-ASCII letters and digits where Rust's
`char::is_alphanumeric` and Python's `str.isalnum` disagree, control characters, and names
around the 150-byte cap with multi-byte characters straddling the cut. Deterministic output.
"""
import json
import platform
import unicodedata
from importlib.metadata import version
from pathlib import Path

from voxtell.inference.predictor import VoxTellPredictor

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "infer" / "naming.json"

# The kept head of a truncated name is 150 - 8 - 1 = 141 bytes.
HEAD = 141


def prompts():
    p = [
        "liver",
        "left kidney",
        "Left Kidney",
        "LIVER",
        "spiculated nodule in the right upper lobe.",
        "a/b\\c",
        "../../etc/passwd",
        "tumour (enhancing) & oedema, 2nd: ok?",
        "under_score and-dash",
        "  leading and trailing  ",
        "tab\there\nnewline\r",
        "",
        " ",
        "Lungenflügel rechts, Größe",
        "Straße",
        "\u092A\u093E\u0928\u0940",  # Devanagari with the vowel sign U+093E (Alphabetic, not isalnum)
        "\u0915\u094D\u0937",  # virama U+094D
        "كبد",  # Arabic
        "الكلية اليسرى ٣",  # Arabic with an Arabic-Indic digit
        "肝脏",
        "左肾 第二",
        "肝臓のう胞",
        "간",
        "🫁 lung",
        "liver 👍🏽",
        "x² + y²",
        "½ dose",
        "Ⅻ rib",
        "Ⓐ circled",
        "e\u0301te\u0301",  # combining acute accents (Mn, not isalnum)
        "ｆｕｌｌｗｉｄｔｈ１２",
        "٣٤ ۵ ߁",  # other decimal digits
        "\u00aa\u00ba",  # feminine/masculine ordinal (Lo)
        "\u2070\u2074\u2089",  # superscript zero, four, subscript nine
        "\u0f33\u2155\u3405",  # Tibetan half zero, fraction, CJK ext A numeric
        "\U0001D400 bold \u1d40",  # mathematical bold A (Lu), modifier letter T (Lm)
        "𝐀𝐁 math bold",
        "\u200b zero width \ufeff",
        "\x00nul",
        "\u00a0nbsp\u3000ideographic space",
    ]
    # Safe names around the 150-byte cap (ASCII).
    p += ["a" * 149, "a" * 150, "a" * 151, "b" * 300]
    # A prompt longer than 150 bytes whose safe name is shorter (emoji -> '_').
    p += ["🫁" * 40]
    # Multi-byte characters straddling the cut at byte HEAD.
    p += ["a" * (HEAD - 1) + "ä" * 10]  # 2-byte, split 1|1
    p += ["a" * (HEAD - 1) + "中" * 10]  # 3-byte, split 1|2
    p += ["a" * (HEAD - 2) + "中" * 10]  # 3-byte, split 2|1
    p += ["a" * (HEAD - 3) + "𝐀" * 10]  # 4-byte, split 3|1
    p += ["a" * HEAD + "ü" * 10]  # cut exactly at a boundary
    p += ["ö" * 75, "ö" * 76]  # 150 and 152 bytes
    p += ["中" * 50, "中" * 51]  # 150 and 153 bytes
    p += ["Größe der Leber " * 20]
    return p


def files():
    return [
        "a.nii.gz",
        "a.nii",
        "a.tar.gz",
        ".hidden",
        ".hidden.nii.gz",
        ".nii.gz",
        "noext",
        "dir/with.dots/x.nii.gz",
        "dir/with.dots/noext",
        "/abs/path/case_001_0000.nii.gz",
        "a.",
        "a..b",
        "..a",
        "...",
        "a.b.c",
        "x.NII.GZ",
        "x.nii.gz.bak",
        "Lebér scan.nii",
        "dir/",
    ]


def main():
    P = VoxTellPredictor
    data = {
        "generator": "tools/gen_naming_fixtures.py",
        "python": platform.python_version(),
        "unidata_version": unicodedata.unidata_version,
        "voxtell": version("voxtell"),
        "prompts": [{"prompt": s, "safe": P._safe_prompt_name(s)} for s in prompts()],
        "cases": [{"path": f, "case": P._case_name(f)} for f in files()],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(data['prompts'])} prompts, {len(data['cases'])} paths")


if __name__ == "__main__":
    main()
