"""3x3 convolutions with Winograd's minimal filtering F(4x4, 3x3): 36 multiply-adds per 4x4 output tile and channel
pair instead of 144, for the wide, large layers where a 2-core CPU spends its time (the UNet's 320/640-channel
levels, the VAE decoder), at float32 rounding (relative error ~1e-5 of the output's scale instead of ~3e-6).

Each 6x6 input tile d and 3x3 kernel g map to 6x6 "transformed" tiles (B^T d B, G g G^T); their elementwise product
summed over input channels is 36 independent GEMMs, and A^T (...) A folds each 6x6 product tile into a 4x4 output tile
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015). All three transforms are small matrix
products here too, so every step runs in BLAS: the kernel's as one Kronecker product of the 1-D matrices, the input's
and output's in two passes, rows then columns: a third (input) and under half (output) of the multiply-adds of one
Kronecker product; measured on Zen 4, a whole convolution 0.90-1.00x the time (most at 128-256 channels), a VAE decode
at 256x256 batch 4 0.89x, a UNet call 0.98x.

Memory: the transformed kernel is 4x the kernel (36 vs 9 taps) and is built per call, never kept (keeping them would
cost 4x the weights of every layer that uses this); input and output tiles are worked through in bands of tile rows,
each step's buffer about `band_bytes` (more where a band needs MIN_BAND_TILES tiles), allocated once per call and
reused by every band, so the data stays in cache between the transforms and the GEMMs and the allocator is left with
little freed heap. Only float32: in bf16/fp16 the transforms' growth (coefficients up to 8 and 1/24) costs too much
precision.
"""

from __future__ import annotations

import torch

# 1-D transforms for F(4, 3) with interpolation points 0, +-1, +-2, infinity
_BT = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def _kron(m: tuple) -> torch.Tensor:
    """The 2-D transform X -> M X M^T as one matrix on row-major flattened tiles (computed in float64, then rounded)."""
    t = torch.tensor(m, dtype=torch.float64)
    return torch.kron(t, t).float()


_KERNEL = _kron(_G)  # [36, 9]
_BT_1D = torch.tensor(_BT, dtype=torch.float32)  # [6, 6]
_AT_1D = torch.tensor(_AT, dtype=torch.float32)  # [4, 6]


def _transform_rows_then_columns(m: torch.Tensor, tiles: torch.Tensor, half: torch.Tensor, out: torch.Tensor) -> None:
    """out = M X M^T for every tile X in `tiles` ([6, 6, ...], the tile's row and column first): rows in one GEMM into
    `half` ([k, 6, ...]), then columns in one batched GEMM per output row into `out` ([k, k, ...])."""
    k = m.shape[0]
    rest = tiles[0, 0].numel()
    torch.mm(m, tiles.view(6, 6 * rest), out=half.view(k, 6 * rest))
    torch.bmm(m.expand(k, k, 6), half.view(k, 6, rest), out=out.view(k, k, rest))


BAND_BYTES = 8 << 20  # per step's buffer; measured on Zen 3: 8 MB beat 4 and 16 MB
MIN_BAND_TILES = 128  # rows of each band's GEMMs: thinner bands make slow GEMMs (1920->640 channels: 0.81x vs 0.66x)
MIN_SLICE = 64  # output channels per kernel slice, for the same reason
MIN_CHANNELS = 128  # the VAE decoder's narrowest level; measured 0.74x there (8 MB bands)
MIN_TILES = 64  # 4x4 output tiles per call; below, building the 4x larger kernel costs about what it saves


