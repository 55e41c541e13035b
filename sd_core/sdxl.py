"""SDXL's conditioning: both text towers with A1111's prompt syntax, and the vector of pooled text and sizes.

As diffusers' `StableDiffusionXLPipeline` computes it (the reference the parity tests hold sd_core to): each tower's
penultimate hidden states without the final layer norm (`clip_skip` k moves both k - 1 layers earlier, as diffusers'),
CLIP-L's and bigG's side by side; the pooled output is bigG's, projected. The UNet's vector is that pooled output and
the size numbers: original size (height, width), crop (top, left) and target size (height, width), each defaulting to
the size being made and (0, 0); the refiner has an aesthetic score (6.0, negative 2.5) instead of the target size.
Overrides apply to both halves of the CFG batch, as diffusers' (its `negative_*` sizes are not offered).

A1111's prompt syntax applies per tower as A1111 does it: the same 75-token chunks for both (CLIP-L padded with
end-of-text, bigG with 0), emphasis on each tower's hidden states, the pooled output from the first chunk. Prompts of
up to 75 tokens without weights give exactly diffusers' conditioning. Textual-inversion embeddings (`clip_l`/`clip_g`)
take the same token places in both towers, each tower its own vectors.

An empty negative prompt: A1111 zeroes the negative text conditioning of SDXL models (hidden states and pooled
output, the size numbers kept), which is what diffusers does when no negative prompt is given at all to a model with
`force_zeros_for_empty_prompt` (the base and inpainting models). sd_core follows A1111: `empty_negative="zeros"`
by default for SDXL models, "encode" (the empty text encoded, as diffusers with `negative_prompt=""` and ComfyUI) on
request; SD1/SD2 encode it by default (A1111) and may ask for "zeros".
"""

from __future__ import annotations

from typing import Any

import torch

from . import embeddings, limits
from .model_config import ModelConfig
from .models.conditioner import size_vector
from .prompt import encode_with_weights, tokenize_prompt_with_embeddings

DEFAULT_AESTHETIC_SCORE = 6.0
DEFAULT_NEGATIVE_AESTHETIC_SCORE = 2.5
SIZE_FIELDS = ("original_size", "crops_coords_top_left", "target_size")
# (width, height) of SDXL's training sizes around one megapixel that UIs offer (A1111 and ComfyUI users' lists; the
# SDXL report trained on aspect buckets of about 1024x1024 pixels), landscape then portrait
SIZES = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)
AESTHETIC_FIELDS = ("aesthetic_score", "negative_aesthetic_score")


def takes(config: ModelConfig) -> tuple[str, ...]:
    """The size-conditioning settings a model takes: the base and inpainting models the sizes and crop, the refiner
    original size, crop and aesthetic scores, SD1/SD2 none."""
    if not config.sdxl:
        return ()
    return SIZE_FIELDS[:2] + AESTHETIC_FIELDS if config.aesthetic else SIZE_FIELDS


def check_settings(s: Any, config: ModelConfig, mode: str) -> None:
    """Refuse the size-conditioning settings neither the model nor its refiner takes, naming the first one given, and
    a refiner where it cannot take over (`check_refiner`)."""
    accepted = set(takes(config))
    if s.refiner is not None:
        check_refiner(s, config, mode)
        accepted |= set(takes(s.refiner.config))
    for name in SIZE_FIELDS + AESTHETIC_FIELDS:
        if getattr(s, name) is not None and name not in accepted:
            who = f"an {config.family} model" + (
                "" if s.refiner is None else f" and an {s.refiner.config.family} refiner"
            )
            raise limits.SettingError(name, f"{name}: not a conditioning of {who}")


def check_refiner(s: Any, config: ModelConfig, mode: str) -> None:
    """A refiner takes over txt2img or img2img latents of the same latent space, without hires fix or inpainting
    channels."""
    refiner = s.refiner
    why = None
    if mode not in ("txt2img", "img2img"):
        why = f"a refiner applies to txt2img and img2img, not to {mode}"
    elif s.hires is not None:
        why = "a refiner cannot be combined with hires fix"
    elif not all(hasattr(refiner, name) for name in ("unet", "config", "encode_prompt", "guided_denoiser")):
        why = f"refiner must be a loaded pipeline (sd_core.load), got {type(refiner).__name__}"
    elif config.inpainting or refiner.config.inpainting:
        why = "a refiner and the model it refines must both be ordinary (4-channel) models"
    elif refiner.config.latent_scale != config.latent_scale or refiner.config.vae != config.vae:
        why = f"the refiner ({refiner.config.family}) does not share the {config.family} model's latent space"
    if why:
        raise limits.SettingError("refiner", why)


