"""Training at CI scale (the "tiny" preset, 32 px, a few dozen steps): losses go down, a stopped run resumes from its
saved step and ends exactly where an uninterrupted run ends, the exported file loads with `sd_core.load`, and
fine-tuning on a folder of captioned images runs through the same code."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core import checkpoint
from sd_core.schedules import NoiseSchedule
from sd_core.training import autoencoder, config, diffusion, train
from sd_core.training.data import FolderDataset, TextureDataset
from sd_core.training.stage import draw_seamless_axes

torch.set_num_threads(1)


def tiny_config(out, **changes) -> config.TrainConfig:
    base = config.TrainConfig(
        out=str(out),
        seed=7,
        preset="tiny",
        size=32,
        vae_steps=6,
        vae_batch=4,
        vae_crop=16,
        vae_full_steps=2,
        vae_full_batch=2,
        unet_steps=6,
        unet_batch=8,
        warmup=2,
        pool_size=32,
        save_every=3,
        log_every=100,
    )
    return dataclasses.replace(base, **changes)


class Stop(Exception):
    pass


def test_vae_reconstruction_improves():
    torch.manual_seed(0)
    _, vae, _ = train.fresh_models("tiny", 0)
    data = TextureDataset(32, seed=1)
    fixed = data.batch(8)[0]

    def rec() -> float:
        with torch.no_grad():
            return float((vae(fixed) - fixed).abs().mean())

    before = rec()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    for _ in range(60):  # on the fixed batch: a few dozen steps cannot learn the whole texture world
        loss, _ = autoencoder.vae_loss(vae, fixed, 1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert rec() < 0.75 * before


def test_unet_loss_decreases():
    unet, _, text = train.fresh_models("tiny", 0)
    schedule = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    # a learnable toy target: two caption classes with different constant latents
    latents = torch.cat([torch.full((8, 4, 4, 4), 1.0), torch.full((8, 4, 4, 4), -1.0)])
    tokens = diffusion.CaptionTokens()(["red"] * 8 + ["blue"] * 8)
    t = torch.randint(0, 1000, (16,), generator=g)
    noise = torch.randn(latents.shape, generator=g)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(diffusion.diffusion_loss(unet, text, schedule, latents, tokens, t, noise))

    before = fixed_loss()
    opt = torch.optim.AdamW(list(unet.parameters()) + list(text.parameters()), lr=2e-3)
    for _ in range(40):
        tt = torch.randint(0, 1000, (16,), generator=g)
        loss = diffusion.diffusion_loss(
            unet, text, schedule, latents, tokens, tt, torch.randn(latents.shape, generator=g)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.7 * before


def test_fold_latent_scale_keeps_the_images_and_scales_latents():
    _, vae, _ = train.fresh_models("tiny", 0)
    x = TextureDataset(32, seed=2).batch(4)[0]
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        out = vae.decode(mean)
        autoencoder.fold_latent_scale(vae, raw_std=float(mean.std()))
        mean2, logvar2 = vae.encode(x)
        out2 = vae.decode(mean2)
    torch.testing.assert_close(out2, out, atol=1e-4, rtol=1e-4)
    assert abs(float((mean2 * autoencoder.LATENT_SCALE).std()) - 1.0) < 1e-3
    k = float(mean2.std() / mean.std())
    torch.testing.assert_close(logvar2, logvar + 2 * np.log(k), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted tiny run, and the step losses it reported."""
    out = tmp_path_factory.mktemp("full")
    seen: list[tuple[str, int, float]] = []
    path = train.run(tiny_config(out), on_step=lambda stage, step, loss: seen.append((stage, step, loss)))
    return out, path, seen


@pytest.mark.parametrize("stage", ["vae", "unet"])
def test_resume_continues_from_the_saved_step(tmp_path, finished, stage):
    def stop_at_5(s: str, step: int, loss: float) -> None:
        if s == stage and step == 5:
            raise Stop

    with pytest.raises(Stop):
        train.run(tiny_config(tmp_path), on_step=stop_at_5)
    state = torch.load(tmp_path / f"{stage}_state.pt", weights_only=False)
    assert state["step"] == 3 and not state["done"]

    resumed: list[tuple[str, int]] = []
    path = train.run(tiny_config(tmp_path), on_step=lambda s, step, loss: resumed.append((s, step)))
    first = [step for s, step in resumed if s == stage]
    assert first[0] == 4 and first[-1] == 6
    if stage == "unet":
        assert not any(s == "vae" for s, _ in resumed)  # the finished VAE stage is not redone
    full = checkpoint.read_state_dict(finished[1])
    again = checkpoint.read_state_dict(path)
    assert full.keys() == again.keys()
    for key in full:
        torch.testing.assert_close(again[key], full[key], atol=0, rtol=0, msg=key)


