"""Each speed/memory lever of `sd_core.accel` against the plain modules: same outputs within float tolerance, and the
bookkeeping (unpacking, state dicts, offload moves, released pages) right. No timings here: `benchmarks/bench.py`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F
from model_fixtures import write_tiny_checkpoint
from torch import nn

import sd_core
from sd_core import accel, checkpoint, devices, tiling
from sd_core.accel import flops, packing
from sd_core.denoiser import GuidedDenoiser
from sd_core.models import attention, layers
from sd_core.models.text_encoder import CLIPTextEncoder
from sd_core.models.unet import GEGLU, CrossAttention
from sd_core.models.vae import AutoencoderKL
from sd_core.schedules import NoiseSchedule

torch.set_num_threads(1)
needs_onednn = pytest.mark.skipif(not packing.packing_available(), reason="oneDNN packed ops not available")
# oneDNN's bf16 kernels need AVX-512 or AVX-NE-CONVERT: on AVX2-only CPUs the bf16 cases of the packed-layer tests
# cannot run (what those CPUs do instead is tested: test_bf16_layers_stay_plain_where_onednn_has_no_bf16)
BF16_MARKS = pytest.mark.skipif(not packing.packing_available(torch.bfloat16), reason="no oneDNN bf16 on this CPU")
PACKED_DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=BF16_MARKS)]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def packed_copy(module: nn.Module, dtype: torch.dtype = torch.float32, blas: bool | None = None) -> nn.Module:
    """`module` packed; `blas` given: its linears through BLAS (True) or oneDNN (False) whatever this CPU's default."""
    out = copy.deepcopy(module).to(dtype)
    assert packing.pack_for_cpu(out) > 0
    if blas is not None:
        packing.use_blas_linears(out, blas)
    return out


# float32 linears run either way depending on the CPU (`packing.blas_linears_pay`): the parity tests cover both
LINEARS = pytest.mark.parametrize("blas", [False, True], ids=["onednn-linears", "blas-linears"])


# --- prepacked weights and fused epilogues ------------------------------------------------------------------------


@needs_onednn
@pytest.mark.parametrize(
    ("dtype", "blas"),
    [(torch.float32, False), (torch.float32, True), pytest.param(torch.bfloat16, False, marks=BF16_MARKS)],
    ids=["float32-onednn-linears", "float32-blas-linears", "bfloat16"],
)
@pytest.mark.parametrize("same_t", [False, True], ids=["own-timesteps", "shared-timestep"])
@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_packed_unet_matches_plain(variant, same_t, dtype, blas):
    """Packed convs/linears (float32 linears both ways), residual adds in the epilogues, GEGLU halves, and (shared
    timestep) the embedding folded into the conv bias: the same UNet output as the plain modules."""
    plain = tm.random_unet(variant).to(dtype)
    packed = packed_copy(plain, dtype, blas)
    x, t, context = tm.unet_call_inputs(variant, same_t=same_t)
    with torch.inference_mode():
        expected = plain(x, t, context).float()
        got = packed(x, t, context).float()
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, **TOL[dtype])


@needs_onednn
@pytest.mark.parametrize("same_t", [False, True], ids=["own-timesteps", "shared-timestep"])
@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_packed_unet_shares_the_text_free_layers_between_cfg_halves(variant, same_t):
    """x once under [uncond; cond] (the denoiser's CFG call) on packed layers = the plain UNet on [x; x]."""
    plain = tm.random_unet(variant)
    packed = packed_copy(plain)
    x, t, context = tm.unet_call_inputs(variant, same_t=same_t)
    twice = torch.cat([context, context.flip(0) * 0.5])
    with torch.inference_mode():
        expected = plain(torch.cat([x, x]), torch.cat([t, t]), twice)
        got = packed(x, t, twice)
    torch.testing.assert_close(got, expected, **TOL[torch.float32])


