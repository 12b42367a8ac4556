"""HuBERT reference: random transformers `HubertModel`s and their layer-L hidden states.

Usage: python tests/reference/hubert.py OUT_DIR
For each config NAME: OUT_DIR/NAME/model (HF folder: config.json + model.safetensors),
OUT_DIR/NAME/fairseq.pt (the same weights in the fairseq HuBERT layout, for the converter test),
OUT_DIR/NAME/reference.safetensors (`input`: waveform [S], `hidden`: hidden_states[L] [T, D]).
OUT_DIR/speech.safetensors: espeak-ng English and French speech at 16 kHz (`en`, `fr`, `both`),
OUT_DIR/streaming/centroids.npy: k-means centroids fitted (sklearn) on mhubert_base layer-11
features of that speech, for the streaming test. OUT_DIR/reference.json: configs and layers.
"""

import io
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from scipy.signal import resample_poly
from sklearn.cluster import KMeans
from transformers import HubertConfig, HubertModel

# mHuBERT base (fairseq mhubert_base_vp_en_es_fr_it3.pt): the HuBERT-base shape, units from layer 11.
MHUBERT = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    feat_extract_norm="group", do_stable_layer_norm=False,
)
CONFIGS = {
    "mhubert_base": (MHUBERT, 11, 1.5),
    # Post-LN with group norm, as HuBERT base; even positional kernel (one frame trimmed).
    "tiny_post": (dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
        conv_dim=[32, 32, 48], conv_stride=[5, 4, 4], conv_kernel=[10, 4, 4], conv_bias=False,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="group", do_stable_layer_norm=False,
    ), 2, 1.0),
    # Pre-LN ("stable layer norm") with layer norm in every conv, conv biases, odd positional
    # kernel; the last layer (the final encoder norm is not part of hidden_states[L]).
    "tiny_stable": (dict(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=80,
        conv_dim=[24, 32, 32], conv_stride=[5, 4, 4], conv_kernel=[10, 3, 4], conv_bias=True,
        num_conv_pos_embeddings=17, num_conv_pos_embedding_groups=8,
        feat_extract_norm="layer", do_stable_layer_norm=True,
    ), 3, 1.0),
}
STREAM_K = 50


def espeak(text: str, voice: str) -> np.ndarray:
    """espeak-ng speech, resampled from 22.05 kHz to 16 kHz mono float32."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True,
                         capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        frames = w.readframes(w.getnframes())
    x = np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0
    y = resample_poly(x, 16000, rate) if rate != 16000 else x
    return y.astype(np.float32)


def to_fairseq(sd: dict, cfg: HubertConfig) -> dict:
    """The transformers state dict renamed to fairseq's HuBERT layout (method.md section 5)."""
    out = {}
    for name, t in sd.items():
        n = name
        if n == "masked_spec_embed":
            n = "mask_emb"
        elif n.startswith("feature_extractor.conv_layers."):
            i = n.split(".")[2]
            rest = n.split(".", 3)[3]
            if rest.startswith("conv."):
                n = f"feature_extractor.conv_layers.{i}.0.{rest[5:]}"
            elif cfg.feat_extract_norm == "group":
                n = f"feature_extractor.conv_layers.{i}.2.{rest.split('.')[-1]}"
            else:
                n = f"feature_extractor.conv_layers.{i}.2.1.{rest.split('.')[-1]}"
        elif n.startswith("feature_projection.layer_norm."):
            n = "layer_norm." + n.split(".")[-1]
        elif n.startswith("feature_projection.projection."):
            n = "post_extract_proj." + n.split(".")[-1]
        elif n.startswith("encoder.pos_conv_embed.conv."):
            rest = n[len("encoder.pos_conv_embed.conv."):]
            rest = {"parametrizations.weight.original0": "weight_g",
                    "parametrizations.weight.original1": "weight_v"}.get(rest, rest)
            n = "encoder.pos_conv.0." + rest
        elif n.startswith("encoder.layers."):
            for a, b in [(".attention.", ".self_attn."), (".layer_norm.", ".self_attn_layer_norm."),
                         (".feed_forward.intermediate_dense.", ".fc1."),
                         (".feed_forward.output_dense.", ".fc2.")]:
                n = n.replace(a, b)
        out[n] = t.clone()
    # Pre-training heads that fairseq checkpoints carry and the converter must drop.
    out["label_embs_concat"] = torch.randn(504, 256)
    out["final_proj.weight"] = torch.randn(256, cfg.hidden_size)
    out["final_proj.bias"] = torch.randn(256)
    return out


