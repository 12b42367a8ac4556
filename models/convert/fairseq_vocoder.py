"""Convert a fairseq CodeHiFiGAN vocoder checkpoint to safetensors for tolk-models.

Usage: python models/convert/fairseq_vocoder.py CHECKPOINT CONFIG_JSON OUT_DIR

CHECKPOINT is fairseq's `g_XXXXXXXX` (a torch pickle whose `["generator"]` is the state dict; a
bare state dict is accepted too). OUT_DIR receives `model.safetensors` (float32, fairseq's tensor
names) and a copy of `config.json`.

Weight norm is folded: every `P.weight_g` / `P.weight_v` pair becomes `P.weight = g * v / |v|`,
the norm taken over every dimension of v except the one g keeps (fairseq uses torch's default,
dim 0). For ConvTranspose1d the weight is (in_channels, out_channels, kernel), so dim 0 is the
*input* channel there: the dimension is read from g's shape, never assumed to be the output one.
Needs torch only.
"""

import json
import shutil
import sys
from pathlib import Path

import torch


def norm_dim(g: torch.Tensor, v: torch.Tensor) -> int:
    """The dimension weight norm was taken along: the one axis where g is not 1."""
    if g.dim() != v.dim():
        raise ValueError(f"weight_g {tuple(g.shape)} and weight_v {tuple(v.shape)} differ in rank")
    kept = [d for d in range(v.dim()) if g.shape[d] != 1]
    if len(kept) == 1 and g.shape[kept[0]] == v.shape[kept[0]]:
        return kept[0]
    if g.numel() == 1:
        return 0 if v.shape[0] == 1 else -1
    raise ValueError(f"weight_g {tuple(g.shape)} does not fit weight_v {tuple(v.shape)}")


def fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    g, v = g.double(), v.double()
    d = norm_dim(g, v)
    if d == -1:  # weight_norm(dim=None): one norm over the whole tensor
        return (g * v / v.norm()).float()
    dims = [i for i in range(v.dim()) if i != d]
    return (g * v / v.norm(dim=dims, keepdim=True)).float()


def convert(state: dict) -> dict:
    out = {}
    for name, t in state.items():
        if not torch.is_tensor(t):
            raise ValueError(f"{name}: not a tensor")
        if name.endswith(".weight_g"):
            prefix = name[: -len(".weight_g")]
            v = state.get(prefix + ".weight_v")
            if v is None:
                raise ValueError(f"{name} has no matching {prefix}.weight_v")
            out[prefix + ".weight"] = fold(t, v)
        elif name.endswith(".weight_v"):
            if name[: -len(".weight_v")] + ".weight_g" not in state:
                raise ValueError(f"{name} has no matching weight_g")
        else:
            out[name] = t.float() if t.is_floating_point() else t
    return {k: v.contiguous() for k, v in out.items()}


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    ckpt, config, out_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    from safetensors.torch import save_file  # noqa: PLC0415 (safetensors ships with torch setups)

    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = obj["generator"] if isinstance(obj, dict) and "generator" in obj else obj
    if not isinstance(state, dict):
        sys.exit(f"{ckpt}: no generator state dict found")
    json.loads(config.read_text())  # fail early on a broken config
    tensors = convert(state)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out_dir / "model.safetensors")
    if config.resolve() != (out_dir / "config.json").resolve():
        shutil.copyfile(config, out_dir / "config.json")
    print(f"{ckpt} -> {out_dir}/model.safetensors ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
