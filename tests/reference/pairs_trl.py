"""TRL compatibility of the preference pairs written by `tolk-train pairs`.

Run by `training/tests/pairs.rs` on a pairs.jsonl it has just made:

    pairs_trl.py END_TOKEN PAIRS_JSONL TOKENIZER_JSON [PAIRS_JSONL TOKENIZER_JSON ...]

1. `datasets` loads the file (the JSON-lines loader TRL users call);
2. `transformers.PreTrainedTokenizerFast` over the translator's extended `tokenizer.json`
   tokenizes `prompt`, `chosen` and `rejected` without added special tokens: the ids must equal
   `prompt_ids`, `chosen_ids` and `rejected_ids`;
3. trl's `DPOTrainer` (with a tiny random `LlamaForCausalLM` of the tokenizer's vocabulary,
   `eos_token` = END_TOKEN) prepares its training set from the `prompt` / `chosen` / `rejected`
   columns alone: its `prompt_ids` / `chosen_ids` / `rejected_ids` must equal ours, except that
   TRL appends the EOS token to a completion that does not end with it (a candidate stopped by
   the length cap), and one DPO step must run with a finite loss.

Prints a JSON summary per file; exits with status 1 and a message on the first mismatch. Seeded.
"""

import copy
import json
import sys
import tempfile
import warnings


def fail(msg):
    print(f"pairs_trl: {msg}", file=sys.stderr)
    sys.exit(1)


def check(pairs_path, tokenizer_path, end_token):
    import datasets
    import torch
    import transformers
    import trl
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    ds = datasets.load_dataset("json", data_files=pairs_path, split="train")
    if len(ds) == 0:
        fail(f"{pairs_path} holds no pairs")
    tok = PreTrainedTokenizerFast(tokenizer_file=tokenizer_path)
    end_id = tok.convert_tokens_to_ids(end_token)
    if end_id is None or end_id == tok.unk_token_id:
        fail(f"{end_token} is not a token of {tokenizer_path}")

    # 2. Plain tokenization, no added special tokens.
    for row in ds:
        for field in ("prompt", "chosen", "rejected"):
            ids = tok(row[field], add_special_tokens=False)["input_ids"]
            if ids != row[f"{field}_ids"]:
                fail(
                    f"{pairs_path}: {row['id']}: tokenizing {field} gives {ids}, the file has "
                    f"{row[field + '_ids']} (string {row[field]!r})"
                )

    # 3. trl's own DPO dataset processing, from the strings only, and one step.
    tok.eos_token = end_token
    tok.pad_token = "<pad>" if tok.convert_tokens_to_ids("<pad>") is not None else end_token
    strings = ds.select_columns(["prompt", "chosen", "rejected"])
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        eos_token_id=end_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    appended = 0
    with tempfile.TemporaryDirectory() as out:
        args = trl.DPOConfig(
            output_dir=out,
            per_device_train_batch_size=min(2, len(ds)),
            max_steps=1,
            learning_rate=1e-3,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            bf16=False,
            max_length=None,
            seed=0,
        )
        trainer = trl.DPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=args,
            train_dataset=strings,
            processing_class=tok,
        )
        prepared = trainer.train_dataset
        for row, ours in zip(prepared, ds):
            if row["prompt_ids"] != ours["prompt_ids"]:
                fail(f"{ours['id']}: trl prompt_ids {row['prompt_ids']} != {ours['prompt_ids']}")
            for field in ("chosen", "rejected"):
                want = list(ours[f"{field}_ids"])
                if not want or want[-1] != end_id:
                    want.append(end_id)
                    appended += 1
                if row[f"{field}_ids"] != want:
                    fail(
                        f"{ours['id']}: trl {field}_ids {row[field + '_ids']} != {want} "
                        f"(ours plus TRL's EOS where it was missing)"
                    )
        loss = trainer.train().training_loss
        if not (loss == loss and abs(loss) < 1e6):
            fail(f"the DPO step gave loss {loss}")
    return {
        "file": pairs_path,
        "pairs": len(ds),
        "trl": trl.__version__,
        "datasets": datasets.__version__,
        "transformers": transformers.__version__,
        "eos_appended_by_trl": appended,
        "dpo_step_loss": loss,
    }


def main():
    if len(sys.argv) < 4 or len(sys.argv) % 2 != 0:
        fail("usage: pairs_trl.py END_TOKEN PAIRS_JSONL TOKENIZER_JSON [PAIRS_JSONL TOKENIZER_JSON ...]")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    end_token = sys.argv[1]
    files = sys.argv[2:]
    for pairs_path, tokenizer_path in zip(files[::2], files[1::2]):
        print(json.dumps(check(pairs_path, tokenizer_path, end_token)))


if __name__ == "__main__":
    main()
