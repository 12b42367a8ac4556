"""Tiny random Llama models made with transformers, and their reference outputs.

Usage: python tests/reference/llama_tiny.py OUT_DIR
For each config: OUT_DIR/NAME/model (HF folder), OUT_DIR/NAME/reference.safetensors
(logits of a batch, resized embeddings) and OUT_DIR/reference.json (token ids, greedy output).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

CONFIGS = {
    # Llama-3.2-shaped: llama3 RoPE scaling (all three frequency bands occur at head_dim 32),
    # grouped-query attention (8 query heads on 2 key/value heads), tied embeddings.
    "llama32_tied": dict(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
        max_position_embeddings=131072, tie_word_embeddings=True, initializer_range=0.1,
        rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        bos_token_id=1, eos_token_id=2,
    ),
    # Untied head, plain RoPE, multi-head attention, biases on every projection.
    "untied_bias": dict(
        vocab_size=300, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=6, rms_norm_eps=1e-6,
        max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.1,
        rope_theta=10000.0, attention_bias=True, mlp_bias=True, bos_token_id=1, eos_token_id=2,
    ),
}
BATCH, SEQ, PROMPT, GREEDY, EXTRA = 2, 24, 8, 32, 10


def main() -> None:
    out = Path(sys.argv[1])
    meta = {}
    torch.set_num_threads(2)
    for name, kwargs in CONFIGS.items():
        torch.manual_seed(1234)
        cfg = LlamaConfig(**kwargs)
        model = LlamaForCausalLM(cfg).eval()
        # Norm weights away from 1 so that a missing norm weight shows.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
        d = out / name
        (d / "model").mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d / "model", safe_serialization=True)
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(3, cfg.vocab_size, (BATCH, SEQ), generator=g)
        tensors = {}
        with torch.no_grad():
            tensors["input_ids"] = ids
            tensors["logits"] = model(ids).logits.contiguous()
            prompt = ids[:1, :PROMPT]
            gen = model.generate(prompt, max_new_tokens=GREEDY, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
            model.resize_token_embeddings(cfg.vocab_size + EXTRA, mean_resizing=True)
            tensors["resized_embed"] = model.get_input_embeddings().weight.clone()
            tensors["resized_head"] = model.get_output_embeddings().weight.clone()
        save_file(tensors, str(d / "reference.safetensors"))
        meta[name] = {"prompt": prompt[0].tolist(),
                      "greedy": gen[0, PROMPT:].tolist(), "extra_tokens": EXTRA}
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    print(f"tiny llama references written to {out}")


if __name__ == "__main__":
    main()
