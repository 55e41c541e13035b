"""The SD1/SD2/SDXL denoising UNet in the original CompVis/LDM layout.

Attribute names are the single-file checkpoint keys with `model.diffusion_model.` stripped, so a checkpoint loads with
one strict `load_state_dict`. The config is a small dict (see `sd_core.model_config.SD15_UNET`); per-level block counts
and transformer depths are lists so distilled variants (BK-SDM: fewer ResBlocks, no middle block) fit the same code.
SDXL adds `label_emb` (`adm_in_channels` > 0): a vector `y` (pooled text and size embeddings) mapped to the width of the
timestep embedding and added to it, as the original `sgm` UNet does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention, group_norm, timestep_embedding
from .layers import add_channel_bias, add_residual, geglu, silu_


def _per_level(value: int | list[int], levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    if len(value) != levels:
        raise ValueError(f"UNet config: {name} has {len(value)} entries, channel_mult has {levels}")
    return [int(v) for v in value]


def unet_config(config: dict) -> dict:
    """Complete a UNet config: ints become per-level lists, output-side counts default to the LDM rule (input + 1).

    Keys: in_channels, out_channels, model_channels, channel_mult, num_res_blocks, transformer_depth, context_dim,
    num_heads / num_head_channels (-1 = unused; SD1 has 8 heads, SD2 64-channel heads), use_linear_in_transformer,
    optional: num_res_blocks_output, transformer_depth_output (per level, level order), mid_block (bool, default True),
    transformer_depth_middle (int, default 1; 0 = two ResBlocks and no transformer), adm_in_channels (int, default
    0: no `label_emb`; SDXL 2816, its refiner 2560)."""
    cfg = dict(config)
    levels = len(cfg["channel_mult"])
    cfg["channel_mult"] = [int(m) for m in cfg["channel_mult"]]
    cfg["num_res_blocks"] = _per_level(cfg["num_res_blocks"], levels, "num_res_blocks")
    cfg["transformer_depth"] = _per_level(cfg["transformer_depth"], levels, "transformer_depth")
    out_blocks = cfg.get("num_res_blocks_output") or [n + 1 for n in cfg["num_res_blocks"]]
    cfg["num_res_blocks_output"] = _per_level(out_blocks, levels, "num_res_blocks_output")
    out_depth = cfg.get("transformer_depth_output", cfg["transformer_depth"])
    cfg["transformer_depth_output"] = _per_level(out_depth, levels, "transformer_depth_output")
    cfg.setdefault("mid_block", True)
    cfg.setdefault("transformer_depth_middle", 1)
    cfg.setdefault("num_heads", -1)
    cfg.setdefault("num_head_channels", -1)
    cfg.setdefault("use_linear_in_transformer", False)
    cfg["adm_in_channels"] = int(cfg.get("adm_in_channels") or 0)
    # every input block leaves one skip tensor, every output block takes one
    if sum(cfg["num_res_blocks_output"]) != sum(cfg["num_res_blocks"]) + levels:
        raise ValueError("UNet config: output blocks must consume exactly the skip connections of the input blocks")
    if (cfg["num_heads"] == -1) == (cfg["num_head_channels"] == -1):
        raise ValueError("UNet config: set exactly one of num_heads and num_head_channels")
    return cfg


class ResBlock(nn.Module):
    """Two 3x3 convs with the timestep embedding added in between; 1x1 `skip_connection` when channels change."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            group_norm(out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        if channels != out_channels:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)
        else:
            self.skip_connection = nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # = skip(x) + out_layers(in_layers(x) + emb_layers(emb)); written out so that packed layers fuse the adds
        h = add_channel_bias(self.in_layers[2], silu_(self.in_layers[0](x)), self.emb_layers(emb))
        h = self.out_layers[2](silu_(self.out_layers[0](h)))
        return add_residual(self.out_layers[3], h, self.skip_connection(x))


