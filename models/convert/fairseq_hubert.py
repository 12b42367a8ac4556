"""Converts a fairseq HuBERT checkpoint (.pt) to a Hugging Face `HubertModel` folder.

Usage: python models/convert/fairseq_hubert.py CHECKPOINT.pt OUT_DIR [--num-heads N]
Writes OUT_DIR/config.json and OUT_DIR/model.safetensors, which tolk's `units::Hubert::load`
(and transformers' `HubertModel.from_pretrained`) read. Needs torch and safetensors only: fairseq
objects inside the pickle (task dictionaries, argparse namespaces) are replaced by placeholders.

Key mapping (fairseq `fairseq/models/hubert/hubert.py` and `wav2vec/wav2vec2.py` -> transformers
`models/hubert/modeling_hubert.py`), as in tolk's method.md section 5:
  feature_extractor.conv_layers.{i}.0.*     -> feature_extractor.conv_layers.{i}.conv.*
  feature_extractor.conv_layers.0.2.*       -> feature_extractor.conv_layers.0.layer_norm.*  (group norm)
  feature_extractor.conv_layers.{i}.2.1.*   -> feature_extractor.conv_layers.{i}.layer_norm.* (layer norm)
  layer_norm.*, post_extract_proj.*         -> feature_projection.{layer_norm, projection}.*
  encoder.pos_conv.0.{weight_g, weight_v}   -> encoder.pos_conv_embed.conv.parametrizations.weight.original{0,1}
  encoder.layers.{i}.self_attn.*            -> encoder.layers.{i}.attention.*
  self_attn_layer_norm, fc1, fc2            -> layer_norm, feed_forward.intermediate_dense, .output_dense
Dropped: mask_emb, label_embs_concat, final_proj.* (pre-training heads).
"""

import argparse
import json
import pickle
import re
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file


class _Placeholder:
    """Stands in for any class the pickle names that is not importable here (fairseq objects)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):
        return _Placeholder()


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith(("torch", "collections", "numpy", "builtins", "_codecs")) or \
                module in ("argparse", "copyreg"):
            try:
                return super().find_class(module, name)
            except (AttributeError, ModuleNotFoundError):
                pass
        return type(name, (_Placeholder,), {"__module__": module})


_lenient = types.SimpleNamespace(Unpickler=_LenientUnpickler, load=pickle.load,
                                 __name__="lenient_pickle")


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_lenient)


def model_cfg(ckpt: dict) -> dict:
    """The model section of the checkpoint's config (new `cfg` dict or old `args` namespace)."""
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return dict(cfg["model"])
    args = ckpt.get("args")
    if args is not None:
        return dict(vars(args)) if not isinstance(args, dict) else dict(args)
    return {}


def parse_conv_layers(spec: str) -> list:
    """fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4"."""
    if not re.fullmatch(r"[\d\s()\[\],+*]+", spec):
        raise ValueError(f"unexpected conv_feature_layers {spec!r}")
    return list(eval(spec, {"__builtins__": {}}, {}))  # digits, brackets and + * only


