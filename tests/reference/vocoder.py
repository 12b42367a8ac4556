"""Unit HiFi-GAN reference: speechbrain's UnitHifiganGenerator, seeded random weights, exported
under fairseq's CodeHiFiGAN names.

Usage: python tests/reference/vocoder.py OUT_DIR

For each config NAME (the mHuBERT vocoder config, and a small ResBlock2 multi-speaker one):
  OUT_DIR/NAME/model/{config.json,model.safetensors}   fairseq names, weight norm folded here
  OUT_DIR/NAME/fairseq/{config.json,g_00000000}        fairseq-layout .pt (`["generator"]`) with
                                                       weight_g / weight_v, for the converter test
  OUT_DIR/NAME/reference.safetensors                   units, waveforms with and without the
                                                       duration predictor, predicted durations
and OUT_DIR/reference.json (a summary). For training, OUT_DIR/discriminator/: speechbrain's
HifiganDiscriminator (MPD + MSD, as jik876/hifi-gan) under hifi-gan's names (`weights.safetensors`)
and its scores/feature maps on two waveforms, HiFi-GAN's losses on them, and the log-mel
spectrogram of meldataset.py with torchaudio's Slaney filterbank (`reference.safetensors`).

How speechbrain is matched to fairseq (models/src/vocoder/ follows fairseq):
- speechbrain's embedding has one extra row 0 (its units are shifted by +1): fairseq's
  `dict.weight` is rows 1.., and speechbrain is fed `units + 1`;
- speechbrain's "same" convolutions pad by reflection (so it needs >= 3-4 units), fairseq pads
  with zeros: every speechbrain Conv1d is switched to zero padding ("constant");
- speechbrain's VariancePredictor has weight norm on its convs and no LayerNorm; fairseq's has
  plain convs followed by LayerNorm (`ln1`, `ln2`): LayerNorms are inserted after each conv+ReLU,
  and the exported conv weights are the folded ones;
- speechbrain 1.x's multi-codebook front end is disabled (`pooling_type="none"`, one codebook);
- a fairseq multi-speaker vocoder looks speaker ids up in `spkr.weight`; speechbrain is given
  that row as its speaker vector (both concatenate it after the unit embedding).
"""

import json
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from speechbrain.lobes.models.HifiGAN import UnitHifiganGenerator
from speechbrain.lobes.models.HifiGAN import HifiganDiscriminator
from speechbrain.nnet.CNN import Conv1d as SbConv1d
from speechbrain.nnet.CNN import Conv2d as SbConv2d
from torchaudio.functional import melscale_fbanks

MHUBERT = {
    "resblock": "1",
    "upsample_rates": [5, 4, 4, 2, 2],
    "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_embeddings": 1000,
    "embedding_dim": 128,
    "model_in_dim": 128,
    "segment_size": 8960,
    "code_hop_size": 320,
    "f0": False,
    "num_mels": 80,
    "num_freq": 1025,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "dur_prediction_weight": 1.0,
    "dur_predictor_params": {
        "encoder_embed_dim": 128,
        "var_pred_hidden_dim": 128,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "sampling_rate": 16000,
    "fmin": 0,
    "fmax": 8000,
    "fmax_for_loss": None,
    "num_workers": 4,
    "seed": 1234,
    "batch_size": 16,
    "learning_rate": 0.0002,
    "adam_b1": 0.8,
    "adam_b2": 0.99,
    "lr_decay": 0.999,
}

SMALL = {
    "resblock": "2",
    "upsample_rates": [5, 4, 4, 2, 2],
    "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 64,
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3], [1, 3]],
    "num_embeddings": 100,
    "embedding_dim": 32,
    "model_in_dim": 64,
    "multispkr": True,
    "num_speakers": 3,
    "dur_predictor_params": {
        "encoder_embed_dim": 32,
        "var_pred_hidden_dim": 24,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "sampling_rate": 16000,
}