class CrossAttention(nn.Module):
    """Attention from image tokens to `context` (or to themselves when context is None)."""

    attention_dtype: torch.dtype | None = None  # compute the attention core in this dtype (None: the inputs')
    attention_chunk: int | None = None  # query rows per attention call (None: all at once)

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    # (context, k, v) while `UNetModel.reusing_text_projections()` is active (() before the first call); None: off
    _text_kv: tuple | None = None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`to_out(attention)`, plus `residual` when given (added inside the output projection when it is packed)."""
        if context is None:
            k, v = self.to_k(x), self.to_v(x)
        else:
            k, v = self._context_kv(context)
        out = attention(self.to_q(x), k, v, self.heads, dtype=self.attention_dtype, chunk=self.attention_chunk)
        if residual is None:
            return self.to_out(out)
        return add_residual(self.to_out[0], self.to_out[1](out), residual)

    def _context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the text context; reused while the same context tensor comes back, when enabled."""
        memo = self._text_kv
        if memo and memo[0] is context:
            return memo[1], memo[2]
        k, v = self.to_k(context), self.to_v(context)
        if memo is not None and not torch.is_grad_enabled():
            self._text_kv = (context, k, v)  # holding the context also keeps its id from being reused
        return k, v


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, the second half gates the first."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return geglu(self.proj, x)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net[1](self.net[0](x))
        return self.net[2](h) if residual is None else add_residual(self.net[2], h, residual)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text, GEGLU feed-forward; each with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x), residual=x)
        x = tile_batch(x, context.shape[0])  # shared CFG rows part here: the text enters at attn2
        x = self.attn2(self.norm2(x), context, residual=x)
        return self.ff(self.norm3(x), residual=x)


class SpatialTransformer(nn.Module):
    """Image features as a token sequence through `depth` transformer blocks. SD1 projects in/out with 1x1 convs,
    SD2 with Linear layers (`use_linear`); the weights differ only in shape, the maths is the same."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = group_norm(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        t = self.norm(x)
        if not self.use_linear:
            t = self.proj_in(t)
        t = t.flatten(2).transpose(1, 2)
        if self.use_linear:
            t = self.proj_in(t)
        for block in self.transformer_blocks:
            t = block(t, context)
        x = tile_batch(x, t.shape[0])
        b = x.shape[0]
        if not self.use_linear:
            return add_residual(self.proj_out, t.transpose(1, 2).reshape(b, -1, h, w), x)
        x_tokens = x.flatten(2).transpose(1, 2)  # a view; contiguous when x is channels_last
        if x_tokens.is_contiguous():
            return add_residual(self.proj_out, t, x_tokens).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.proj_out(t).transpose(1, 2).reshape(b, -1, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 (or to `size`, so latents that are not a multiple of 8 still line up with the skips), then a conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class Block(nn.ModuleList):
    """One `input_blocks.N` / `output_blocks.N` / `middle_block` entry: layers indexed 0, 1, 2 as in the checkpoint."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, size: torch.Size | None = None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = tile_batch(x, emb.shape[0]) if emb.shape[0] > x.shape[0] else x  # SDXL: per-context emb
                x = layer(x, emb if emb.shape[0] == 1 else tile_batch(emb, x.shape[0]))
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