def applies(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """Whether `conv(x)` is a case this module handles and, by measurement on 2-core CPUs, speeds up: a float32 CPU
    3x3 conv, stride 1, padding 1, no groups, both channel counts >= MIN_CHANNELS, output a whole number of 4x4 tiles,
    at least MIN_TILES of them (on Zen 4, AVX-512: 0.53-0.81x oneDNN's time per SD1.5 convolution, 1.00x at 16x16)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return False
    if tuple(conv.kernel_size) != (3, 3) or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    if list(conv.padding) != [1, 1] or list(conv.stride) != [1, 1] or list(conv.dilation) != [1, 1]:
        return False
    n, _, h, w = x.shape
    if h % 4 or w % 4 or min(conv.in_channels, conv.out_channels) < MIN_CHANNELS:
        return False
    return n * (h // 4) * (w // 4) >= MIN_TILES


def transformed_kernel(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """[C_out, C_in, 3, 3] -> [36, C_in, C_out]: G g G^T per (out, in) pair, laid out for the 36 GEMMs (written into
    `out`, a buffer of at least 36 * C_out * C_in elements, when given)."""
    co, ci = weight.shape[:2]
    flat = None if out is None else out[: 36 * co * ci].view(36, co * ci)
    return torch.mm(_KERNEL, weight.reshape(co * ci, 9).T, out=flat).view(36, co, ci).transpose(1, 2)


def conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    band_bytes: int = BAND_BYTES,
) -> torch.Tensor:
    """`conv2d(x, weight, bias, padding=1) (+ residual)` for float32 [N, C, H, W] with H, W multiples of 4; the result
    is channels_last (the layout the tiles come out in).

    Every intermediate lives in six buffers allocated once per call and reused by every band and kernel slice:
    freshly allocated per step, the allocator kept 100-190 MB of freed heap per call (measured on the VAE's levels)."""
    n, ci, h, w = x.shape
    co = weight.shape[0]
    if weight.shape != (co, ci, 3, 3) or h % 4 or w % 4:
        raise ValueError(
            f"conv3x3 needs a [C_out, {ci}, 3, 3] kernel and H, W multiples of 4; "
            f"got kernel {tuple(weight.shape)} for input {tuple(x.shape)}"
        )
    th, tw = h // 4, w // 4
    weight = weight.float()
    # the 4x kernel in slices of output channels within the band budget (a 640x640 kernel is 59 MB in one piece);
    # with one band each slice is built into one buffer just before use, with several the whole is built once
    step = min(co, max(MIN_SLICE, -(-max(1, band_bytes // (36 * ci * 4)) // 16) * 16))
    # bands within the byte budget, but at least MIN_BAND_TILES tiles each: thinner bands make slow GEMMs
    rows = min(th, max(-(-MIN_BAND_TILES // (n * tw)), band_bytes // (36 * n * tw * max(ci, co) * 4)))
    whole_kernel = transformed_kernel(weight) if rows < th else None
    tiles_most = n * rows * tw
    band_buf = x.new_zeros((n, 4 * rows + 2, w + 2, ci))  # the two border columns stay zero
    tiles_or_m = x.new_empty(36 * tiles_most * max(ci, step))  # input tiles, then (once transformed) GEMM outputs
    v_buf = x.new_empty(36 * tiles_most * ci)
    y_buf = x.new_empty(16 * tiles_most * step)
    y_half_buf = x.new_empty(24 * tiles_most * step)  # the output transform's rows done, its columns not yet
    kernel_buf = x.new_empty(36 * step * ci) if whole_kernel is None else None
    pixels = x.permute(0, 2, 3, 1)  # NHWC view (free when x is channels_last)
    out = torch.empty((n, co, h, w), dtype=x.dtype, memory_format=torch.channels_last)
    out_pixels = out.permute(0, 2, 3, 1)
    res_pixels = None if residual is None else residual.permute(0, 2, 3, 1)
    for r0 in range(0, th, rows):
        r1 = min(th, r0 + rows)
        count = n * (r1 - r0) * tw
        # input rows 4*r0-1 .. 4*r1 into the band, zero rows above and below the image
        top, bottom = 4 * r0 - 1, 4 * r1 + 1
        band = band_buf[:, : bottom - top]
        if top < 0:
            band[:, 0].zero_()
        if bottom > h:
            band[:, h - top :].zero_()
        band[:, max(-top, 0) : min(bottom, h) - top, 1 : w + 1].copy_(pixels[:, max(top, 0) : min(bottom, h)])
        sn, sh = band.stride(0), band.stride(1)
        windows = band.as_strided((6, 6, n, r1 - r0, tw, ci), (sh, ci, sn, 4 * sh, 4 * ci, 1))
        # tiles into v_buf, their rows transformed into tiles_or_m, then the columns back into v_buf
        tiles = v_buf[: 36 * count * ci].view(6, 6, n, r1 - r0, tw, ci)
        tiles.copy_(windows)
        v = v_buf[: 36 * count * ci].view(36, count, ci)
        _transform_rows_then_columns(_BT_1D, tiles, tiles_or_m[: 36 * count * ci], v)
        for c0 in range(0, co, step):
            c1 = min(co, c0 + step)
            if whole_kernel is None:
                kernel = transformed_kernel(weight[c0:c1], out=kernel_buf)
            else:
                kernel = whole_kernel[:, :, c0:c1]
            m = torch.bmm(v, kernel, out=tiles_or_m[: 36 * count * (c1 - c0)].view(36, count, c1 - c0))
            y = y_buf[: 16 * count * (c1 - c0)].view(4, 4, n, r1 - r0, tw, c1 - c0)
            _transform_rows_then_columns(_AT_1D, m.view(6, 6, -1), y_half_buf[: 24 * count * (c1 - c0)], y)
            y = y.permute(2, 3, 0, 4, 1, 5)
            target = out_pixels[:, 4 * r0 : 4 * r1, :, c0:c1].view(n, r1 - r0, 4, tw, 4, c1 - c0)
            if res_pixels is not None:
                earlier = res_pixels[:, 4 * r0 : 4 * r1, :, c0:c1]
                torch.add(y, earlier.reshape(n, r1 - r0, 4, tw, 4, c1 - c0), out=target)
                if bias is not None:
                    target.add_(bias[c0:c1])
            elif bias is not None:
                torch.add(y, bias[c0:c1], out=target)
            else:
                target.copy_(y)
    return out