@needs_onednn
def test_bf16_layers_stay_plain_where_onednn_has_no_bf16(monkeypatch):
    """An AVX2-only CPU, where oneDNN refuses bf16 weights: a bf16 model keeps its plain layers and runs as before;
    float32 layers are still packed."""
    monkeypatch.setattr(packing, "packing_available", lambda dtype=torch.float32: dtype == torch.float32)
    plain = tm.random_unet("sd1").bfloat16()
    model = copy.deepcopy(plain)
    assert packing.pack_for_cpu(model) == 0 and not packing.is_packed(model)
    x, t, context = (a.bfloat16() for a in tm.unet_call_inputs("sd1"))
    with torch.inference_mode():
        torch.testing.assert_close(model(x, t, context), plain(x, t, context), rtol=0, atol=0)
    mixed = nn.Sequential(nn.Linear(4, 4).bfloat16(), nn.Linear(4, 4))
    assert packing.pack_for_cpu(mixed) == 1 and [type(m) for m in mixed] == [nn.Linear, packing.PackedLinear]


def _geglu_block(bias: bool) -> nn.Module:
    block = GEGLU(24, 40)
    if not bias:
        block.proj.bias = None
    with torch.no_grad():
        block.proj.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(5))
    return block.eval()


@needs_onednn
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_blas_linears_match_plain_and_keep_the_dense_weight(bias):
    """BLAS mode: linear, linear + residual and GEGLU give the plain results and use the checkpoint's own weight
    tensor (no packed copy, no split copies of the GEGLU halves)."""
    g = torch.Generator().manual_seed(6)
    linear = nn.Linear(24, 16, bias=bias).eval()
    geglu = _geglu_block(bias)
    x = torch.randn(2, 7, 24, generator=g)
    other = torch.randn(2, 7, 16, generator=g)
    with torch.inference_mode():
        expected = (linear(x), other + linear(x), geglu(x))
    fast_linear, fast_geglu = packed_copy(linear, blas=True), packed_copy(geglu, blas=True)
    storage = (fast_linear.weight.data_ptr(), fast_geglu.proj.weight.data_ptr())
    with torch.inference_mode():
        got = (fast_linear(x), layers.add_residual(fast_linear, x, other), fast_geglu(x))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert (fast_linear.weight.data_ptr(), fast_geglu.proj.weight.data_ptr()) == storage
    assert not fast_linear.weight.is_mkldnn and "gate_weight" not in fast_geglu.proj._parameters


@needs_onednn
def test_use_blas_linears_switches_packed_layers_both_ways():
    """oneDNN-packed linears (and split GEGLU halves) go back to dense weights for BLAS, and pack again for oneDNN;
    the outputs stay the plain ones throughout."""
    geglu, linear = _geglu_block(True), nn.Linear(24, 16).eval()
    model = nn.ModuleDict({"geglu": geglu, "linear": linear})
    x = torch.randn(3, 24, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = geglu(x), linear(x)
    fast = packed_copy(model, blas=False)
    for blas, packed_after in ((False, True), (True, False), (False, True)):
        assert packing.use_blas_linears(fast, blas) == 2
        with torch.inference_mode():
            got = fast["geglu"](x), fast["linear"](x)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, **TOL[torch.float32])
        assert fast["linear"].weight.is_mkldnn == packed_after
        assert ("gate_weight" in fast["geglu"].proj._parameters) == packed_after
    assert packing.unpack(fast) == 2 and not hasattr(fast["linear"], "blas")


@needs_onednn
@pytest.mark.parametrize("avx512", [False, True])
def test_blas_linears_only_for_float32_on_cpus_without_avx512(avx512, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_avx512", lambda: avx512)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    assert packing.blas_linears_pay(torch.float32) is not avx512
    assert not packing.blas_linears_pay(torch.bfloat16)
    model = packed_copy(nn.Sequential(nn.Linear(4, 4), _geglu_block(True)))
    assert [m.blas for m in model.modules() if isinstance(m, packing.PackedLinear)] == [not avx512] * 2
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    assert not packing.blas_linears_pay(torch.float32)


@needs_onednn
def test_packed_conv_repacks_when_the_input_shape_changes():
    plain = tm.random_unet("sd1")
    packed = packed_copy(plain)
    conv = packed.input_blocks[1][0].in_layers[2]
    with torch.inference_mode():
        for batch, size in [(2, 16), (1, 24), (4, 8), (2, 16)]:
            x, t, context = tm.unet_call_inputs("sd1", batch=batch, size=size, same_t=True)
            torch.testing.assert_close(packed(x, t, context), plain(x, t, context), **TOL[torch.float32])
            assert conv._packed_for is not None and conv._packed_for[0] == batch


@needs_onednn
@pytest.mark.parametrize("dtype", PACKED_DTYPES)
def test_packed_vae_matches_plain(dtype):
    plain = AutoencoderKL(tm.vae_config()).eval()
    plain.load_state_dict(tm.vae_to_ldm(tm.make_vae()))
    plain = plain.to(dtype)
    packed = packed_copy(plain, dtype)
    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=g)
    with torch.inference_mode():
        for a, b in zip(plain.encode(image), packed.encode(image), strict=True):
            torch.testing.assert_close(b.float(), a.float(), **TOL[dtype])
        torch.testing.assert_close(packed.decode(z).float(), plain.decode(z).float(), **TOL[dtype])