def test_exported_model_loads_and_generates(finished):
    _, path, seen = finished
    assert [s for s, _, _ in seen] == ["vae"] * 6 + ["unet"] * 6
    pipe = sd_core.load(path, device="cpu", dtype="fp32")
    assert pipe.config.family == "sd1" and pipe.config.pad_token == 49407
    assert pipe.config.unet == {**pipe.config.unet, **config.PRESETS["tiny"]["unet"]}
    assert set(checkpoint.read_dtypes(path).values()) == {"float16"}
    meta = checkpoint.read_metadata(path)
    assert json.loads(meta["sd_core.training"])["seed"] == 7
    assert "sd_core.cfg_scale" not in meta and pipe.defaults.cfg_scale == 7.5
    assert meta["sd_core.resolution"] == "32" and (pipe.defaults.width, pipe.defaults.height) == (32, 32)  # its size
    img = pipe.txt2img("red and white checkerboard", width=64, height=64, steps=2, seed=1)[0]
    assert img.size == (64, 64) and np.asarray(img).std() > 0


def test_fine_tune_on_a_folder(tmp_path, finished):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        arr = np.zeros((40, 48, 3), np.uint8)
        arr[..., i * 2] = 220
        Image.fromarray(arr).save(folder / f"{colour}.png")
        (folder / f"{colour}.txt").write_text(f"a plain {colour} square\n", encoding="utf-8")
    assert len(FolderDataset(folder, 32)) == 2
    x, captions = FolderDataset(folder, 32, seed=0).batch(3)
    assert x.shape == (3, 3, 32, 32) and set(captions) <= {"a plain red square", "a plain blue square"}

    cfg = tiny_config(
        tmp_path / "ft", init=str(finished[1]), data=str(folder), unet_steps=3, text="frozen", default_cfg_scale=2.5
    )
    path = train.run(cfg)
    before, after = checkpoint.read_state_dict(finished[1]), checkpoint.read_state_dict(path)
    vae_keys = [k for k in before if k.startswith("first_stage_model.")]
    text_keys = [k for k in before if k.startswith("cond_stage_model.")]
    unet_keys = [k for k in before if k.startswith("model.diffusion_model.")]
    assert all(torch.equal(before[k], after[k]) for k in vae_keys + text_keys)
    assert any(not torch.equal(before[k], after[k]) for k in unet_keys)
    tuned = sd_core.load(path, device="cpu", dtype="fp32")
    assert tuned.config.family == "sd1" and tuned.defaults.cfg_scale == 2.5  # --default-cfg-scale went into the file


def test_decoder_fine_tune_changes_only_the_decoder_and_resumes(tmp_path, finished):
    def cfg(out):
        return tiny_config(out, init=str(finished[1]), unet_steps=0, decoder_steps=6, decoder_batch=2, pool_size=0)

    straight = train.run(cfg(tmp_path / "straight"))

    def stop_at_5(stage: str, step: int, loss: float) -> None:
        if stage == "decoder" and step == 5:
            raise Stop

    with pytest.raises(Stop):
        train.run(cfg(tmp_path / "stopped"), on_step=stop_at_5)
    resumed_steps: list[int] = []
    resumed = train.run(cfg(tmp_path / "stopped"), on_step=lambda s, step, loss: resumed_steps.append(step))
    assert resumed_steps == [4, 5, 6]

    before, after, again = (checkpoint.read_state_dict(p) for p in (finished[1], straight, resumed))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("first_stage_model.decoder.", "first_stage_model.post_quant_conv."))
                           for k in changed)  # fmt: skip
    for key in after:
        torch.testing.assert_close(again[key], after[key], atol=0, rtol=0, msg=key)


def test_resume_refuses_a_state_saved_from_another_start(tmp_path, finished):
    cfg = tiny_config(tmp_path / "out", init=str(finished[1]), unet_steps=2, pool_size=0)
    train.run(cfg)
    other = tmp_path / "other.safetensors"
    other.write_bytes(finished[1].read_bytes())
    with pytest.raises(ValueError, match="use a new --out"):
        train.run(dataclasses.replace(cfg, init=str(other)))


