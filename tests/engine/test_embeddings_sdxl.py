"""SDXL textual-inversion embeddings (`{clip_l, clip_g}` safetensors, 1 and 3 vectors) give diffusers' conditioning
and images: diffusers loads `clip_l` into `text_encoder`/`tokenizer` and `clip_g` into `text_encoder_2`/`tokenizer_2`
(`load_textual_inversion`, same token placement), in the prompt and the negative prompt. Also: `TI hashes`, SD1
embeddings skipped on SDXL, SDXL embeddings skipped on SD1 and on the refiner (bigG alone, as A1111), bad files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from model_fixtures import TEXT_WIDTH, _cached_folder
from safetensors.torch import save_file
from sdxl_fixtures import G_WIDTH, L_WIDTH, sdxl_folder

import sd_core
from sd_core.embeddings import EmbeddingError, read_embedding

PROMPT = "a wall of {}, highly detailed"
KW = dict(width=64, height=64, steps=5, sampler="ddim", cfg_scale=7.5, seed=11)


def sdxl_vectors(count: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"clip_l": torch.randn(count, L_WIDTH, generator=g), "clip_g": torch.randn(count, G_WIDTH, generator=g)}


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sdxl_embeddings")
    save_file(sdxl_vectors(1, 1), str(d / "xlstone.safetensors"))
    save_file(sdxl_vectors(3, 2), str(d / "xlwood.safetensors"))
    sd1 = torch.randn(2, TEXT_WIDTH, generator=torch.Generator().manual_seed(3))
    save_file({"emb_params": sd1}, str(d / "sdonetex.safetensors"))  # an SD1 embedding
    return d


@pytest.fixture(scope="module")
def pipe(emb_dir):
    return sd_core.load(sdxl_folder(), device="cpu", dtype=torch.float32, embedding_dirs=[emb_dir])


def reference_with(emb_dir, name: str):
    """diffusers' SDXL pipeline with the embedding loaded the documented way: one tensor per text encoder."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    ref = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder()), local_files_only=True)
    state = load_file(str(emb_dir / f"{name}.safetensors"))
    ref.load_textual_inversion(state["clip_l"], token=name, text_encoder=ref.text_encoder, tokenizer=ref.tokenizer)
    ref.load_textual_inversion(state["clip_g"], token=name, text_encoder=ref.text_encoder_2, tokenizer=ref.tokenizer_2)
    return ref


@pytest.mark.parametrize("name", ["xlstone", "xlwood"])
def test_conditioning_matches_diffusers(pipe, emb_dir, name):
    prompt, negative = PROMPT.format(name), f"blurry {name}"
    cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(prompt, negative)
    ref = reference_with(emb_dir, name)
    ref_cond, ref_uncond, ref_pooled, ref_pooled_uncond = ref.encode_prompt(
        prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative
    )
    plain = pipe.encode_prompt(PROMPT.format("stone"), negative)[0]
    width_l = L_WIDTH
    assert (cond[..., :width_l] - plain[..., :width_l]).abs().max() > 0.1, "clip_l must change CLIP-L's part"
    assert (cond[..., width_l:] - plain[..., width_l:]).abs().max() > 0.1, "clip_g must change bigG's part"
    for mine, theirs in (
        (cond, ref_cond),
        (uncond, ref_uncond),
        (pooled, ref_pooled),
        (pooled_uncond, ref_pooled_uncond),
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_image_matches_diffusers(pipe, emb_dir):
    prompt = "xlwood texture"
    out = reference_with(emb_dir, "xlwood")(
        prompt, negative_prompt="blurry", width=64, height=64, num_inference_steps=5, guidance_scale=7.5,
        generator=torch.Generator().manual_seed(11), output_type="np",
    )  # fmt: skip
    theirs = (out.images[0] * 255).round()
    mine = np.asarray(pipe.txt2img(prompt, negative_prompt="blurry", **KW)[0], dtype=np.float64)
    plain = np.asarray(pipe.txt2img("stone texture", negative_prompt="blurry", **KW)[0], dtype=np.float64)
    assert np.abs(mine - plain).mean() > 3.0, "the embedding must change the image, or the test proves nothing"
    assert np.abs(mine - theirs).mean() < 1.0


def test_ti_hashes_in_the_infotext(pipe, emb_dir):
    params = pipe.txt2img("xlstone wall", negative_prompt="xlwood", **KW)[0].info["parameters"]
    stone = hashlib.sha256((emb_dir / "xlstone.safetensors").read_bytes()).hexdigest()[:12]
    wood = hashlib.sha256((emb_dir / "xlwood.safetensors").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "xlstone: {stone}, xlwood: {wood}"' in params


def test_sd1_embedding_is_skipped_on_sdxl_and_stays_text(pipe):
    assert pipe.prompt_embeddings("sdonetex wall") == []
    plain = sd_core.load(sdxl_folder(), device="cpu", dtype=torch.float32)
    for mine, theirs in zip(pipe.encode_prompt("sdonetex wall"), plain.encode_prompt("sdonetex wall"), strict=True):
        assert torch.equal(mine, theirs)


def test_sdxl_embedding_is_skipped_on_sd1(emb_dir):
    sd1 = sd_core.load(_cached_folder(0, False, False), device="cpu", dtype=torch.float32, embedding_dirs=[emb_dir])
    assert [e.name for e in sd1.prompt_embeddings("xlstone wall, sdonetex")] == ["sdonetex"]


def test_refiner_skips_sdxl_embeddings_as_a1111(emb_dir):
    """A1111 takes an embedding whose width is the model's text width: bigG's 1280 on the refiner, 768 + 1280 for
    SDXL embeddings, so they stay text there."""
    refiner = sd_core.load(sdxl_folder(refiner=True), device="cpu", dtype=torch.float32, embedding_dirs=[emb_dir])
    assert refiner.prompt_embeddings("xlstone wall") == []


def test_sdxl_file_is_read_with_its_two_parts(emb_dir):
    emb = read_embedding(emb_dir / "xlwood.safetensors")
    parts = sdxl_vectors(3, 2)
    assert (emb.count, emb.width, emb.widths) == (3, L_WIDTH + G_WIDTH, (L_WIDTH, G_WIDTH))
    assert torch.equal(emb.part(0), parts["clip_l"]) and torch.equal(emb.part(1), parts["clip_g"])


def test_sdxl_file_with_unequal_vector_counts_is_refused_by_name(tmp_path):
    save_file({"clip_l": torch.zeros(2, L_WIDTH), "clip_g": torch.zeros(3, G_WIDTH)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(EmbeddingError, match=r"bad\.safetensors: clip_l and clip_g"):
        read_embedding(tmp_path / "bad.safetensors")
