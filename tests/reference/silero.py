"""Reference Silero VAD outputs from the PyPI package silero-vad==6.2.3 (its silero_vad.jit).

Usage: python tests/reference/silero.py OUT_DIR
Writes OUT_DIR/silero_vad.jit (the package's model, copied), OUT_DIR/reference.safetensors
(`audio`: 16 kHz test speech, `probs`: per-512-sample-window probabilities computed as the
package's get_speech_timestamps does) and OUT_DIR/reference.json with the speech segments that
get_speech_timestamps returns for several endpointing configs.

Tolk's endpointer implements get_speech_timestamps' rules causally without padding, so every
config here uses speech_pad_ms=0; the segments are compared exactly (in samples).
"""

import importlib.resources
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from silero_vad import get_speech_timestamps, load_silero_vad

from speech import SR, espeak, silence, test_signal

# name -> get_speech_timestamps keyword arguments (besides speech_pad_ms=0).
CONFIGS = {
    "default": {},
    "max_2s": {"max_speech_duration_s": 2.0},
    "max_1s_strict": {"max_speech_duration_s": 1.0, "threshold": 0.6, "min_silence_duration_ms": 300},
    "loose": {"threshold": 0.3, "min_speech_duration_ms": 100, "min_silence_duration_ms": 50},
}


def window_probs(model, audio: torch.Tensor) -> torch.Tensor:
    # The loop of get_speech_timestamps: reset, 512-sample windows, last one zero-padded.
    model.reset_states()
    probs = []
    for start in range(0, len(audio), 512):
        chunk = audio[start:start + 512]
        if len(chunk) < 512:
            chunk = torch.nn.functional.pad(chunk, (0, 512 - len(chunk)))
        probs.append(model(chunk, SR).item())
    return torch.tensor(probs, dtype=torch.float32)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    jit = importlib.resources.files("silero_vad.data").joinpath("silero_vad.jit")
    shutil.copyfile(str(jit), out / "silero_vad.jit")
    model = load_silero_vad()
    monologue = espeak(
        "Good morning. I would like to travel to Brussels tomorrow morning, and then continue "
        "to Antwerp in the afternoon, because my sister lives there with her two children.", "en")
    audio = torch.cat([test_signal(seed=1), monologue, silence(0.4)[:6001]]).contiguous()
    probs = window_probs(model, audio)
    ref = {"sample_rate": SR, "num_samples": len(audio), "configs": {}}
    for name, kwargs in CONFIGS.items():
        segs = get_speech_timestamps(audio, model, speech_pad_ms=0, **kwargs)
        ref["configs"][name] = {"kwargs": kwargs, "segments": [[s["start"], s["end"]] for s in segs]}
        print(name, [(s["start"], s["end"]) for s in segs])
    save_file({"audio": audio, "probs": probs}, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps(ref, indent=2))


if __name__ == "__main__":
    main()