def empty_negative(value: str | None, config: ModelConfig) -> str:
    """What an empty negative prompt means on this model: `value` ("zeros" or "encode"), or the model's rule."""
    return value or ("zeros" if config.sdxl else "encode")


def encode_prompt(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    clip_skip: int,
    *,
    zero_negative: bool = False,
    lookup: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cond, uncond, pooled, pooled_uncond): contexts [1, 77 * k, width] and pooled outputs [1, P], float32.
    `zero_negative`: the uncond halves are zeros (the empty negative prompt's "zeros" rule), not encoded. `lookup`:
    the textual-inversion embeddings made for these towers (`embeddings.EmbeddingLookup`); each tower gets its own
    part of an embedding's vectors (`clip_l` CLIP-L, `clip_g` bigG) at the same token places."""
    config, towers = pipe.config, pipe.text_encoder.embedders
    skips = [skip + clip_skip - 1 for skip in config.text_skips]
    for skip, tower in zip(skips, towers, strict=True):
        if skip >= len(tower.text_model.encoder.layers):
            raise limits.SettingError("clip_skip", f"clip_skip {clip_skip} leaves no layer of the text encoder")

    def tokenize(text: str, pad: int, chunks: int = 1) -> tuple:
        return tokenize_prompt_with_embeddings(
            text, pipe.tokenizer, pad_token=pad, min_chunks=chunks, embeddings=lookup or None
        )

    chunks = 1
    for text in (prompt, negative_prompt):
        chunks = max(chunks, len(tokenize(text, 0)[0]))
    out = []
    for text in (prompt,) if zero_negative else (prompt, negative_prompt):
        parts, pooled = [], None
        for n, (tower, skip, pad) in enumerate(zip(towers, skips, config.pad_tokens, strict=True)):
            tokens, weights, fixes = tokenize(text, pad, chunks)
            last = n == len(towers) - 1

            def encode(
                t: torch.Tensor,
                tower: Any = tower,
                skip: int = skip,
                last: bool = last,
                n: int = n,
                fixes: list = fixes,
            ) -> torch.Tensor:
                nonlocal pooled
                embeds = None
                if fixes:  # textual inversion: on the embedding's device (LowVRAM brings the tower in after)
                    token_embedding = tower.text_model.embeddings.token_embedding
                    at = token_embedding.weight.device
                    embeds = embeddings.token_embeddings(token_embedding, t.to(at), fixes, n).to(pipe.device)
                hidden, pool = tower.hidden_and_pooled(t.to(pipe.device), skip, pooled=last, token_embeds=embeds)
                if pool is not None:
                    pooled = pool[:1].float()  # A1111: the first chunk's
                return hidden.float()

            parts.append(encode_with_weights(encode, tokens, weights))
        assert pooled is not None
        out.append((torch.cat(parts, dim=-1), pooled))
    if zero_negative:  # the same shapes as the encoded text: both are padded to the same number of chunks
        out.append((torch.zeros_like(out[0][0]), torch.zeros_like(out[0][1])))
    (cond, pooled_cond), (uncond, pooled_uncond) = out
    return cond, uncond, pooled_cond, pooled_uncond


def vectors(
    config: ModelConfig, s: Any, pooled: torch.Tensor, pooled_uncond: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's vectors `y` (cond, uncond) for an image of `height` x `width` pixels."""
    size = (height, width)
    original = s.original_size or size
    crop = s.crops_coords_top_left or (0, 0)
    if config.aesthetic:
        score = DEFAULT_AESTHETIC_SCORE if s.aesthetic_score is None else s.aesthetic_score
        negative = s.negative_aesthetic_score
        negative = DEFAULT_NEGATIVE_AESTHETIC_SCORE if negative is None else negative
        ids, negative_ids = [*original, *crop, score], [*original, *crop, negative]
    else:
        ids = negative_ids = [*original, *crop, *(s.target_size or size)]
    dim = config.size_embed_dim
    return (
        size_vector(pooled, torch.tensor([ids], dtype=torch.float32), dim),
        size_vector(pooled_uncond, torch.tensor([negative_ids], dtype=torch.float32), dim),
    )