def fairseq_cfg(cfg: HubertConfig) -> dict:
    convs = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in
                       zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride))
    return {"model": {
        "_name": "hubert", "encoder_layers": cfg.num_hidden_layers,
        "encoder_embed_dim": cfg.hidden_size, "encoder_ffn_embed_dim": cfg.intermediate_size,
        "encoder_attention_heads": cfg.num_attention_heads, "activation_fn": "gelu",
        "extractor_mode": "default" if cfg.feat_extract_norm == "group" else "layer_norm",
        "layer_norm_first": cfg.do_stable_layer_norm, "conv_feature_layers": convs,
        "conv_bias": cfg.conv_bias, "conv_pos": cfg.num_conv_pos_embeddings,
        "conv_pos_groups": cfg.num_conv_pos_embedding_groups,
    }}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    en = espeak("The train to Barcelona leaves from platform four at half past nine.", "en")
    fr = espeak("Le train pour Marseille part du quai numéro trois à dix heures.", "fr")
    both = np.concatenate([en, np.zeros(3200, np.float32), fr])
    save_file({"en": torch.from_numpy(en), "fr": torch.from_numpy(fr),
               "both": torch.from_numpy(both)}, str(out / "speech.safetensors"))
    meta = {"configs": {}}
    models = {}
    for name, (kwargs, layer, seconds) in CONFIGS.items():
        torch.manual_seed(1234)
        cfg = HubertConfig(**kwargs, layer_norm_eps=1e-5, mask_time_prob=0.05)
        model = HubertModel(cfg).eval()
        with torch.no_grad():
            # Norm weights and biases away from their initial 1 and 0, so a missing one shows.
            for n, p in model.named_parameters():
                if "norm" in n and n.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif n.endswith("bias") or n.endswith("original0"):
                    p.copy_(0.05 * torch.randn_like(p) + (p if n.endswith("original0") else 0))
        d = out / name
        (d / "model").mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d / "model", safe_serialization=True)
        x = torch.from_numpy(en[: int(seconds * 16000)]).contiguous()
        with torch.no_grad():
            hs = model(x[None], output_hidden_states=True).hidden_states
        save_file({"input": x, "hidden": hs[layer][0].contiguous()},
                  str(d / "reference.safetensors"))
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"model": to_fairseq(sd, cfg), "cfg": fairseq_cfg(cfg)}, d / "fairseq.pt")
        meta["configs"][name] = {"layer": layer, "frames": hs[layer].shape[1],
                                 "hidden_size": cfg.hidden_size}
        models[name] = (model, layer)
    # Streaming test: units of mhubert_base layer 11, centroids fitted on the offline features.
    model, layer = models["mhubert_base"]
    feats = []
    with torch.no_grad():
        for a in (en, fr):
            feats.append(model(torch.from_numpy(a)[None], output_hidden_states=True)
                         .hidden_states[layer][0].numpy())
    feats = np.concatenate(feats).astype(np.float32)
    km = KMeans(n_clusters=STREAM_K, n_init=1, random_state=0).fit(feats)
    (out / "streaming").mkdir(exist_ok=True)
    np.save(out / "streaming" / "centroids.npy", km.cluster_centers_.astype(np.float32))
    meta["streaming"] = {"k": STREAM_K, "fit_frames": int(feats.shape[0])}
    (out / "reference.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