@needs_onednn
@pytest.mark.parametrize("dtype", PACKED_DTYPES)
@pytest.mark.parametrize("axes", [None, "x", "y", "xy"])
@pytest.mark.parametrize("size", [(5, 7), (8, 8)])
def test_sub_pixel_upsampling_conv_matches_upsample_then_conv(size, axes, dtype, monkeypatch):
    """The VAE decoder's upsampling step on a packed conv: four 2x2 convolutions of the low-resolution input, one
    per output pixel phase, instead of a 3x3 one over the 4x larger upsampled input; seamless padding included."""
    g = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(6, 5, 3, padding=1).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / 54**0.5)  # outputs of order 1
    x = torch.randn(2, 6, *size, generator=g).to(dtype)
    with torch.inference_mode(), tiling.seamless(conv, axes):
        expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    packed = packed_copy(conv, dtype)
    with torch.inference_mode(), tiling.seamless(packed, axes), monkeypatch.context() as m:
        m.setattr(F, "interpolate", lambda *a, **k: pytest.fail("upsampled: the plain fallback ran"))
        got = layers.upsample_conv(packed, x)
    assert got.shape == expected.shape == (2, 5, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(got.float(), expected.float(), **TOL[dtype])


@needs_onednn
def test_sub_pixel_upsampling_falls_back_where_it_does_not_apply():
    """Under autograd (training) and for convs that are not 3x3/padding 1 the plain upsample-then-conv runs."""
    conv = packed_copy(nn.Conv2d(3, 4, 3, padding=1))
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = layers.upsample_conv(conv, x)
    out.sum().backward()
    assert x.grad is not None and out.shape == (1, 4, 8, 8)
    wide = packed_copy(nn.Conv2d(3, 4, 5, padding=2))
    with torch.inference_mode():
        got = layers.upsample_conv(wide, x.detach())
        expected = F.conv2d(F.interpolate(x.detach(), scale_factor=2.0), wide.dense_weight(), wide.bias, padding=2)
    torch.testing.assert_close(got, expected, **TOL[torch.float32])


@needs_onednn
@LINEARS
@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_packed_text_encoder_matches_plain(variant, blas):
    plain = CLIPTextEncoder(tm.text_config(variant)).eval()
    plain.load_state_dict(tm.text_to_hf(tm.make_text_encoder(variant)))
    packed = packed_copy(plain, blas=blas)
    tokens = torch.randint(0, tm.VOCAB, (2, 77), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        for skip in (0, 1):
            torch.testing.assert_close(packed(tokens, skip=skip), plain(tokens, skip=skip), **TOL[torch.float32])


@needs_onednn
def test_packed_modules_stay_modules_state_dict_to_and_unpack():
    plain = tm.random_unet("sd1")
    packed = packed_copy(plain)
    x, t, context = tm.unet_call_inputs("sd1")
    with torch.inference_mode():
        packed(x, t, context)  # packs every layer
    convs = [m for m in packed.modules() if isinstance(m, packing.PackedConv2d)]
    assert convs and all(isinstance(m, nn.Conv2d) for m in convs) and convs[0].weight.is_mkldnn
    # the state dict is the plain one, dense tensors, same keys and values
    expected, got = plain.state_dict(), packed.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert not got[key].is_mkldnn
        torch.testing.assert_close(got[key], value, atol=0, rtol=0)
    # .to() unpacks first
    other = packed_copy(plain)
    with torch.inference_mode():
        other(x, t, context)
    other.to(torch.float64)
    assert not packing.is_packed(other) and next(other.parameters()).dtype == torch.float64
    # unpack gives plain modules with the original weights
    assert packing.unpack(packed) > 0 and not packing.is_packed(packed)
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in packed.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    with torch.inference_mode():
        torch.testing.assert_close(packed(x, t, context), plain(x, t, context), atol=0, rtol=0)
    packed.load_state_dict(expected)


@needs_onednn
def test_packed_layers_fall_back_under_autograd():
    plain = tm.random_unet("sd1")
    packed = packed_copy(plain)
    x, t, context = tm.unet_call_inputs("sd1")
    x.requires_grad_(True)
    out = packed(x, t, context)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(out.detach(), plain(x, t, context).detach(), **TOL[torch.float32])


@needs_onednn
def test_seamless_tiling_works_on_packed_convs():
    plain = tm.random_unet("sd1")
    packed = packed_copy(plain)
    x, t, context = tm.unet_call_inputs("sd1")
    with torch.inference_mode():
        packed(x, t, context)
        with tiling.seamless(plain, "x"), tiling.seamless(packed, "x"):
            torch.testing.assert_close(packed(x, t, context), plain(x, t, context), **TOL[torch.float32])
        torch.testing.assert_close(packed(x, t, context), plain(x, t, context), **TOL[torch.float32])


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("opt") / "tiny.safetensors")


@needs_onednn
def test_load_optimizes_by_default_and_images_match_plain(tiny_file):
    fast = sd_core.load(tiny_file, device="cpu", dtype=torch.float32)
    plain = sd_core.load(tiny_file, device="cpu", dtype=torch.float32, optimize=False)
    assert packing.is_packed(fast.unet) and packing.is_packed(fast.vae) and packing.is_packed(fast.text_encoder)
    assert not packing.is_packed(plain.unet)
    kw = dict(width=64, height=64, steps=4, cfg_scale=7.5, seed=5, batch_size=2)
    a = np.stack([np.asarray(i, np.float64) for i in fast.txt2img("a red brick wall", **kw)])
    b = np.stack([np.asarray(i, np.float64) for i in plain.txt2img("a red brick wall", **kw)])
    assert b.std() > 5
    assert np.abs(a - b).mean() < 0.05, np.abs(a - b).mean()


# --- memory: no second copy of the weights -----------------------------------------------------------------------


def test_release_pages_keeps_values_readable(tmp_path):
    path = tmp_path / "w.safetensors"
    big = torch.arange(300_000, dtype=torch.float32)
    checkpoint.write_safetensors(path, {"a": big[:1000].clone(), "big": big, "c": big[:5].clone()})
    sd = checkpoint.read_state_dict(path)
    assert checkpoint.release_pages(sd["big"]) >= 1_000_000  # whole pages inside the tensor
    torch.testing.assert_close(sd["big"], big)  # clean pages come back from the file
    torch.testing.assert_close(sd["a"], big[:1000])  # neighbours untouched
    assert checkpoint.release_pages(torch.zeros(300_000)) == 0  # not a mapped checkpoint tensor: never touched


def test_a_batch_decodes_one_image_at_a_time(tiny_file):
    """The decoder's activations exist for one image at a time; the images are the batched decode's."""
    pipe = sd_core.load(tiny_file, device="cpu", dtype=torch.float32)
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    seen = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    images = pipe.decode_latents(z)
    hook.remove()
    assert seen == [1, 1, 1] and len(images) == 3
    with torch.inference_mode():
        batched = pipe.vae.decode(z / pipe.config.latent_scale).float()
    expected = sd_core.images.tensor_to_images(batched)
    for got, want in zip(images, expected, strict=True):
        assert np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max() <= 1


def test_plain_pipelines_add_no_heap_trims(tiny_file):
    plain = sd_core.load(tiny_file, device="cpu", dtype=torch.float32, optimize=False)
    assert not any(m._forward_pre_hooks for m in plain.vae.decoder.up)
    fast = sd_core.load(tiny_file, device="cpu", dtype=torch.float32)
    assert [len(m._forward_pre_hooks) for m in fast.vae.decoder.up] == [1] * len(fast.vae.decoder.up)
    assert accel.optimize(fast).get("heap_trims", 0) == 0  # never twice
    assert [len(m._forward_pre_hooks) for m in fast.vae.decoder.up] == [1] * len(fast.vae.decoder.up)
    for handle in fast.accel.heap_hooks:  # the pipeline keeps the handles: each hook can be taken off again
        handle.remove()
    assert not any(m._forward_pre_hooks for m in fast.vae.decoder.up)


@needs_onednn
def test_packing_never_releases_pages_another_tensor_still_sees(tmp_path):
    """A weight written to in place (copy-on-write pages) and shared with another tensor keeps its values there."""
    conv = nn.Conv2d(64, 64, 3, padding=1)
    path = tmp_path / "conv.safetensors"
    checkpoint.write_safetensors(path, {"weight": conv.weight.detach(), "bias": conv.bias.detach()})
    sd = checkpoint.read_state_dict(path)
    mapped = nn.Conv2d(64, 64, 3, padding=1)
    mapped.load_state_dict(sd, assign=True)
    with torch.no_grad():
        mapped.weight.mul_(2.0)  # written: these pages now differ from the file
    other_view = sd["weight"]  # still shares the storage
    expected = other_view.clone()
    packing.pack_for_cpu(mapped)
    x = torch.randn(1, 64, 8, 8)
    with torch.inference_mode():
        out = mapped(x)
    assert mapped.weight.is_mkldnn
    torch.testing.assert_close(other_view, expected)  # not reverted to the file's values
    torch.testing.assert_close(out, F.conv2d(x, expected, conv.bias.detach(), padding=1), atol=1e-5, rtol=1e-5)


def test_bf16_load_of_an_fp32_file_releases_the_file_pages(tmp_path, monkeypatch):
    from sd_core import safetensors_io  # where `.safetensors` files are memory-mapped and their pages released

    calls = []
    real = safetensors_io._dontneed
    monkeypatch.setattr(safetensors_io, "_dontneed", lambda *a: calls.append(a[2]) or real(*a))
    big = torch.randn(100_000)
    path = tmp_path / "f32.safetensors"
    checkpoint.write_safetensors(path, {"big": big})
    sd = checkpoint.read_state_dict(path, dtype=torch.bfloat16)
    assert calls == [big.numel() * 4]
    torch.testing.assert_close(sd["big"], big.bfloat16())
    calls.clear()
    checkpoint.read_state_dict(path)  # same dtype: zero-copy views, nothing to release
    assert calls == []


# --- other levers ----------------------------------------------------------------------------------------------------


def test_attention_slicing_matches_whole_attention():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 50, 64, generator=g) for _ in range(3))
    whole = attention.attention(q, k, v, heads=4)
    sliced = attention.attention(q, k, v, heads=4, chunk=16)
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-5)


