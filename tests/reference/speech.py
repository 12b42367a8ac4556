"""Test speech for the audio references: espeak-ng (Debian) English and French, generated at test
time, resampled to 16 kHz with torchaudio, joined with silence and seeded noise."""

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
import torchaudio

SR = 16000


def espeak(text: str, voice: str) -> torch.Tensor:
    """Mono float32 speech in [-1, 1] at 16 kHz spoken by espeak-ng."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True)
        with wave.open(str(path)) as w:
            assert w.getsampwidth() == 2 and w.getnchannels() == 1, "espeak-ng wrote unexpected WAV"
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    return torchaudio.functional.resample(x, rate, SR).to(torch.float32)


def silence(seconds: float) -> torch.Tensor:
    return torch.zeros(int(seconds * SR))


def noise(seconds: float, level: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(int(seconds * SR), generator=gen) * level


def test_signal(seed: int = 0) -> torch.Tensor:
    """~8 s: silence, English, low noise, French, a short pause, English, silence + noise."""
    gen = torch.Generator().manual_seed(seed)
    parts = [
        silence(0.5),
        espeak("The train to Amsterdam leaves from platform seven at ten past nine.", "en"),
        noise(0.8, 0.003, gen),
        espeak("Bonjour, je voudrais un billet aller retour pour Paris, s'il vous plaît.", "fr"),
        silence(0.3),
        espeak("Thank you very much.", "en"),
        silence(0.6) + noise(0.6, 0.001, gen),
    ]
    x = torch.cat(parts)
    # A small DC offset, as real microphones have; features remove it per frame.
    return (x + 0.002).clamp(-1.0, 1.0).to(torch.float32).contiguous()
