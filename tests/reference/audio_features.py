"""Reference Kaldi features from torchaudio.compliance.kaldi (torchaudio==2.11.0).

Usage: python tests/reference/audio_features.py OUT_DIR
Writes OUT_DIR/reference.safetensors: `waveform` (16 kHz mono f32 in [-1, 1], espeak-ng English
and French speech with silence and noise, plus a sine sweep) and, per config below, computed on
`waveform * 32768` (the int16 scale Tolk's `input_scale` applies):
- `NAME`: torchaudio on the float64 waveform (float64 result): Kaldi's arithmetic without f32
  rounding, which Tolk's f64 implementation must match to 1e-3;
- `NAME_f32`: torchaudio on the float32 waveform, as most users call it. Its own f32 rounding
  moves low-energy mel bins by up to ~0.2 (log domain) away from the float64 result (quiet bands
  next to a loud tone), so the Rust test bounds |tolk - f32| by |f64 - f32| + 1e-3 per element.
OUT_DIR/reference.json describes the configs.
"""

import json
import math
import sys
from pathlib import Path

import torch
import torchaudio.compliance.kaldi as kaldi
from safetensors.torch import save_file

from speech import SR, test_signal

# name -> (function, keyword arguments); the Rust test builds the same configs by name.
CONFIGS = {
    "fbank_default": ("fbank", {}),
    "mfcc_default": ("mfcc", {}),
    "fbank_80": ("fbank", {"num_mel_bins": 80}),
    "fbank_energy": ("fbank", {"use_energy": True}),
    "mfcc_energy_hamming": ("mfcc", {"use_energy": True, "window_type": "hamming"}),
}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    speech = test_signal(seed=0)
    t = torch.arange(2 * SR, dtype=torch.float64) / SR
    sweep = (0.5 * torch.sin(2 * math.pi * (100 * t + 0.5 * 3900 * t * t / 2))).float()
    waveform = torch.cat([speech, sweep, torch.zeros(1234)]).contiguous()
    tensors = {"waveform": waveform}
    scaled = (waveform * 32768.0).unsqueeze(0)
    for name, (fn, kwargs) in CONFIGS.items():
        f64 = getattr(kaldi, fn)(scaled.double(), dither=0.0, **kwargs)
        f32 = getattr(kaldi, fn)(scaled, dither=0.0, **kwargs)
        tensors[name] = f64.contiguous()
        tensors[name + "_f32"] = f32.contiguous()
        gap = (f32.double() - f64).abs().max().item()
        print(f"{name}: {tuple(f64.shape)}, torchaudio f32 vs f64 worst {gap:.3e}")
    save_file(tensors, str(out / "reference.safetensors"))
    meta = {"sample_rate": SR, "input_scale": 32768.0,
            "configs": {k: {"function": v[0], "kwargs": v[1]} for k, v in CONFIGS.items()}}
    (out / "reference.json").write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