def test_attention_slicing_is_set_per_model_not_per_process():
    unet, other = tm.random_unet("sd1"), tm.random_unet("sd1")
    layers_set = accel.set_attention_slicing(unet, 16)
    chunks = {m.attention_chunk for m in unet.modules() if isinstance(m, CrossAttention)}
    assert layers_set > 0 and chunks == {16}
    assert {m.attention_chunk for m in other.modules() if isinstance(m, CrossAttention)} == {None}
    x, t, context = tm.unet_call_inputs("sd1")  # random_unet is seeded: both have the same weights
    with torch.inference_mode():
        torch.testing.assert_close(unet(x, t, context), other(x, t, context), atol=1e-6, rtol=1e-5)
    accel.set_attention_slicing(unet, None)
    assert {m.attention_chunk for m in unet.modules() if isinstance(m, CrossAttention)} == {None}
    with pytest.raises(ValueError):
        accel.set_attention_slicing(unet, 0)


def test_denoiser_builds_the_cfg_context_once():
    unet = tm.random_unet("sd1")
    cond, uncond = torch.randn(1, 7, 32), torch.randn(1, 7, 32)
    den = GuidedDenoiser(unet, NoiseSchedule(), "eps", cond, uncond, 7.5)
    first = den.context(2)
    assert den.context(2) is first and first.shape == (4, 7, 32)
    torch.testing.assert_close(first[:2], uncond.expand(2, -1, -1))
    torch.testing.assert_close(first[2:], cond.expand(2, -1, -1))