CONFIGS = {"mhubert": (MHUBERT, 24), "small": (SMALL, 40)}
SPEAKER = 2


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of a (batch, channel, time) tensor."""

    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x):
        return self.ln(x.transpose(1, 2)).transpose(1, 2)


def build(cfg):
    dp = cfg.get("dur_predictor_params")
    gen = UnitHifiganGenerator(
        in_channels=cfg["model_in_dim"],
        out_channels=1,
        resblock_type=cfg["resblock"],
        resblock_dilation_sizes=cfg["resblock_dilation_sizes"],
        resblock_kernel_sizes=cfg["resblock_kernel_sizes"],
        upsample_kernel_sizes=cfg["upsample_kernel_sizes"],
        upsample_initial_channel=cfg["upsample_initial_channel"],
        upsample_factors=cfg["upsample_rates"],
        vocab_size=cfg["num_embeddings"] + 1,
        embedding_dim=cfg["embedding_dim"],
        duration_predictor=dp is not None,
        var_pred_hidden_dim=dp["var_pred_hidden_dim"] if dp else 128,
        var_pred_kernel_size=dp["var_pred_kernel_size"] if dp else 3,
        var_pred_dropout=dp["var_pred_dropout"] if dp else 0.5,
        multi_speaker=bool(cfg.get("multispkr")),
        pooling_type="none",
    )
    if dp:
        vp = gen.var_predictor
        h = dp["var_pred_hidden_dim"]
        vp.conv1.append(ChannelLayerNorm(h))
        vp.conv2.append(ChannelLayerNorm(h))
    for m in gen.modules():
        if isinstance(m, SbConv1d):
            m.padding_mode = "constant"  # zeros, as torch.nn.Conv1d(padding=p) in fairseq
    return gen.eval()


def randomize(gen, cfg):
    """Seeded weights that exercise every path: weight-norm gains away from |v|, biases, LayerNorm
    affine parameters, and a duration predictor whose durations vary (about 1 to 6)."""
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("original0"):  # weight-norm gain g
                p.mul_(1.0 + 0.2 * torch.rand_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif name.endswith("ln.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
        gen.unit_embedding.weight.normal_(0.0, 1.0)
        if cfg.get("dur_predictor_params"):
            gen.var_predictor.proj.bias.fill_(1.1)
        # Louder output (random HiFi-GANs are quiet) so that 1e-4 is a tight tolerance.
        gen.conv_post.conv.parametrizations.weight.original0.mul_(8.0)


def conv_pairs(gen, cfg):
    """(fairseq prefix, speechbrain nn.Conv*/ConvTranspose* module) of every weight-normed conv."""
    out = [("conv_pre", gen.conv_pre.conv), ("conv_post", gen.conv_post.conv)]
    for i, u in enumerate(gen.ups):
        out.append((f"ups.{i}", u.conv))
    for j, rb in enumerate(gen.resblocks):
        if cfg["resblock"] == "1":
            for m, c in enumerate(rb.convs1):
                out.append((f"resblocks.{j}.convs1.{m}", c.conv))
            for m, c in enumerate(rb.convs2):
                out.append((f"resblocks.{j}.convs2.{m}", c.conv))
        else:
            for m, c in enumerate(rb.convs):
                out.append((f"resblocks.{j}.convs.{m}", c.conv))
    return out


def export(gen, cfg, speakers):
    """Two fairseq state dicts: folded weights, and weight_g/weight_v as fairseq stores them."""
    folded, normed = {}, {}
    for prefix, conv in conv_pairs(gen, cfg):
        pw = conv.parametrizations.weight
        folded[f"{prefix}.weight"] = conv.weight.detach().clone()
        normed[f"{prefix}.weight_g"] = pw.original0.detach().clone()
        normed[f"{prefix}.weight_v"] = pw.original1.detach().clone()
        if conv.bias is not None:
            folded[f"{prefix}.bias"] = conv.bias.detach().clone()
            normed[f"{prefix}.bias"] = conv.bias.detach().clone()
    common = {"dict.weight": gen.unit_embedding.weight.detach()[1:].clone()}
    if cfg.get("dur_predictor_params"):
        vp = gen.var_predictor
        for i, seq in ((1, vp.conv1), (2, vp.conv2)):
            # fairseq's predictor convs have no weight norm: both layouts store the folded weight.
            common[f"dur_predictor.conv{i}.0.weight"] = seq[0].conv.weight.detach().clone()
            common[f"dur_predictor.conv{i}.0.bias"] = seq[0].conv.bias.detach().clone()
            common[f"dur_predictor.ln{i}.weight"] = seq[2].ln.weight.detach().clone()
            common[f"dur_predictor.ln{i}.bias"] = seq[2].ln.bias.detach().clone()
        common["dur_predictor.proj.weight"] = vp.proj.weight.detach().clone()
        common["dur_predictor.proj.bias"] = vp.proj.bias.detach().clone()
    if speakers is not None:
        common["spkr.weight"] = speakers.clone()
    folded.update(common)
    normed.update(common)
    return folded, normed


def discriminator_reference(out: Path, wav: torch.Tensor) -> None:
    """MPD + MSD scores and features, LSGAN / feature-matching / mel L1 losses."""
    torch.manual_seed(5)
    disc = HifiganDiscriminator()
    for m in disc.modules():
        if isinstance(m, SbConv2d):
            m.padding_mode = "constant"  # hifi-gan pads the period convs with zeros
    with torch.no_grad():
        for name, p in disc.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
        # A few training-mode passes run spectral norm's power iteration (u, v start random).
        for _ in range(5):
            disc.msd.discriminators[0](torch.randn(1, 1, 2000))
    disc.eval()  # eval: spectral norm uses its stored u, v
    weights = {}
    for name, t in disc.state_dict().items():
        name = name.replace(".conv.parametrizations.weight.original0", ".weight_g")
        name = name.replace(".conv.parametrizations.weight.original1", ".weight_v")
        name = name.replace(".parametrizations.weight.original0", ".weight_g")
        name = name.replace(".parametrizations.weight.original1", ".weight_v")
        name = name.replace(".conv.bias", ".bias")
        weights[name] = t.contiguous()
    n = 3001  # not a multiple of the periods: exercises the reflect padding
    real = wav[:n].view(1, 1, n)
    fake = (real + 0.05 * torch.randn(1, 1, n, generator=torch.Generator().manual_seed(3)))
    y = torch.cat([real, fake], 0)
    ref = {"y": y.contiguous()}
    with torch.no_grad():
        scores, feats = disc(y)
        for i, (s_, f) in enumerate(zip(scores, feats)):
            ref[f"score.{i}"] = s_.clone().contiguous()
            for j, x in enumerate(f):
                ref[f"feat.{i}.{j}"] = x.clone().contiguous()
        # jik876/hifi-gan models.py losses, real = batch row 0, generated = row 1.
        fm = sum(torch.mean(torch.abs(r[0:1] - g[1:2])) for f in feats for r, g in zip(f, f)) * 2
        d_loss = sum(torch.mean((1 - s_[0:1]) ** 2) + torch.mean(s_[1:2] ** 2) for s_ in scores)
        g_loss = sum(torch.mean((1 - s_[1:2]) ** 2) for s_ in scores)
        # meldataset.py mel_spectrogram (n_fft 1024, 80 mels, hop 256, win 1024, 0-8000 Hz).
        fb = melscale_fbanks(513, 0.0, 8000.0, 80, 16000, norm="slaney", mel_scale="slaney").T
        pad = (1024 - 256) // 2
        yp = torch.nn.functional.pad(y, (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(yp, 1024, hop_length=256, win_length=1024,
                          window=torch.hann_window(1024), center=False, normalized=False,
                          onesided=True, return_complex=True)
        spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
        mel = torch.log(torch.clamp(fb @ spec, min=1e-5))
        mel_l1 = torch.nn.functional.l1_loss(mel[0:1], mel[1:2])
    ref.update(
        feature_loss=fm.view(1), d_loss=d_loss.view(1), g_loss=g_loss.view(1),
        mel_filterbank=fb.contiguous(), mel=mel.contiguous(), mel_l1=mel_l1.view(1),
    )
    d = out / "discriminator"
    d.mkdir(parents=True, exist_ok=True)
    save_file(weights, d / "weights.safetensors")
    save_file(ref, d / "reference.safetensors")
    print("discriminator", {k: float(v) for k, v in ref.items() if v.numel() == 1})


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(2)
    summary = {}
    for name, (cfg, n_units) in CONFIGS.items():
        torch.manual_seed(20240611)
        gen = build(cfg)
        randomize(gen, cfg)
        speakers = None
        spk = None
        if cfg.get("multispkr"):
            speakers = torch.randn(cfg["num_speakers"], cfg["embedding_dim"])
            spk = speakers[SPEAKER].unsqueeze(0)
        g = torch.Generator().manual_seed(11)
        # Runs of repeated units as a unit decoder produces them (before deduplication).
        units = torch.randint(0, cfg["num_embeddings"], (n_units,), generator=g)
        units[3] = units[2]
        units[-1] = cfg["num_embeddings"] - 1
        units[0] = 0
        sb_units = (units + 1).view(1, -1, 1)
        with torch.no_grad():
            # Without duration prediction: one frame per unit.
            dp_module = gen.duration_predictor
            gen.duration_predictor = False
            wav = gen.inference(sb_units, spk=spk).squeeze()
            gen.duration_predictor = dp_module
            tensors = {"units": units, "wav": wav.contiguous()}
            if dp_module:
                wav_dur = gen.inference(sb_units, spk=spk).squeeze()
                emb = gen.unit_embedding(sb_units).squeeze(2)
                log_d = gen.var_predictor(emb)
                dur = torch.clamp(torch.round(torch.exp(log_d) - 1).long(), min=1).view(-1)
                assert wav_dur.numel() == int(dur.sum()) * 320
                tensors.update(wav_dur=wav_dur.contiguous(), durations=dur, log_dur=log_d.view(-1))
        folded, normed = export(gen, cfg, speakers)
        d = out / name
        (d / "model").mkdir(parents=True, exist_ok=True)
        (d / "fairseq").mkdir(parents=True, exist_ok=True)
        for sub in ("model", "fairseq"):
            (d / sub / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file({k: v.contiguous() for k, v in folded.items()}, d / "model" / "model.safetensors")
        torch.save({"generator": normed, "steps": 0}, d / "fairseq" / "g_00000000")
        save_file(tensors, d / "reference.safetensors")
        summary[name] = {
            "units": units.tolist(),
            "speaker": SPEAKER if speakers is not None else None,
            "samples": wav.numel(),
            "wav_abs_max": float(wav.abs().max()),
            "wav_std": float(wav.std()),
            "durations": tensors["durations"].tolist() if "durations" in tensors else None,
        }
        print(name, json.dumps(summary[name]))
        if name == "mhubert":
            discriminator_reference(out, wav)
    (out / "reference.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    shutil.rmtree(Path(sys.argv[1]), ignore_errors=True)
    main()
