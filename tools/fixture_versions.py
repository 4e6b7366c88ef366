#!/usr/bin/env python3
"""Record the versions of the packages the fixtures were generated with (fixtures/VERSIONS.txt)."""
import platform
from importlib.metadata import version
from pathlib import Path

PACKAGES = ["voxtell", "nnunetv2", "dynamic-network-architectures", "positional-encodings", "acvl-utils",
            "torch", "transformers", "nibabel", "SimpleITK", "pydicom", "numpy", "scipy"]

out = Path(__file__).resolve().parent.parent / "fixtures" / "VERSIONS.txt"
lines = [f"python {platform.python_version()}"] + [f"{p} {version(p)}" for p in PACKAGES]
out.write_text("# Packages the fixtures were generated with (tools/fixture_versions.py)\n" + "\n".join(lines) + "\n")
print(out.read_text(), end="")
