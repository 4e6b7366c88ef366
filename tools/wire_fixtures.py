"""VXA2 fixtures and cross-check for crates/voxtell-wire (driven by tools/wire_fixtures.sh).

Subcommands (each runs inside one python-blosc2 venv):

  make DIR SERIALIZER      write DIR/*.vxa2 payloads with the official pack_array of
                           SERIALIZER (voxtell/server/serialization.py, loaded by path), the
                           expected arrays into fixtures/wire/arrays/, and DIR/part.json
  manifest                 merge the parts into fixtures/wire/manifest.json
  check DIR SERIALIZER...  decode every DIR/*.vxa2 listed in DIR/index.json (written by
                           `cargo run -p voxtell-wire --example vxa2_encode -- DIR`) with each
                           official unpack_array and compare with numpy arrays made by the same
                           recipes; prints a table, exits 1 on any mismatch

Arrays come from integer formulas (no RNG), so both venvs make the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import blosc2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WIRE = ROOT / "fixtures" / "wire"
ARRAYS = WIRE / "arrays"


def load_serializer(path: str, name: str = "vxa2_official"):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def c_blosc2_version() -> str:
    return str(getattr(blosc2, "VERSION_STRING", "?"))


def hash_u64(n: int, seed: int) -> np.ndarray:
    """Deterministic pseudo-noise: a multiplicative hash of the flat index, as uint64."""
    i = np.arange(n, dtype=np.uint64) + np.uint64(seed)
    return (i * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)


def grid(shape):
    return np.meshgrid(*[np.arange(s, dtype=np.int64) for s in shape], indexing="ij")


def ct_hu(shape) -> np.ndarray:
    """A CT-like int16 volume: air, an elliptic body of soft tissue with noise, a bone ring."""
    z, y, x = grid(shape)
    zc, yc, xc = [(s - 1) / 2 for s in shape]
    r = ((y - yc) / (shape[1] * 0.42)) ** 2 + ((x - xc) / (shape[2] * 0.45)) ** 2
    noise = (hash_u64(int(np.prod(shape)), 11).reshape(shape) % 41).astype(np.int64) - 20
    hu = np.where(r <= 1.0, 40 + noise, -1000)
    hu = np.where((r > 0.55) & (r <= 0.7), 700 + noise, hu)
    return hu.astype(np.int16)


def blobs(n, shape) -> np.ndarray:
    z, y, x = grid(shape)
    out = np.zeros((n,) + tuple(shape), dtype=np.uint8)
    for m in range(n):
        cz, cy, cx = shape[0] // 2 + m, shape[1] // 3 + 2 * m, shape[2] // 2 - 3 * m
        rad = min(shape) // 3 + m
        out[m] = ((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= rad * rad).astype(np.uint8)
    return out


def labels_u2(shape) -> np.ndarray:
    z, y, x = grid(shape)
    out = np.zeros(shape, dtype=np.uint16)
    for label, rad in [(1, 14), (2, 10), (3, 6), (1000, 3)]:
        out[(z - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2 + (x - shape[2] // 2) ** 2 <= rad * rad] = label
    out[:, :2, :] = 5
    return out


def mixed_runs(n) -> np.ndarray:
    """uint8 with whole blocks of zeros, blocks of one repeated byte, and noise."""
    out = (hash_u64(n, 3) % 256).astype(np.uint8)
    out[: n // 4] = 0
    out[n // 4 : n // 2] = 7
    out[3 * n // 4 : 3 * n // 4 + n // 8] = 0
    return out


def zoo(dtype: str, shape=(3, 5, 7)) -> np.ndarray:
    n = int(np.prod(shape))
    dt = np.dtype(dtype)
    if dt.kind == "b":
        a = (np.arange(n) % 3) == 0
    elif dt.kind == "f":
        a = ((np.arange(n) % 1000) - 500) / 4.0
    else:
        a = np.arange(n, dtype=np.uint64) * np.uint64(40503) + np.uint64(0x8000)
    return a.astype(dt).reshape(shape)


class Maker:
    def __init__(self, out: Path, serializer_path: str):
        self.out = out
        self.ser = load_serializer(serializer_path)
        self.default_chunk = self.ser._CHUNK_SIZE
        self.entries = []
        self.versions = {
            "python_blosc2": blosc2.__version__,
            "c_blosc2": c_blosc2_version(),
            "numpy": np.__version__,
            "serializer": "voxtell 0.1.2 voxtell/server/serialization.py pack_array",
        }

    def expected(self, name: str, arr: np.ndarray) -> dict:
        """Where the expected bytes are: one repeated element, or a gzipped .npy (mtime 0)."""
        raw = arr.tobytes()
        first = raw[: arr.dtype.itemsize]
        if raw and raw == first * (len(raw) // len(first)):
            return {"repeat": first.hex()}
        path = ARRAYS / f"{name}.npy.gz"
        if path.exists():
            old = np.lib.format.read_array(io.BytesIO(gzip.decompress(path.read_bytes())))
            if old.dtype.str != arr.dtype.str or old.shape != arr.shape or old.tobytes() != raw:
                sys.exit(f"expected array {name} differs between numpy versions")
        else:
            ARRAYS.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, version=(1, 0), allow_pickle=False)
            path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))
        return {"array": f"arrays/{name}.npy.gz"}

    def add(self, name, arr, array_name=None, settings=None, chunk=None, compress=None, exact=True):
        """Pack `arr` with the official pack_array, optionally with a patched chunk size and
        a patched blosc2.compress (`compress(chunk_bytes, typesize) -> bytes`)."""
        arr = np.asarray(arr)
        self.ser._CHUNK_SIZE = chunk or self.default_chunk
        if compress is not None:
            real = self.ser.blosc2
            shim = type("Blosc2Shim", (), {"compress": staticmethod(lambda src, typesize: compress(bytes(src), typesize))})
            self.ser.blosc2 = shim
        try:
            payload = self.ser.pack_array(arr)
        finally:
            if compress is not None:
                self.ser.blosc2 = real
            self.ser._CHUNK_SIZE = self.default_chunk
        back = self.ser.unpack_array(payload)
        if back.dtype.str != arr.dtype.str or back.shape != arr.shape:
            sys.exit(f"{name}: official round trip changed dtype/shape")
        if exact and back.tobytes() != arr.tobytes():
            sys.exit(f"{name}: official round trip changed the bytes")
        (self.out / f"{name}.vxa2").write_bytes(payload)
        headers, pos = [], 5 + payload[4]
        pos += 1 + 8 * payload[pos] + 8
        while pos < len(payload):
            clen = int.from_bytes(payload[pos + 8 : pos + 16], "little")
            headers.append(payload[pos + 16 : pos + 16 + min(32, clen)].hex())
            pos += 16 + clen
        raw = arr.tobytes()
        self.entries.append(
            {
                "file": f"{self.out.name}/{name}.vxa2",
                "made_by": self.out.name,
                "settings": dict(
                    {"compress": "official default: blosc2.compress(chunk, typesize=itemsize)"}
                    if settings is None
                    else settings,
                    chunk_size=self.ser._CHUNK_SIZE if chunk is None else chunk,
                ),
                "chunks": len(headers),
                "first_chunk_header": headers[0] if headers else None,
                "payload_bytes": len(payload),
                "expected": {
                    **(self.expected(array_name or name, arr) if exact else {}),
                    "dtype": arr.dtype.str,
                    "shape": list(arr.shape),
                    "raw_bytes": len(raw),
                    "sha256": hashlib.sha256(raw).hexdigest() if exact else None,
                    "content": "exact" if exact else "unspecified (uninitialized special chunk; this crate yields zeros)",
                },
            }
        )

    def compress2(self, **kw):
        def f(src, typesize):
            return blosc2.compress2(src, typesize=typesize, nthreads=1, **kw)

        return f

    def make(self):
        B = blosc2
        vol_i2 = ct_hu((24, 40, 36))
        self.add("vol_i2", vol_i2)
        self.add("vol_f4", (ct_hu((20, 32, 30)).astype(np.float32) * np.float32(0.5) + np.float32(0.25)))
        self.add("mask_u1", blobs(3, (16, 48, 40)))
        self.add("labels_u2", labels_u2((16, 40, 36)))
        self.add("labels_u2_big", labels_u2((6, 20, 18)).astype(">u2"))
        self.add("empty_u1", np.zeros((0, 4, 4), np.uint8))
        self.add("empty_f4", np.zeros((2, 0), np.float32))
        self.add("zeros_u1", np.zeros((2, 32, 32, 32), np.uint8))
        self.add("zeros_f4", np.zeros((16, 32, 32), np.float32))
        # No 0-d fixture: pack_array's np.ascontiguousarray turns shape () into (1,).
        self.add("one_f8", np.array([2.5], np.float64))
        for dt in ["|b1", "|i1", "<u4", "<i4", "<u8", "<i8", "<f2", "<f8", ">f4", ">i2"]:
            self.add(f"zoo_{dt[1:]}{'_big' if dt[0] == '>' else ''}", zoo(dt))
        self.add("multichunk_i2", vol_i2, array_name="vol_i2", chunk=4096)
        self.add("multichunk_u1", blobs(3, (16, 48, 40)), array_name="mask_u1", chunk=10000)

        # What a client could set: every codec x filter on an int16 volume with small blocks.
        small = ct_hu((8, 16, 24))
        codecs = ["BLOSCLZ", "LZ4", "LZ4HC", "ZLIB", "ZSTD"]
        filters = {
            "nofilter": [B.Filter.NOFILTER],
            "shuffle": [B.Filter.SHUFFLE],
            "bitshuffle": [B.Filter.BITSHUFFLE],
            "delta": [B.Filter.DELTA],
            "delta_shuffle": [B.Filter.DELTA, B.Filter.SHUFFLE],
        }
        for codec in codecs:
            for fname, flist in filters.items():
                kw = dict(codec=getattr(B.Codec, codec), clevel=5, blocksize=2048, filters=flist, filters_meta=[0] * len(flist))
                settings = {"compress": "blosc2.compress2", "codec": codec, "clevel": 5, "blocksize": 2048, "filters": fname}
                self.add(f"ct_i2_{codec.lower()}_{fname}", small, array_name="ct_i2_small", settings=settings, compress=self.compress2(**kw))
        # Split modes on float32 (typesize 4 -> 4 streams per block when split).
        f4 = ct_hu((8, 16, 24)).astype(np.float32)
        for codec in ["BLOSCLZ", "LZ4", "ZSTD", "ZLIB"]:
            for mode in ["ALWAYS_SPLIT", "NEVER_SPLIT"]:
                kw = dict(codec=getattr(B.Codec, codec), clevel=9, blocksize=4096, splitmode=getattr(B.SplitMode, mode))
                settings = {"compress": "blosc2.compress2", "codec": codec, "clevel": 9, "blocksize": 4096, "splitmode": mode, "filters": "shuffle"}
                self.add(f"ct_f4_{codec.lower()}_{mode.lower()}", f4, array_name="ct_f4_small", settings=settings, compress=self.compress2(**kw))
        # Zero runs and repeated-byte streams inside blocks.
        runs = mixed_runs(48 * 1024)
        for codec in ["BLOSCLZ", "LZ4", "ZSTD"]:
            kw = dict(codec=getattr(B.Codec, codec), clevel=5, blocksize=4096)
            settings = {"compress": "blosc2.compress2", "codec": codec, "clevel": 5, "blocksize": 4096, "data": "zero/repeated-byte runs + noise"}
            self.add(f"runs_u1_{codec.lower()}", runs, array_name="runs_u1", settings=settings, compress=self.compress2(**kw))
        self.add("runs_u1_default", runs, array_name="runs_u1")
        # memcpy chunks: clevel 0, and incompressible noise.
        kw = dict(codec=B.Codec.ZSTD, clevel=0)
        self.add("memcpy_clevel0_i2", small, array_name="ct_i2_small", settings={"compress": "blosc2.compress2", "codec": "ZSTD", "clevel": 0}, compress=self.compress2(**kw))
        noise = (hash_u64(6000, 5) % 256).astype(np.uint8)
        self.add("memcpy_noise_u1", noise, settings={"compress": "official default (incompressible noise)"})
        # Zstd with a trained dictionary.
        kw = dict(codec=B.Codec.ZSTD, clevel=5, use_dict=True, blocksize=4096)
        self.add("zstd_dict_i2", vol_i2, array_name="vol_i2", settings={"compress": "blosc2.compress2", "codec": "ZSTD", "clevel": 5, "use_dict": True, "blocksize": 4096}, compress=self.compress2(**kw))

        # Chunk-level special values, made by a SChunk (as blosc2.zeros/full/empty do).
        def special(kind, value=None):
            def f(src, typesize):
                nitems = len(src) // typesize
                if kind == "VALUE":
                    arr = blosc2.full((nitems,), value, chunks=(nitems,), blocks=(max(1, nitems // 4),))
                    return arr.schunk.get_chunk(0)
                s = blosc2.SChunk(chunksize=len(src), cparams={"typesize": typesize})
                s.fill_special(nitems, getattr(blosc2.SpecialValue, kind))
                return s.get_chunk(0)

            return f

        self.add("special_zeros_f4", np.zeros((10, 20, 30), np.float32), settings={"compress": "SChunk.fill_special(ZERO)"}, compress=special("ZERO"))
        self.add("special_nan_f4", np.full((10, 20, 30), np.nan, np.float32), settings={"compress": "SChunk.fill_special(NAN)"}, compress=special("NAN"))
        self.add("special_nan_f8", np.full((7, 9), np.nan, np.float64), settings={"compress": "SChunk.fill_special(NAN)"}, compress=special("NAN"))
        self.add("special_value_f4", np.full((10, 20, 30), 3.5, np.float32), settings={"compress": "blosc2.full(..., 3.5) chunk (repeated value)"}, compress=special("VALUE", np.float32(3.5)))
        self.add("special_value_u2", np.full((10, 20, 30), 1234, np.uint16), settings={"compress": "blosc2.full(..., 1234) chunk (repeated value)"}, compress=special("VALUE", np.uint16(1234)))
        self.add("special_uninit_f4", np.zeros((10, 20, 30), np.float32), settings={"compress": "SChunk.fill_special(UNINIT)"}, compress=special("UNINIT"), exact=False)

        part = {"made_by": {self.out.name: self.versions}, "payloads": self.entries}
        (self.out / "part.json").write_text(json.dumps(part, indent=1) + "\n")
        print(f"{self.out.name}: {len(self.entries)} payloads with python-blosc2 {blosc2.__version__} (C-Blosc2 {c_blosc2_version()})")


def manifest():
    parts = sorted(WIRE.glob("*/part.json"))
    docs = [json.loads(p.read_text()) for p in parts]
    entries = [e for d in docs for e in d["payloads"]]
    makers = {k: v for d in docs for k, v in d["made_by"].items()}
    for p in parts:
        p.unlink()
    doc = {
        "about": "VXA2 payloads made by the official voxtell 0.1.2 pack_array (voxtell/server/serialization.py, "
        "loaded by path from the wheel) under two python-blosc2 versions; each decodes to `expected`. "
        "Made by tools/wire_fixtures.sh; read by crates/voxtell-wire/tests/fixtures.rs. "
        "expected: `array` (gzipped .npy) or `repeat` (one element's bytes, hex, repeated), "
        "dtype, shape, raw_bytes, sha256 of the raw bytes; content `exact` or `unspecified`.",
        "made_by": makers,
        "payloads": entries,
    }
    (WIRE / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    size = sum(f.stat().st_size for f in WIRE.rglob("*") if f.is_file())
    print(f"manifest: {len(entries)} payloads, fixtures/wire is {size} bytes")


# ---- cross-check of the Rust encoder -------------------------------------------------------


def recipe(entry) -> np.ndarray:
    """The numpy twin of examples/vxa2_encode.rs's `make`."""
    dt = np.dtype(entry["dtype"])
    shape = tuple(entry["shape"])
    n = int(np.prod(shape)) if shape else 1
    i = np.arange(n, dtype=np.uint64)
    kind = entry["recipe"]
    if kind == "iota":
        if dt.kind == "b":
            a = (i % np.uint64(3)) == 0
        elif dt.kind == "f":
            a = ((i % np.uint64(1000)).astype(np.float64) - 500.0) / 4.0
        else:
            a = i * np.uint64(7) + np.uint64(3)
    elif kind == "zeros":
        a = np.zeros(n)
    elif kind == "const":
        a = np.full(n, True if dt.kind == "b" else (1.5 if dt.kind == "f" else 5))
    elif kind == "nan":
        a = np.full(n, np.nan)
    elif kind == "ct":
        z, y, x = grid(shape)
        v = ((3 * z + 5 * y + 7 * x) % 2000) - 1000
        a = (v != 0) if dt.kind == "b" else v
    elif kind == "blobs":
        m, z, y, x = grid(shape)
        zl, yl, xl = shape[1:]
        rad = min(zl, yl, xl) // 3
        a = ((z - (zl // 2 + m)) ** 2 + (y - (yl // 3 + 2 * m)) ** 2 + (x - (xl // 2 - m)) ** 2) <= rad * rad
    else:
        raise ValueError(kind)
    return np.asarray(a).astype(dt).reshape(shape)


def check(folder: Path, serializers: list[str]) -> int:
    decoders = [(Path(p).parts[-3], load_serializer(p, f"vxa2_{k}")) for k, p in enumerate(serializers)]
    index = json.loads((folder / "index.json").read_text())
    bad = 0
    tag = f"python-blosc2 {blosc2.__version__} (C-Blosc2 {c_blosc2_version()}), numpy {np.__version__}"
    print(f"\n== Rust encoder -> official unpack_array, {tag}")
    print(f"{'payload':34} {'dtype':5} {'shape':16} {'codec':8} {'lvl':>3} {'filter':10} {'bytes':>7}  result")
    for e in index:
        body = (folder / f"{e['name']}.vxa2").read_bytes()
        want = recipe(e)
        results = []
        for who, mod in decoders:
            try:
                got = mod.unpack_array(body)
                ok = got.dtype.str == want.dtype.str and got.shape == want.shape and got.tobytes() == want.tobytes()
                results.append("ok" if ok else f"MISMATCH({who}: {got.dtype.str} {got.shape})")
            except Exception as exc:  # noqa: BLE001 - report every failure in the table
                results.append(f"ERROR({who}: {exc})")
        good = all(r == "ok" for r in results)
        bad += not good
        shape = "x".join(map(str, e["shape"])) or "()"
        result = f"ok ({len(decoders)} decoders)" if good else "; ".join(results)
        print(f"{e['name']:34} {e['dtype']:5} {shape:16} {e['codec']:8} {e['clevel']:>3} {e['filter']:10} {len(body):>7}  {result}")
    print(f"{len(index) - bad} passed, {bad} failed ({tag})")
    return 1 if bad else 0


def main(argv):
    if argv[:1] == ["make"]:
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        Maker(out, argv[2]).make()
    elif argv[:1] == ["manifest"]:
        manifest()
    elif argv[:1] == ["check"]:
        sys.exit(check(Path(argv[1]), argv[2:]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
