"""sd_core.load: families, prediction detection, and clear errors for bad files and bad settings."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from model_fixtures import _cached_folder, write_tiny_checkpoint

import sd_core
from sd_core.checkpoint import CheckpointError, read_state_dict, write_safetensors
from sd_core.loader import probe_v_prediction


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sd1") / "sd1.safetensors")


@pytest.fixture(scope="module")
def pipe(sd1_file):
    return sd_core.load(sd1_file, device="cpu", dtype=torch.float32)


def test_sd1_family(pipe):
    assert pipe.config.family == "sd1" and not pipe.config.inpainting
    assert pipe.config.prediction == "eps"


def test_sd2_openclip_layout_loads_as_sd2(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "sd2.safetensors", sd2=True)
    keys = read_state_dict(path).keys()
    assert any(k.startswith("cond_stage_model.model.transformer.resblocks.") for k in keys)
    pipe = sd_core.load(path, device="cpu", dtype=torch.float32, prediction="eps")
    assert pipe.config.family == "sd2"
    assert pipe.config.text_skip == 1 and pipe.config.pad_token == 0
    assert pipe.unet.config["use_linear_in_transformer"]


def test_inpainting_checkpoint_reports_inpaint_family(tmp_path):
    pipe = sd_core.load(
        write_tiny_checkpoint(tmp_path / "inp.safetensors", inpainting=True), device="cpu", dtype=torch.float32
    )
    assert pipe.config.inpainting and pipe.config.family == "sd1-inpaint"
    assert pipe.unet.config["in_channels"] == 9


def test_diffusers_folder_prediction_hint():
    """The SD2 tiny folder's scheduler says v_prediction; the loader takes it from there."""
    pipe = sd_core.load(_cached_folder(0, True, False), device="cpu", dtype=torch.float32)
    assert pipe.config.family == "sd2" and pipe.config.prediction == "v"


def test_prediction_override(sd1_file):
    assert sd_core.load(sd1_file, device="cpu", dtype=torch.float32, prediction="v").config.prediction == "v"
    with pytest.raises(ValueError, match="prediction"):
        sd_core.load(sd1_file, device="cpu", prediction="x0")


def _constant_output_unet(pipe, value: float):
    """The UNet with its last conv replaced by a constant: a model whose answer to the probe is known."""
    unet = pipe.unet
    with torch.no_grad():
        unet.out[2].weight.zero_()
        unet.out[2].bias.fill_(value)
    return unet


def test_probe_detects_v_prediction(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "sd2.safetensors", sd2=True)
    v_like = _constant_output_unet(sd_core.load(path, device="cpu", dtype=torch.float32, prediction="eps"), -2.0)
    eps_like = _constant_output_unet(sd_core.load(path, device="cpu", dtype=torch.float32, prediction="eps"), 0.5)
    assert probe_v_prediction(v_like, 128) is True
    assert probe_v_prediction(eps_like, 128) is False


def test_sd2_single_file_runs_the_probe(tmp_path):
    """Without an override or folder hint, an SD2 single file gets a probed prediction type."""
    path = write_tiny_checkpoint(tmp_path / "sd2.safetensors", sd2=True)
    pipe = sd_core.load(path, device="cpu", dtype=torch.float32)
    assert pipe.config.prediction == ("v" if probe_v_prediction(pipe.unet, 128) else "eps")


# --- bad files ---------------------------------------------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": payload}}, f)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        sd_core.load(path, device="cpu")
    assert not marker.exists()


