"""The maths of each LoRA-family layer: the change ΔW it makes to one weight, written once per kind.

A layer's new weight is W + m · scale · ΔW (m: the user's multiplier; scale: alpha / rank, 1 without alpha; an
explicit `scale` tensor wins), as A1111 and ComfyUI apply them:

- LoRA / LoCon (kohya, PEFT): ΔW = up @ down, both flattened to matrices (a 3x3 LoCon's down is [r, in, 3, 3], its up
  [out, r, 1, 1]); with a CP/Tucker `lora_mid` [r, r, kh, kw] (down and up 1x1) ΔW = Σ mid ⊗ up ⊗ down over both
  rank axes. rank = down's first dimension.
- LoHa: ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) (Hadamard product of two low-rank products); with Tucker cores t1/t2 each
  factor is Σ t ⊗ wa ⊗ wb (wa then [r, out]). rank = w1b's first dimension.
- LoKr: ΔW = w1 ⊗ w2 (Kronecker product), each factor given whole or as a low-rank pair (w2 also with a Tucker core);
  scale alpha / rank only when a pair is low-rank (rank = w1b's, else w2b's first dimension), else 1.
- Full: ΔW = `diff` (and the bias changes by `diff_b`).

All maths in float32 on the weight's device; the result is reshaped to the layer's weight (SD1's 1x1-conv
`proj_in` takes a LoRA trained on SD2's Linear and back, as A1111 does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = {
    "lora": ("lora_down.weight", "lora_up.weight"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "lokr": (),
    "full": ("diff",),
}
PARTS = (
    "lora_down.weight",
    "lora_up.weight",
    "lora_mid.weight",
    "alpha",
    "scale",
    "hada_w1_a",
    "hada_w1_b",
    "hada_w2_a",
    "hada_w2_b",
    "hada_t1",
    "hada_t2",
    "lokr_w1",
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2",
    "lokr_w2_a",
    "lokr_w2_b",
    "lokr_t2",
    "diff",
    "diff_b",
)
"""The key endings (after the layer's name and a dot) this module understands."""
UNSUPPORTED = {
    "dora_scale": "DoRA",
    "on_input": "IA3",
    "a1.weight": "GLoRA",
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "w_norm": "norm-layer",
    "b_norm": "norm-layer",
}
"""Key endings of LyCORIS kinds this engine does not apply: a file with them is refused, not half-applied."""


class LayerError(ValueError):
    """A layer's tensors that do not make a change of the layer's weight (the caller adds the file's name)."""


@dataclass(frozen=True)
class LayerChange:
    """One layer's tensors in a LoRA-family file: `parts` maps a key ending (`lora_down.weight`, ...) to its tensor;
    `scale_override` is a PEFT config's alpha / r where the file carries no `alpha` tensor."""

    kind: str
    parts: dict[str, torch.Tensor]
    scale_override: float | None = None

    @property
    def rank(self) -> int | None:
        p = self.parts
        if self.kind == "lora":
            return int(p["lora_down.weight"].shape[0])
        if self.kind == "loha":
            return int(p["hada_w1_b"].shape[0])
        if self.kind == "lokr":
            for name in ("lokr_w1_b", "lokr_w2_b"):
                if name in p:
                    return int(p[name].shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank (A1111's `calc_scale`): an explicit `scale` tensor wins; without alpha (or rank) 1.0."""
        if "scale" in self.parts:
            return float(self.parts["scale"])
        if self.scale_override is not None:
            return self.scale_override
        alpha, rank = self.parts.get("alpha"), self.rank
        if alpha is None or not rank:
            return 1.0
        return float(alpha) / rank

    def delta(self, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ΔW reshaped to `shape`, bias change or None), float32 on `device`, not yet scaled."""
        p = {name: t.to(device=device, dtype=torch.float32) for name, t in self.parts.items()}
        bias = p.get("diff_b")
        if self.kind == "lora":
            change = _lora(p)
        elif self.kind == "loha":
            change = _loha(p)
        elif self.kind == "lokr":
            change = _lokr(p, len(shape))
        else:
            change = p["diff"]
        if change.numel() != math.prod(shape):
            raise LayerError(f"the change has shape {list(change.shape)} but the model's layer {list(shape)}")
        return change.reshape(shape), bias

    def add_to(self, total: torch.Tensor | None, original: torch.Tensor, factor: float) -> torch.Tensor:
        """`total + factor · ΔW` in float32 (`total` None: start from a float32 copy of `original`, never written).
        A plain LoRA goes through one fused multiply-add (`addmm`): no ΔW is built, and the sum is written once."""
        if self.kind == "lora" and "lora_mid.weight" not in self.parts and "diff_b" not in self.parts:
            up = self.parts["lora_up.weight"].to(original.device, torch.float32).flatten(1)
            down = self.parts["lora_down.weight"].to(original.device, torch.float32).flatten(1)
            if up.shape[0] * down.shape[1] != original.numel():
                raise LayerError(
                    f"the change has shape {[up.shape[0], down.shape[1]]} but the model's layer {list(original.shape)}"
                )
            if total is None:
                return torch.addmm(original.float().reshape(up.shape[0], -1), up, down, alpha=factor).reshape(
                    original.shape
                )
            return total.view(up.shape[0], -1).addmm_(up, down, alpha=factor).view(original.shape)
        delta, _ = self.delta(tuple(original.shape), original.device)
        if total is None:
            return torch.add(original.float(), delta, alpha=factor)
        return total.add_(delta, alpha=factor)


def kind_of(parts: dict[str, torch.Tensor]) -> str:
    """Which kind a layer's key endings make, or LayerError naming what is missing."""
    names = set(parts)
    if names & {"lora_down.weight", "lora_up.weight"}:
        kind = "lora"
    elif any(n.startswith("hada_") for n in names):
        kind = "loha"
    elif any(n.startswith("lokr_") for n in names):
        kind = "lokr"
        if not ({"lokr_w1"} <= names or {"lokr_w1_a", "lokr_w1_b"} <= names):
            raise LayerError("a LoKr layer needs lokr_w1 or lokr_w1_a and lokr_w1_b")
        if not ({"lokr_w2"} <= names or {"lokr_w2_a", "lokr_w2_b"} <= names):
            raise LayerError("a LoKr layer needs lokr_w2 or lokr_w2_a and lokr_w2_b")
    elif "diff" in names:
        kind = "full"
    else:
        raise LayerError(f"only {sorted(names)}: no weights that change the layer")
    missing = [n for n in KINDS[kind] if n not in names]
    if missing:
        raise LayerError(f"a {kind} layer without {', '.join(missing)}")
    return kind


def tucker(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Σ core[i, j, k, l] · wa[i, p] · wb[j, r] -> [p, r, k, l]: a Tucker/CP-decomposed conv factor."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core, wb.flatten(1), wa.flatten(1))


def _lora(p: dict[str, torch.Tensor]) -> torch.Tensor:
    up, down = p["lora_up.weight"], p["lora_down.weight"]
    if "lora_mid.weight" in p:
        return tucker(p["lora_mid.weight"], up.flatten(1).T, down.flatten(1))
    return up.flatten(1) @ down.flatten(1)


def _loha(p: dict[str, torch.Tensor]) -> torch.Tensor:
    factors = []
    for i in (1, 2):
        wa, wb, core = p[f"hada_w{i}_a"], p[f"hada_w{i}_b"], p.get(f"hada_t{i}")
        factors.append(tucker(core, wa, wb) if core is not None else wa @ wb.flatten(1))
    if factors[0].shape != factors[1].shape:
        raise LayerError(f"LoHa factors of shapes {list(factors[0].shape)} and {list(factors[1].shape)}")
    return factors[0] * factors[1]


def _lokr(p: dict[str, torch.Tensor], dims: int) -> torch.Tensor:
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    if "lokr_w2" in p:
        w2 = p["lokr_w2"]
    elif "lokr_t2" in p:
        w2 = tucker(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
    else:
        w2 = p["lokr_w2_a"] @ p["lokr_w2_b"].flatten(1)
    if w2.dim() == 4 and w1.dim() == 2:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2)
