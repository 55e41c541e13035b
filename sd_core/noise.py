"""The start noise of each image of a batch, as A1111 makes it: per-image seeds, variation seeds, seed resize.

- Seeds: image k of a batch has the seed `seed + k` and its own CPU generator seeded with it; everything random
  about the image is drawn from that generator (`sd_core.modes`).
- Variation seeds (`subseed`, `subseed_strength` s > 0): the start noise is `slerp(s, noise, subnoise)`, where
  `subnoise` is drawn from a fresh generator seeded with image k's subseed, `subseed + k`. As A1111, the images of
  such a batch all keep the seed `seed` (only the subseed counts up), so they share their main noise and their
  sampler noise and differ by their variation; s = 1 is the subseed's own start noise.
- Seed resize (`seed_resize_from` = (w, h)): the seed's noise (and subnoise) is drawn at that size, from a fresh
  generator seeded with the seed, and pasted centred into the image's own-size noise (cropped where larger), so a
  picture found at w x h keeps its composition at another size. The rest of the own-size noise is the image
  generator's draw, as without resize.

`slerp` is A1111's: spherical interpolation of each noise vector along the latent's rows (dimension 1 of
[C, H, W]), falling back to a plain linear mix (with A1111's weights, `low * s + high * (1 - s)`) where the two are
nearly parallel. With s = 0 and no resize, the noise is exactly the plain per-image draw.
"""

from __future__ import annotations

import torch

from .samplers._core import randn
from .settings import GenerationSettings

PARALLEL = 0.9995  # mean cosine above which A1111's slerp mixes linearly


def image_seeds(s: GenerationSettings) -> list[int]:
    """The seed of each image of a batch (A1111): `seed + k` for image k, or `seed` for all with a variation seed."""
    assert s.seed is not None, "settings must be resolved"
    return [s.seed + (0 if s.subseed_strength else k) for k in range(s.batch_size)]


def image_subseeds(s: GenerationSettings) -> list[int] | None:
    """The variation seed of each image (`subseed + k`), or None without a variation (strength 0)."""
    if not s.subseed_strength:
        return None
    assert s.subseed is not None, "settings must be resolved"
    return [s.subseed + k for k in range(s.batch_size)]


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation from `low` (strength 0) to `high` (1) of two [C, H, W] noises: the angle
    between each pair of vectors along dimension 1, the sines of its parts as weights."""
    unit_low = low / low.norm(dim=1, keepdim=True)
    unit_high = high / high.norm(dim=1, keepdim=True)
    cosine = (unit_low * unit_high).sum(1)
    if cosine.mean() > PARALLEL:
        return low * strength + high * (1 - strength)
    angle = torch.acos(cosine)
    sine = torch.sin(angle)
    weight_low = (torch.sin((1.0 - strength) * angle) / sine).unsqueeze(1)
    weight_high = (torch.sin(strength * angle) / sine).unsqueeze(1)
    return weight_low * low + weight_high * high


def _draw(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def paste_centred(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """`big` ([C, H, W]) with `small` ([C, h, w]) put over its centre, A1111's way: offsets (H - h) // 2 and
    (W - w) // 2 (floored, so a larger `small` is cropped one cell more on its left/top side when the difference is
    odd); where `small` is larger, only as much as fits both is copied."""
    out = big.clone()
    spans = []
    for axis in (1, 2):
        offset = (big.shape[axis] - small.shape[axis]) // 2
        length = small.shape[axis] if offset >= 0 else small.shape[axis] + 2 * offset
        spans.append((max(offset, 0), max(-offset, 0), length))  # (in big, in small, length)
    (ty, sy, h), (tx, sx, w) = spans
    out[:, ty : ty + h, tx : tx + w] = small[:, sy : sy + h, sx : sx + w]
    return out


def start_noise(shape: tuple[int, ...], s: GenerationSettings, generators: list[torch.Generator]) -> torch.Tensor:
    """The start noise [B, C, H, W] of resolved settings `s`, image k drawn from `generators[k]` (the image's own
    generator, at its current position) with the variation and resize of `s`; then times the noise multiplier."""
    subseeds = image_subseeds(s)
    resize = s.seed_resize_from
    small = None if resize is None else (shape[1], resize[1] // 8, resize[0] // 8)
    if small == tuple(shape[1:]):
        small = None
    if subseeds is None and small is None:
        noise = randn(shape, generators)
    else:
        rows = []
        for k, (seed, generator) in enumerate(zip(image_seeds(s), generators, strict=True)):
            own = randn((1, *shape[1:]), generator)[0]
            noise = own if small is None else _draw(seed, small)
            if subseeds is not None:
                noise = slerp(s.subseed_strength, noise, _draw(subseeds[k], tuple(noise.shape)))
            rows.append(noise if small is None else paste_centred(noise, own))
        noise = torch.stack(rows)
    if s.initial_noise_multiplier != 1.0:
        noise = noise * s.initial_noise_multiplier
    return noise