def test_truncated_safetensors_names_the_file(sd1_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = sd1_file.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        sd_core.load(cut, device="cpu")


def test_non_checkpoint_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("this is not a model")
    with pytest.raises(CheckpointError, match="notes.safetensors"):
        sd_core.load(path, device="cpu")


def test_safetensors_without_stable_diffusion_weights(tmp_path):
    path = tmp_path / "other.safetensors"
    write_safetensors(path, {"encoder.weight": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="(?i)stable diffusion|missing"):
        sd_core.load(path, device="cpu")


def test_missing_keys_are_listed(sd1_file, tmp_path):
    sd = read_state_dict(sd1_file)
    for key in ("model.diffusion_model.out.2.bias", "first_stage_model.decoder.conv_out.bias"):
        del sd[key]
    path = tmp_path / "holes.safetensors"
    write_safetensors(path, sd)
    with pytest.raises(CheckpointError) as err:
        sd_core.load(path, device="cpu")
    assert "out.2.bias" in str(err.value) and "decoder.conv_out.bias" in str(err.value)


def test_unexpected_keys_are_listed(sd1_file, tmp_path):
    sd = read_state_dict(sd1_file)
    sd["model.diffusion_model.extra_adapter.weight"] = torch.zeros(2)
    path = tmp_path / "extra.safetensors"
    write_safetensors(path, sd)
    with pytest.raises(CheckpointError, match="extra_adapter.weight"):
        sd_core.load(path, device="cpu")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        sd_core.load("/nowhere.safetensors")


# --- bad settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(65, 64), (64, 100), (0, 64), (64, -8)])
def test_size_not_multiple_of_8(pipe, width, height):
    with pytest.raises(ValueError, match="(?i)multiple of 8|from 8 to"):
        pipe.txt2img("x", width=width, height=height, steps=1)


@pytest.mark.parametrize("steps", [0, -1, 1001, 10**6, 2.5, True])
def test_absurd_steps(pipe, steps):
    with pytest.raises(ValueError, match="steps"):
        pipe.txt2img("x", width=64, height=64, steps=steps)


def test_bad_batch_and_cfg(pipe):
    with pytest.raises(ValueError, match="batch_size"):
        pipe.txt2img("x", width=64, height=64, steps=1, batch_size=0)
    with pytest.raises(ValueError, match="cfg_scale"):
        pipe.txt2img("x", width=64, height=64, steps=1, cfg_scale=float("nan"))


def with_metadata(source, path, metadata: dict[str, str]):
    write_safetensors(path, read_state_dict(source), metadata)
    return path


def test_model_file_can_name_its_default_cfg_scale(sd1_file, tmp_path, pipe):
    """A model that works best at another scale says so in its metadata; calls that leave cfg_scale out use it,
    explicit values still win. Files that name none get 7.5."""
    own = sd_core.load(with_metadata(sd1_file, tmp_path / "m.safetensors", {"sd_core.cfg_scale": "3"}), dtype="fp32")
    assert own.defaults.cfg_scale == 3.0 and pipe.defaults.cfg_scale == 7.5
    args = dict(width=64, height=64, steps=2, seed=4)
    implicit = own.txt2img("a cat", **args)[0]
    assert "CFG scale: 3.0," in implicit.info["parameters"]
    assert implicit.tobytes() == own.txt2img("a cat", cfg_scale=3, **args)[0].tobytes()
    assert implicit.tobytes() != own.txt2img("a cat", cfg_scale=7.5, **args)[0].tobytes()
    assert "CFG scale: 7.5," in pipe.txt2img("a cat", **args)[0].info["parameters"]
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    assert "CFG scale: 3.0," in own.img2img(implicit, "a dog", steps=2, seed=1)[0].info["parameters"]
    assert "CFG scale: 3.0," in own.inpaint(implicit, mask, "a dog", steps=2, seed=1)[0].info["parameters"]


@pytest.mark.parametrize("value", ["three", "0", "-2", "inf"])
def test_bad_default_cfg_scale_in_metadata_names_the_key(sd1_file, tmp_path, value):
    path = with_metadata(sd1_file, tmp_path / "bad.safetensors", {"sd_core.cfg_scale": value})
    with pytest.raises(CheckpointError, match="sd_core.cfg_scale"):
        sd_core.load(path, dtype="fp32")


def test_unknown_sampler_lists_valid_names(pipe):
    with pytest.raises(ValueError, match="euler"):
        pipe.txt2img("x", width=64, height=64, steps=1, sampler="warp drive")


def test_empty_prompt_is_unconditional_generation(pipe):
    """Documented: an empty prompt is allowed and conditions on the empty text."""
    img = pipe.txt2img("", width=64, height=64, steps=2, seed=3)[0]
    assert img.size == (64, 64) and img.info["seed"] == 3


def test_seed_reproducible_and_batch_shape(pipe):
    a = pipe.txt2img("a cat", width=64, height=64, steps=2, seed=5)[0]
    b = pipe.txt2img("a cat", width=64, height=64, steps=2, seed=5)[0]
    c = pipe.txt2img("a cat", width=64, height=64, steps=2, seed=6)[0]
    assert a.tobytes() == b.tobytes() != c.tobytes()
    batch = pipe.txt2img("a cat", width=64, height=64, steps=2, seed=5, batch_size=2)
    # image 0 of the batch has the single run's noise: the same image up to float reordering in batched kernels
    first = np.abs(np.asarray(batch[0], float) - np.asarray(a, float))
    assert len(batch) == 2 and first.max() <= 2 and first.mean() < 0.1
    assert np.abs(np.asarray(batch[1], float) - np.asarray(a, float)).mean() > 5


def test_callback_progress_and_cancel(pipe):
    seen = []
    pipe.txt2img("a cat", width=64, height=64, steps=3, seed=1, callback=lambda info: seen.append(info.step))
    assert seen == [1, 2, 3]

    def stop(info):
        if info.step == 2:
            raise sd_core.Cancelled()

    with pytest.raises(sd_core.Cancelled):
        pipe.txt2img("a cat", width=64, height=64, steps=3, seed=1, callback=stop)