def count_text_projections(unet: nn.Module) -> tuple[list[int], int]:
    """A counter of the cross-attentions' `to_k` calls on a text context (self-attention's to_k sees image tokens),
    and the number of cross-attentions."""
    calls = [0]
    blocks = [block for block in unet.modules() if hasattr(block, "attn2")]
    for block in blocks:
        block.attn2.to_k.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, len(blocks)


@pytest.mark.parametrize("pack", [False, True], ids=["plain", "packed"])
def test_text_projections_are_computed_once_per_sampling_run(pack):
    """Inside `reusing_text_projections` two steps with one context project the text once, and give exactly the
    outputs of recomputing it; a new context tensor is projected anew; leaving the block drops the cache."""
    unet = tm.random_unet("sd1")
    if pack and packing.packing_available():
        packing.pack_for_cpu(unet)
    x, t, context = tm.unet_call_inputs("sd1")
    other = context.flip(0)
    with torch.inference_mode():
        expected = [unet(x, t, context), unet(x * 0.5, t * 0.5, context), unet(x, t, other)]
        calls, layers = count_text_projections(unet)
        with unet.reusing_text_projections():
            got = [unet(x, t, context), unet(x * 0.5, t * 0.5, context)]
            assert calls[0] == layers  # each cross-attention once
            got.append(unet(x, t, other))
            assert calls[0] == 2 * layers
        unet(x, t, context)
        assert calls[0] == 3 * layers
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
    assert all(m._text_kv is None for m in unet.modules() if isinstance(m, CrossAttention))