def test_caption_mix_option():
    from sd_core.training import data

    assert data.parse_caption_mix("") == data.CAPTION_VARIANTS
    assert data.parse_caption_mix("full=0.5,colours=0.5") == (("full", 0.5), ("colours", 0.5))
    with pytest.raises(ValueError, match="unknown caption variant 'shape'"):
        data.parse_caption_mix("full=0.5,shape=0.5")
    rng = np.random.default_rng(0)
    spec = data.TextureSpec("dots", "red", "blue", "small")
    assert {data.random_caption(spec, rng, (("colours", 1.0),)) for _ in range(5)} == {"red and blue"}
    only_colours = TextureDataset(32, seed=3, caption_mix=(("colours", 1.0),))  # also without a latent pool
    for words in (c.split(" and ") for c in only_colours.batch(8)[1]):
        assert len(words) == 2 and set(words) <= set(data.COLOURS), words


def test_pattern_weights_option():
    from sd_core.training import data

    assert data.parse_pattern_weights("") == {}
    assert data.parse_pattern_weights("dots=3, checkerboard=0.5") == {"dots": 3.0, "checkerboard": 0.5}
    for bad, message in (
        ("circles=2", "unknown pattern 'circles'"),
        ("dots=x", "not name=number"),
        ("dots=-1", ">= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            data.parse_pattern_weights(bad)
    a, b = TextureDataset(32, seed=4), TextureDataset(32, seed=4, pattern_weights={})
    plain = [a.spec() for _ in range(400)]
    assert plain == [b.spec() for _ in range(400)]  # no weights: the same draws as before the option existed
    weighted = TextureDataset(32, seed=4, pattern_weights=data.parse_pattern_weights("dots=8")).spec
    share = sum(weighted().pattern == "dots" for _ in range(400)) / 400
    assert abs(sum(s.pattern == "dots" for s in plain) / 400 - 1 / 8) < 0.05
    assert abs(share - 8 / 15) < 0.07, share  # 8 / (8 + 7 others)
    only_dots = TextureDataset(32, seed=4, pattern_weights={p: 0.0 for p in data.PATTERNS[:3]})
    assert not {only_dots.spec().pattern for _ in range(100)} & set(data.PATTERNS[:3])
    assert all(
        data.allowed(s.fg, s.pattern) and data.allowed(s.bg, s.pattern) for s in [weighted() for _ in range(200)]
    )


def test_seamless_share_of_batches():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert draw_seamless_axes(0.0, gen) is None and torch.equal(gen.get_state(), state)  # no draw: runs unchanged
    draws = [draw_seamless_axes(0.25, gen) for _ in range(400)]
    assert set(draws) == {None, "xy"} and abs(draws.count("xy") / 400 - 0.25) < 0.06
    assert draw_seamless_axes(1.0, gen) == "xy"


def test_seamless_training_runs_the_networks_with_circular_padding(tmp_path, finished, monkeypatch):
    """With --seamless-prob 1 every UNet and decoder batch runs inside tiling.seamless(..., "xy"); the result
    differs from the same run with zero padding, and it still loads."""
    from sd_core import tiling

    seen = []
    real = tiling.seamless

    def spy(modules, axes):
        seen.append((type(modules[0]).__name__, axes))
        return real(modules, axes)

    monkeypatch.setattr(tiling, "seamless", spy)

    def cfg(out, prob):
        return tiny_config(out, init=str(finished[1]), unet_steps=2, decoder_steps=2, decoder_batch=2, pool_size=0,
                           seamless_prob=prob)  # fmt: skip

    circular = train.run(cfg(tmp_path / "circular", 1.0))
    assert seen == [("AutoencoderKL", "xy")] * 2 + [("UNetModel", "xy")] * 2
    seen.clear()
    plain = train.run(cfg(tmp_path / "plain", 0.0))
    assert seen == [("AutoencoderKL", None)] * 2 + [("UNetModel", None)] * 2
    a, b = checkpoint.read_state_dict(circular), checkpoint.read_state_dict(plain)
    for prefix in ("model.diffusion_model.", "first_stage_model.decoder."):
        assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix)), prefix
    assert sd_core.load(circular, device="cpu", dtype="fp32").config.family == "sd1"