def tile_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """`t` repeated along the batch to `batch` rows ([t, t, ...]; `t` itself when it has them already)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise ValueError(f"cannot tile a batch of {t.shape[0]} to {batch}")
    return torch.cat([t] * (batch // t.shape[0]))  # cat keeps channels_last


class UNetModel(nn.Module):
    """`forward(x, timesteps, context)`: x [B, in_channels, h, w]; timesteps [B] (or a scalar), may be fractional;
    context [B, T, context_dim] or [k*B, T, context_dim]. Inputs are cast to the weights' dtype; the output is in the
    weights' dtype, with as many rows as `context`.

    A context with k times x's rows means "each x row under k contexts" (classifier-free guidance: k = 2, context
    [uncond, cond]), the same as passing x repeated k times ([x, x]), but everything before the text first enters (the
    input conv, the first ResBlock, the first self-attention) runs once per x row instead of k times.

    `share_timestep_embedding`: when the whole batch has one timestep (CFG halves, any batch of one sampling run),
    compute its embedding once and broadcast it. The same maths, but a one-row matrix product rounds differently
    from a many-row one: off by default, so that the plain model does the reference's operations one for one.
    `sd_core.accel` turns it on with the packed CPU layers, which fold that one row into the ResBlock convs' bias."""

    share_timestep_embedding: bool = False

    def __init__(self, config: dict):
        super().__init__()
        cfg = unet_config(config)
        self.config = cfg
        mc = cfg["model_channels"]
        emb_ch = mc * 4
        levels = len(cfg["channel_mult"])

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            if cfg["num_head_channels"] == -1:
                heads, dim_head = cfg["num_heads"], ch // cfg["num_heads"]
            else:
                heads, dim_head = ch // cfg["num_head_channels"], cfg["num_head_channels"]
            return SpatialTransformer(ch, heads, dim_head, depth, cfg["context_dim"], cfg["use_linear_in_transformer"])

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if cfg["adm_in_channels"]:
            adm = cfg["adm_in_channels"]
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(adm, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)))
        else:
            self.label_emb = None

        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(cfg["in_channels"], mc, 3, padding=1)])])
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(cfg["channel_mult"]):
            for _ in range(cfg["num_res_blocks"][level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, mc * mult)]
                ch = mc * mult
                if cfg["transformer_depth"][level]:
                    layers.append(transformer(ch, cfg["transformer_depth"][level]))
                self.input_blocks.append(Block(layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(Block([Downsample(ch)]))
                skip_channels.append(ch)

        if cfg["mid_block"]:
            middle: list[nn.Module] = [ResBlock(ch, emb_ch, ch)]
            if cfg["transformer_depth_middle"]:
                middle.append(transformer(ch, cfg["transformer_depth_middle"]))
            middle.append(ResBlock(ch, emb_ch, ch))
            self.middle_block = Block(middle)
        else:
            self.middle_block = None

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            mult = cfg["channel_mult"][level]
            count = cfg["num_res_blocks_output"][level]
            for i in range(count):
                layers = [ResBlock(ch + skip_channels.pop(), emb_ch, mc * mult)]
                ch = mc * mult
                if cfg["transformer_depth_output"][level]:
                    layers.append(transformer(ch, cfg["transformer_depth_output"][level]))
                if level and i == count - 1:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Block(layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg["out_channels"], 3, padding=1))

    @contextmanager
    def reusing_text_projections(self) -> Iterator[None]:
        """Within this block every cross-attention computes the K and V projections of a text context once and
        reuses them while the same context tensor comes back: a sampling run passes one context at every step, and
        those projections do not depend on the step (SD1.5: 2% of a UNet step at 256x256, recomputed every step by
        diffusers). Same operations on the same inputs, so the same results; the cache lives only inside the block,
        and a context modified in place inside it would go unnoticed (sampling never does that)."""
        layers = [m for m in self.modules() if isinstance(m, CrossAttention)]
        for m in layers:
            m._text_kv = ()
        try:
            yield
        finally:
            for m in layers:
                m._text_kv = None

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`y` [1 or context rows, adm_in_channels]: SDXL's vector (required exactly when the model has `label_emb`)."""
        dtype = self.time_embed[0].weight.dtype
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if self.share_timestep_embedding and t.shape[0] > 1 and bool((t == t[0]).all()):
            t = t[:1]  # one shared timestep (CFG halves, a batch): one embedding row for all
        emb = self.time_embed(timestep_embedding(t, self.config["model_channels"]).to(dtype))
        if (y is None) != (self.label_emb is None):
            raise ValueError("the UNet takes a vector y exactly when it has label_emb (SDXL)")
        if y is not None:
            label = self.label_emb(y.to(dtype))
            if 1 not in (emb.shape[0], label.shape[0]):
                emb = tile_batch(emb, label.shape[0])  # [B] timesteps under k contexts: [emb, emb, ...]
            emb = emb + label
        context = context.to(dtype)
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        if self.middle_block is not None:
            h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, tile_batch(skips.pop(), h.shape[0])], dim=1)
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return tile_batch(self.out(h), context.shape[0]).contiguous()  # LowVRAM offloads the UNet as one unit
