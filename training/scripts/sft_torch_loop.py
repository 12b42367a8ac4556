#!/usr/bin/env python3
"""The PyTorch peer of `tolk-train sft-bench`: the same SFT steps with transformers + torch.optim.

Reads a folder written by `tolk-train sft-bench`:
  model/           initial weights (Hugging Face Llama folder, f32)
  batches.safetensors  input_ids_K, labels_K, padding_mask_K for K = 0..steps-1
  bench.json       lr per step, betas, eps, weight_decay, grad_clip, threads
Runs one optimizer step per batch exactly as tolk's loop does (loss = summed cross-entropy over
target tokens / target tokens, next-token shift, clip_grad_norm_, AdamW with decay on >= 2-D
tensors) and writes torch.json (losses, timings) and final.safetensors (weights after the steps).
"""
import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    a = ap.parse_args()
    cfg = json.loads((a.dir / "bench.json").read_text())
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(
        a.dir / "model", torch_dtype=torch.float32, attn_implementation="sdpa"
    )
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg["lrs"][0],
        betas=tuple(cfg["betas"]),
        eps=cfg["eps"],
        foreach=False,
    )
    batches = load_file(a.dir / "batches.safetensors")
    losses, times, tokens, targets = [], [], 0, 0
    for k, lr in enumerate(cfg["lrs"]):
        ids = batches[f"input_ids_{k}"]
        labels = batches[f"labels_{k}"]
        mask = batches[f"padding_mask_{k}"]
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask.long()).logits
        pred = logits[:, :-1].reshape(-1, logits.shape[-1])
        tgt = labels[:, 1:].reshape(-1)
        n = int((tgt != -100).sum())
        loss = torch.nn.functional.cross_entropy(
            pred.float(), tgt, ignore_index=-100, reduction="sum"
        ) / max(n, 1)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        if k >= cfg["warmup"]:
            tokens += int(mask.sum())
            targets += n
    timed = sum(times[cfg["warmup"]:])
    out = {
        "losses": losses,
        "step_seconds": times,
        "tokens_per_s": tokens / timed if timed > 0 else 0.0,
        "target_tokens_per_s": targets / timed if timed > 0 else 0.0,
        "torch": torch.__version__,
    }
    (a.dir / "torch.json").write_text(json.dumps(out))
    # A tied LM head is the embedding: store each tensor once.
    seen, weights = set(), {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        weights[k] = v.detach().contiguous()
    save_file(weights, str(a.dir / "final.safetensors"))


if __name__ == "__main__":
    main()