def test_txt2img_projects_the_text_once(tiny_file):
    pipe = sd_core.load(tiny_file, device="cpu")
    calls, layers = count_text_projections(pipe.unet)
    pipe.txt2img("a cat", width=64, height=64, steps=3, seed=1)
    assert calls[0] == layers


INTEL_AVX512_BF16 = "vendor_id : GenuineIntel\nflags : avx512f avx512_bf16"
INTEL_AMX = "vendor_id : GenuineIntel\nflags : avx512f avx512_bf16 amx_bf16 amx_tile"
AMD_ZEN4 = "vendor_id : AuthenticAMD\nflags : avx2 avx512f avx512_bf16"
AMD_ZEN3 = "vendor_id : AuthenticAMD\nflags : avx2 fma"


def test_cpu_dtype_bf16_only_where_bf16_is_fast(monkeypatch):
    cpu = torch.device("cpu")
    for info, expected in (
        (INTEL_AVX512_BF16, torch.float32),  # one bf16 dot-product port against two float32 FMA ports
        (INTEL_AMX, torch.bfloat16),
        (AMD_ZEN4, torch.bfloat16),  # bf16 dot products at the float32 FMA rate: twice the work
        (AMD_ZEN3, torch.float32),
    ):
        monkeypatch.setattr(devices, "_cpu_flags", lambda info=info: info)
        assert devices.pick_dtype(cpu) == expected, info
    assert devices.pick_dtype(torch.device("cuda")) == torch.float16


def test_half_precision_cpu_pipelines_keep_a_float32_vae_where_half_is_slow(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices, "_cpu_flags", lambda: INTEL_AVX512_BF16)
    assert devices.pick_vae_dtype(cpu, torch.bfloat16) == torch.float32
    assert devices.pick_vae_dtype(cpu, torch.float16) == torch.float32
    assert devices.pick_vae_dtype(cpu, torch.float32) == torch.float32
    assert devices.pick_vae_dtype(cpu, torch.bfloat16, "bf16") == torch.bfloat16  # asked for: honoured
    assert devices.pick_vae_dtype(cuda, torch.float16) == torch.float16  # GPUs: the NaN fallback handles it
    monkeypatch.setattr(devices, "_cpu_flags", lambda: INTEL_AMX)
    assert devices.pick_vae_dtype(cpu, torch.bfloat16) == torch.bfloat16
    monkeypatch.setattr(devices, "_cpu_flags", lambda: AMD_ZEN4)
    assert devices.pick_vae_dtype(cpu, torch.bfloat16) == torch.bfloat16
    assert devices.pick_vae_dtype(cpu, torch.float16) == torch.float32  # no float16 arithmetic there


def test_half_precision_cpu_attention_computes_in_float32_where_half_is_slow(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices, "_cpu_flags", lambda: INTEL_AVX512_BF16)
    assert devices.pick_attention_dtype(cpu, torch.bfloat16) == torch.float32
    assert devices.pick_attention_dtype(cpu, torch.float16) == torch.float32
    assert devices.pick_attention_dtype(cpu, torch.float32) is None
    assert devices.pick_attention_dtype(cuda, torch.float16) is None
    monkeypatch.setattr(devices, "_cpu_flags", lambda: INTEL_AMX)
    assert devices.pick_attention_dtype(cpu, torch.bfloat16) is None
    monkeypatch.setattr(devices, "_cpu_flags", lambda: AMD_ZEN4)
    assert devices.pick_attention_dtype(cpu, torch.bfloat16) is None
    assert devices.pick_attention_dtype(cpu, torch.float16) == torch.float32