def rename(name: str, layer_norm_convs: bool) -> str | None:
    if name in ("mask_emb", "label_embs_concat") or name.startswith("final_proj."):
        return None
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(.+)", name)
    if m:
        i, rest = m.groups()
        if rest.startswith("0."):
            return f"feature_extractor.conv_layers.{i}.conv.{rest[2:]}"
        if not layer_norm_convs and rest.startswith("2."):
            return f"feature_extractor.conv_layers.{i}.layer_norm.{rest[2:]}"
        if layer_norm_convs and rest.startswith("2.1."):
            return f"feature_extractor.conv_layers.{i}.layer_norm.{rest[4:]}"
        raise KeyError(name)
    if name.startswith("layer_norm."):
        return "feature_projection." + name
    if name.startswith("post_extract_proj."):
        return "feature_projection.projection." + name.split(".", 1)[1]
    if name.startswith("encoder.pos_conv.0."):
        rest = name[len("encoder.pos_conv.0."):]
        rest = {"weight_g": "parametrizations.weight.original0",
                "weight_v": "parametrizations.weight.original1"}.get(rest, rest)
        return "encoder.pos_conv_embed.conv." + rest
    if name.startswith("encoder.layer_norm."):
        return name
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", name)
    if m:
        i, rest = m.groups()
        for a, b in [("self_attn_layer_norm.", "layer_norm."), ("self_attn.", "attention."),
                     ("fc1.", "feed_forward.intermediate_dense."),
                     ("fc2.", "feed_forward.output_dense."),
                     ("final_layer_norm.", "final_layer_norm.")]:
            if rest.startswith(a):
                return f"encoder.layers.{i}.{b}{rest[len(a):]}"
    raise KeyError(name)


def convert(ckpt_path: Path, out: Path, num_heads: int | None = None) -> dict:
    ckpt = load_checkpoint(ckpt_path)
    sd = ckpt["model"] if "model" in ckpt else ckpt
    mc = model_cfg(ckpt)
    mode = mc.get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"extractor_mode {mode!r} is not supported")
    layer_norm_convs = mode == "layer_norm"
    tensors, unknown = {}, []
    for name, t in sd.items():
        try:
            new = rename(name, layer_norm_convs)
        except KeyError:
            unknown.append(name)
            continue
        if new is not None:
            tensors[new] = t.detach().to(torch.float32).contiguous()
    if unknown:
        raise ValueError(f"unknown fairseq keys: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")

    # Shapes decide what they can; the rest comes from the checkpoint config (defaults: HuBERT base).
    n_conv = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("feature_extractor."))
    conv_w = [tensors[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in range(n_conv)]
    if "conv_feature_layers" in mc:
        strides = [s for _, _, s in parse_conv_layers(mc["conv_feature_layers"])]
    else:
        strides = [5, 2, 2, 2, 2, 2, 2]
    if len(strides) != n_conv:
        raise ValueError(f"{len(strides)} conv strides for {n_conv} conv layers")
    hidden = tensors["feature_projection.projection.weight"].shape[0]
    v = tensors["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]
    n_layers = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("encoder.layers."))
    heads = num_heads or mc.get("encoder_attention_heads") or max(1, hidden // 64)
    stable = bool(mc.get("layer_norm_first", False))
    if stable:
        # transformers' pre-LN encoder always has its final norm; fairseq always writes it too.
        assert "encoder.layer_norm.weight" in tensors
    config = {
        "architectures": ["HubertModel"], "model_type": "hubert",
        "hidden_size": hidden, "num_hidden_layers": n_layers, "num_attention_heads": heads,
        "intermediate_size": tensors["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        "hidden_act": mc.get("activation_fn", "gelu"),
        "feat_extract_norm": "layer" if layer_norm_convs else "group",
        "feat_extract_activation": "gelu",
        "conv_dim": [int(w.shape[0]) for w in conv_w],
        "conv_kernel": [int(w.shape[2]) for w in conv_w],
        "conv_stride": strides,
        "conv_bias": "feature_extractor.conv_layers.0.conv.bias" in tensors,
        "num_feat_extract_layers": n_conv,
        "num_conv_pos_embeddings": int(v.shape[2]),
        "num_conv_pos_embedding_groups": int(hidden // v.shape[1]),
        "do_stable_layer_norm": stable,
        "feat_proj_layer_norm": "feature_projection.layer_norm.weight" in tensors,
        "layer_norm_eps": 1e-5,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads, when the checkpoint config does not say")
    a = p.parse_args()
    cfg = convert(a.checkpoint, a.out, a.num_heads)
    print(f"{a.checkpoint} -> {a.out}: {cfg['num_hidden_layers']} layers, width {cfg['hidden_size']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
