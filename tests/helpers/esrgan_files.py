"""Random-weight ESRGAN-family (RRDBNet) model files, written by the tests themselves in the key layouts users have.

The weights are built key by key from the layout's description (not from sd_core's network), so that loading them
tests sd_core's reading of real files: the BasicSR / Real-ESRGAN layout (`conv_first`, `body.N.rdbj.convk`,
`conv_body`, `conv_upK`, `conv_hr`, `conv_last`) and the original ESRGAN layout (`model.0`,
`model.1.sub.N.RDBj.convk.0`, `model.1.sub.{blocks}`, `model.3`, `model.6`, ..., the HR conv and the last conv).
"""

from __future__ import annotations

from pathlib import Path

import torch

# scale -> (pixel-unshuffle factor of the input, 2x upsamplings), as Real-ESRGAN's x1, x2 and x4 models
_SHAPE_OF_SCALE = {1: (4, 2), 2: (2, 2), 4: (1, 2), 8: (1, 3)}


def rrdb_weights(
    scale: int = 4, *, features: int = 8, growth: int = 4, blocks: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """BasicSR-layout weights of a tiny RRDBNet. Scaled so that activations neither vanish nor blow up, and the
    last bias is 0.5: the output is a mid-grey picture that varies with the input, not a clamped flat image."""
    unshuffle, upsamples = _SHAPE_OF_SCALE[scale]
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int) -> None:
        out[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (0.8 / (9 * cin) ** 0.5)
        out[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.02

    conv("conv_first", 3 * unshuffle**2, features)
    for n in range(blocks):
        for j in (1, 2, 3):
            for k in range(1, 6):
                conv(f"body.{n}.rdb{j}.conv{k}", features + (k - 1) * growth, growth if k < 5 else features)
    conv("conv_body", features, features)
    for k in range(1, upsamples + 1):
        conv(f"conv_up{k}", features, features)
    conv("conv_hr", features, features)
    conv("conv_last", features, 3)
    out["conv_last.bias"] += 0.5
    return out


def original_layout(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under the original ESRGAN keys."""
    blocks = len({k.split(".")[1] for k in weights if k.startswith("body.")})
    upsamples = len({k for k in weights if k.startswith("conv_up")}) // 2
    top = {"conv_first": "model.0", "conv_body": f"model.1.sub.{blocks}"}
    top |= {f"conv_up{k}": f"model.{3 * k}" for k in range(1, upsamples + 1)}
    top |= {"conv_hr": f"model.{3 * upsamples + 2}", "conv_last": f"model.{3 * upsamples + 4}"}
    out = {}
    for key, value in weights.items():
        name, kind = key.rsplit(".", 1)
        if name in top:
            out[f"{top[name]}.{kind}"] = value
        else:
            _, n, rdb, conv = name.split(".")
            out[f"model.1.sub.{n}.RDB{rdb[-1]}.{conv}.0.{kind}"] = value
    return out


def write_model(path: Path, weights: dict[str, torch.Tensor], wrapper: str | None = None) -> Path:
    """`weights` as a `.safetensors` file, or a torch pickle (`.pth`/`.pt`), optionally wrapped as Real-ESRGAN's
    files are (`{"params_ema": weights}`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    else:
        torch.save({wrapper: weights} if wrapper else weights, path)
    return path