@pytest.mark.parametrize("slice_size", [None, 5])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_in_float32_rounds_once(slice_size, causal):
    """bf16 q/k/v with dtype=float32: the float32 attention of the same values, rounded to bf16 once."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 12, 16, generator=g).bfloat16() for _ in range(3))
    got = attention.attention(q, k, v, heads=2, causal=causal, dtype=torch.float32, chunk=slice_size)
    expected = attention.attention(q.float(), k.float(), v.float(), heads=2, causal=causal, chunk=slice_size)
    expected = expected.bfloat16()
    own = attention.attention(q, k, v, heads=2, causal=causal, chunk=slice_size)
    assert got.dtype == own.dtype == torch.bfloat16
    assert torch.equal(got, expected)
    torch.testing.assert_close(got.float(), own.float(), **TOL[torch.bfloat16])


@pytest.mark.parametrize("variant", tm.VARIANTS)
def test_float32_attention_in_a_bf16_unet_matches_its_bf16_attention(variant):
    unet = tm.random_unet(variant)
    x, t, context = tm.unet_call_inputs(variant)
    with torch.inference_mode():
        reference = unet(x, t, context)
        unet.bfloat16()
        plain = unet(x.bfloat16(), t, context.bfloat16()).float()
        layers = sum(isinstance(m, CrossAttention) for m in unet.modules())
        assert accel.set_attention_dtype(unet, torch.float32) == layers > 0
        upcast = unet(x.bfloat16(), t, context.bfloat16()).float()
    assert not torch.equal(upcast, plain)  # the attention really ran in another dtype
    torch.testing.assert_close(upcast, plain, **TOL[torch.bfloat16])
    torch.testing.assert_close(upcast, reference, **TOL[torch.bfloat16])


def test_bf16_load_without_amx_has_a_float32_vae_and_generates(tiny_file, monkeypatch):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: INTEL_AVX512_BF16)
    pipe = sd_core.load(tiny_file, device="cpu", dtype="bf16")
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    upcast = [
        m.attention_dtype
        for model in (pipe.unet, pipe.text_encoder)
        for m in model.modules()
        if hasattr(m, "attention_dtype")
    ]
    assert upcast and set(upcast) == {torch.float32}  # the bf16 models' attention computes in float32
    assert {m.attention_dtype for m in pipe.vae.modules() if hasattr(m, "attention_dtype")} == {None}  # already float32
    kw = dict(width=64, height=64, steps=3, cfg_scale=7.5, seed=5)
    ref = sd_core.load(tiny_file, device="cpu", dtype="bf16", vae_dtype="bf16")
    assert {p.dtype for p in ref.vae.parameters()} == {torch.bfloat16}
    init = ref.txt2img("a red brick wall", **kw)[0]
    a = np.asarray(pipe.txt2img("a red brick wall", **kw)[0], np.float64)
    b = np.asarray(init, np.float64)
    assert b.std() > 5 and np.abs(a - b).mean() < 3, np.abs(a - b).mean()  # same image up to bf16 rounding
    assert pipe.img2img(init, "a red brick wall", strength=0.5, steps=3, seed=5)[0].size == (64, 64)


def test_unet_flops_of_sd15():
    config = dict(
        in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=2,
        transformer_depth=[1, 1, 1, 0], context_dim=768, num_heads=8,
    )  # fmt: skip
    plain = flops.unet_flops(config, 2, 256, 256)
    assert 3.0e11 < plain < 4.5e11  # ~360 GFLOP for a CFG step at 256x256
    assert 3.5 < flops.unet_flops(config, 2, 512, 512) / plain < 5.0
    shared = flops.unet_flops(config, 2, 256, 256, contexts_per_row=2)  # the text-free first layers once: ~1.7% less
    assert 0.97 * plain < shared < 0.99 * plain
    steady = flops.unet_flops(config, 2, 256, 256, contexts_per_row=2, text_once=True)
    text_kv = 2 * 2 * 77 * 768 * 2 * (2 * 320 + 2 * 640 + 2 * 1280 + 1280 + 3 * 1280 + 3 * 640 + 3 * 320)
    assert shared - steady == text_kv  # to_k and to_v of [2, 77, 768] in each of the 16 cross-attentions


# --- low-VRAM offload (logic tested on the CPU) ---------------------------------------------------------------------


@pytest.mark.parametrize("sequential", [False, True])
def test_low_vram_moves_each_model_only_while_it_runs(tiny_file, sequential):
    """Compute device "cpu", offload device "cpu:0": the same memory, but the moves can be told apart."""
    pipe = sd_core.load(tiny_file, device="cpu", dtype=torch.float32)
    reference = np.asarray(pipe.txt2img("a cat", width=64, height=64, steps=2, seed=3)[0], np.float64)
    offload = accel.LowVRAM("cpu", "cpu:0", sequential=sequential).attach(pipe)
    assert pipe.accel.low_vram is offload and not packing.is_packed(pipe.unet)
    start = len(offload.moves)
    seen: list[list[str]] = []
    watch = [m for name, m in offload.units(pipe) if name.startswith("unet.")] or [pipe.unet]
    hooks = [m.register_forward_hook(lambda *_: seen.append(sorted(offload.resident))) for m in watch]
    image = np.asarray(pipe.txt2img("a cat", width=64, height=64, steps=2, seed=3)[0], np.float64)
    for h in hooks:
        h.remove()
    assert np.abs(image - reference).mean() < 0.05
    moves = offload.moves[start:]
    assert moves[0] == ("text_encoder", "cpu")  # to the device for the prompt
    assert moves[1] == ("text_encoder", "cpu:0")  # and away before the UNet's first block
    assert moves[-2:] == [("vae", "cpu"), ("vae", "cpu:0")]  # the VAE only around the decode
    assert offload.resident == {}
    assert seen and all(len(r) == 1 for r in seen)  # the UNet (or its running block) alone on the device
    if sequential:
        assert all(r[0].startswith("unet.") for r in seen)
        unet_units = {name for name, _ in offload.units(pipe) if name.startswith("unet.")}
        assert unet_units == {name for name, device in moves if device == "cpu" and name.startswith("unet.")}
    else:
        assert all(r == ["unet"] for r in seen)
        assert moves[2:-2] == [("unet", "cpu"), ("unet", "cpu:0")]  # in for the sampling, out before the VAE
    offload.detach()
    assert pipe.accel.low_vram is None and "decode" not in pipe.vae.__dict__ and "encode" not in pipe.vae.__dict__


def test_gpu_levers_on_a_cuda_pipeline_are_channels_last_not_packing():
    """What `optimize` does for a CUDA pipeline (checked on CPU tensors: only the decision and the layout)."""
    from types import SimpleNamespace

    unet = tm.random_unet("sd1")
    vae = AutoencoderKL(tm.vae_config()).eval()
    text = CLIPTextEncoder(tm.text_config("sd1")).eval()
    cuda = torch.device("cuda")
    pipe = SimpleNamespace(device=cuda, unet=unet, vae=vae, text_encoder=text, accel=accel.Accelerator(cuda))
    done = accel.optimize(pipe)
    assert done == {"unet": 1, "vae": 1, "cuda_graphs": 1} and pipe.accel.cuda_graphs is True
    assert not packing.is_packed(unet) and not packing.is_packed(vae)
    assert unet.input_blocks[1][0].in_layers[2].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compiled_unet_matches_eager():
    """Opt-in torch.compile (inductor, weights frozen): same output as the eager modules."""
    pytest.importorskip("torch._inductor")
    from types import SimpleNamespace

    unet = tm.random_unet("sd1")
    reference = copy.deepcopy(unet)
    cpu = torch.device("cpu")
    vae = AutoencoderKL(tm.vae_config()).eval()
    pipe = SimpleNamespace(device=cpu, unet=unet, vae=vae, accel=accel.Accelerator(cpu))
    packing.pack_for_cpu(pipe.unet)
    accel.compile_models(pipe, vae=False)
    assert pipe.accel.compiled_unet is not None and pipe.accel.compiled_decode is None
    x, t, context = tm.unet_call_inputs("sd1")
    with torch.inference_mode():
        got = pipe.accel.compiled_unet(x, t, context)
        torch.testing.assert_close(got, reference(x, t, context), **TOL[torch.float32])
