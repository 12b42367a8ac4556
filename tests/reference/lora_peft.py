"""LoRA parity reference: a tiny random Llama (transformers) with peft LoRA adapters.

Usage:
  python tests/reference/lora_peft.py OUT_DIR
      OUT_DIR/base (HF folder), OUT_DIR/adapters/NAME (peft save_pretrained),
      OUT_DIR/reference.safetensors (input ids; logits of the base model, of each adapter, of
      adapters disabled and of merge_and_unload) and OUT_DIR/reference.json.
  python tests/reference/lora_peft.py check BASE_DIR ADAPTER_DIR IDS_AND_OUT.safetensors
      Loads an adapter written by another tool (Tolk) with peft onto BASE_DIR and adds its logits
      for the `input_ids` of the given file as `logits` (rewrites the file).

B is drawn at random (peft initialises it to zero, which would make the comparison empty).
"""

import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

BASE = dict(
    vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
    max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.1,
    rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
)
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    # Every linear layer of the decoder (the PROST-LLM setting), alpha / r = 2.
    "all": dict(r=4, lora_alpha=8, target_modules=ALL),
    # A subset (k and up have no adapter inside the fused q/k/v and gate/up) with rsLoRA scaling.
    "subset_rslora": dict(r=2, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"],
                          use_rslora=True),
}
BATCH, SEQ = 2, 12


def randomize_b(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def make(out: Path) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(2024)
    cfg = LlamaConfig(**BASE)
    base = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in base.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    (out / "base").mkdir(parents=True, exist_ok=True)
    base.save_pretrained(out / "base", safe_serialization=True)
    ids = torch.randint(3, cfg.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(5))
    tensors = {"input_ids": ids}
    with torch.no_grad():
        tensors["logits_base"] = base(ids).logits.contiguous()
    meta = {"adapters": {}}
    for k, (name, kw) in enumerate(ADAPTERS.items()):
        fresh = LlamaForCausalLM.from_pretrained(out / "base").eval()
        lcfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **kw)
        torch.manual_seed(100 + k)  # A: peft's kaiming-uniform init, seeded
        model = get_peft_model(fresh, lcfg).eval()
        randomize_b(model, 200 + k)
        model.save_pretrained(out / "adapters" / name)
        trainable = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        with torch.no_grad():
            tensors[f"logits_{name}"] = model(ids).logits.contiguous()
            with model.disable_adapter():
                tensors[f"logits_{name}_disabled"] = model(ids).logits.contiguous()
            merged = model.merge_and_unload()
            tensors[f"logits_{name}_merged"] = merged(ids).logits.contiguous()
        meta["adapters"][name] = {**kw, "trainable": trainable}
    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    print(f"LoRA/peft references written to {out}")


def check(base_dir: Path, adapter_dir: Path, io_file: Path) -> None:
    torch.set_num_threads(2)
    base = LlamaForCausalLM.from_pretrained(base_dir).eval()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    tensors = load_file(str(io_file))
    with torch.no_grad():
        tensors["logits"] = model(tensors["input_ids"]).logits.contiguous()
    save_file(tensors, str(io_file))


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "check":
        check(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    elif len(sys.argv) == 2:
        make(Path(sys.argv[1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
