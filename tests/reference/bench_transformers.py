"""The peer for `tolk model bench`: transformers' generate() on the same weights, same thread
count, same prompt length and output length. Prints one JSON line (last line of stdout).

Usage: python tests/reference/bench_transformers.py MODEL_DIR --threads N --prompt-tokens P
       --new-tokens N [--repeats R] [--device cpu] [--dtype f32]
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer


class Clock(BaseStreamer):
    """Records when generate() hands over each new token (the first put() is the prompt)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    device = "cuda" if a.device.startswith("cuda") else "cpu"
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=dtype).to(device).eval()
    vocab = model.config.vocab_size
    # The same pseudo-random prompt as the Rust benchmark.
    ids = torch.tensor([[(i * 2654435761) % vocab for i in range(a.prompt_tokens)]], device=device)
    kwargs = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                  pad_token_id=0)
    with torch.no_grad():
        model.generate(ids[:, :8], **kwargs)  # warm-up
        prefill, decode = [], []
        for _ in range(max(1, a.repeats)):
            clock = Clock()
            start = time.perf_counter()
            model.generate(ids, streamer=clock, **kwargs)
            first, last = clock.times[1], clock.times[-1]
            prefill.append(a.prompt_tokens / (first - start))
            decode.append((len(clock.times) - 2) / (last - first))
    print(json.dumps({
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(decode),
        "threads": torch.get_num_threads(),
        "version": f"transformers {transformers.__version__}, torch {torch.__version__}",
    }))


if __name__ == "__main__":
    main()
