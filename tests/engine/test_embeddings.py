"""Textual-inversion embeddings give diffusers' conditioning (`load_textual_inversion`, same token placement) and
images, in A1111's `.pt` form and as `.safetensors` `emb_params`, with 1 and 3 vectors; A1111's chunk rule, hashes
and skipped widths."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from model_fixtures import TEXT_WIDTH, _cached_folder
from safetensors.torch import save_file

import sd_core
from sd_core.embeddings import EmbeddingError, EmbeddingLibrary, read_embedding, token_embeddings

KW = dict(width=64, height=64, steps=6, sampler="ddim", cfg_scale=7.5, seed=11)


def a1111_pt(path, vectors: torch.Tensor, name: str) -> None:
    """What A1111's textual-inversion trainer saves."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.nn.Parameter(vectors)},
            "name": name,
            "step": 500,
            "sd_checkpoint": "abcdef12",
            "sd_checkpoint_name": "tiny",
        },
        path,
    )


def vectors(count: int, seed: int, width: int = TEXT_WIDTH) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("embeddings")
    a1111_pt(d / "stonetex.pt", vectors(1, 1), "stonetex")
    a1111_pt(d / "woodgrain.pt", vectors(3, 2), "woodgrain")
    save_file({"emb_params": vectors(3, 3)}, str(d / "mossy.safetensors"))
    save_file({"emb_params": vectors(2, 4, width=1024)}, str(d / "widetex.safetensors"))  # an SD2 embedding
    return d


@pytest.fixture(scope="module")
def reference():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        str(_cached_folder(0, False, False)), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )


@pytest.fixture(scope="module")
def pipe(emb_dir):
    return sd_core.load(_cached_folder(0, False, False), device="cpu", dtype=torch.float32, embedding_dirs=[emb_dir])


def diffusers_embeds(reference, emb_dir, name: str, suffix: str, prompt: str, negative: str = "") -> tuple:
    reference.unload_textual_inversion()
    reference.load_textual_inversion(str(emb_dir / f"{name}{suffix}"), token=name)
    cond, uncond = reference.encode_prompt(prompt, "cpu", 1, True, negative)
    return cond, uncond


@pytest.mark.parametrize(("name", "suffix"), [("stonetex", ".pt"), ("woodgrain", ".pt"), ("mossy", ".safetensors")])
def test_conditioning_matches_diffusers(pipe, reference, emb_dir, name, suffix):
    prompt = f"a wall of {name}, highly detailed"
    cond, uncond = pipe.encode_prompt(prompt, f"blurry {name}")
    ref_cond, ref_uncond = diffusers_embeds(reference, emb_dir, name, suffix, prompt, f"blurry {name}")
    plain, _ = pipe.encode_prompt(prompt.replace(name, "stone"), "")
    assert (cond - plain).abs().max() > 0.1, "the embedding must change the conditioning"
    torch.testing.assert_close(cond, ref_cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(uncond, ref_uncond, rtol=1e-5, atol=1e-5)


def test_image_matches_diffusers(pipe, reference, emb_dir):
    prompt = "woodgrain texture"
    reference.unload_textual_inversion()
    reference.load_textual_inversion(str(emb_dir / "woodgrain.pt"), token="woodgrain")
    out = reference(
        prompt, width=64, height=64, num_inference_steps=6, guidance_scale=7.5,
        generator=torch.Generator().manual_seed(11), output_type="np",
    )  # fmt: skip
    theirs = (out.images[0] * 255).round()
    mine = np.asarray(pipe.txt2img(prompt, **KW)[0], dtype=np.float64)
    assert np.abs(mine - theirs).mean() < 1.0


def test_weighted_embedding_takes_the_weight(pipe):
    """Emphasis applies to the placeholder tokens as to any token (A1111)."""
    assert not torch.equal(pipe.encode_prompt("(woodgrain:1.3) wall")[0], pipe.encode_prompt("woodgrain wall")[0])


def test_embedding_that_would_cross_a_chunk_starts_the_next(pipe):
    """A1111: 73 tokens then a 3-vector embedding -> the embedding opens chunk 2 (BOS, vectors at 1-3)."""
    lookup = pipe.extra_networks.embeddings.lookup(TEXT_WIDTH, pipe.tokenizer)
    from sd_core.prompt import tokenize_prompt_with_embeddings

    ids, _, fixes = tokenize_prompt_with_embeddings(
        "a " * 73 + "woodgrain", pipe.tokenizer, pad_token=49407, embeddings=lookup
    )
    assert ids.shape[0] == 2 and [(f.chunk, f.offset, f.embedding.name) for f in fixes] == [(1, 0, "woodgrain")]
    embeds = token_embeddings(pipe.text_encoder.text_model.embeddings.token_embedding, ids, fixes)
    assert torch.equal(embeds[1, 1:4], vectors(3, 2))


def test_other_width_is_skipped_and_stays_text(pipe):
    """A 1024-wide (SD2) embedding on an SD1 model: A1111 skips it, its name is ordinary text."""
    assert pipe.prompt_embeddings("widetex wall") == []
    plain = sd_core.load(_cached_folder(0, False, False), device="cpu", dtype=torch.float32)
    assert torch.equal(pipe.encode_prompt("widetex wall")[0], plain.encode_prompt("widetex wall")[0])


def test_ti_hashes_in_the_infotext(pipe, emb_dir):
    params = pipe.txt2img("mossy stone", negative_prompt="stonetex", **KW)[0].info["parameters"]
    mossy = hashlib.sha256((emb_dir / "mossy.safetensors").read_bytes()).hexdigest()[:12]
    stone = hashlib.sha256((emb_dir / "stonetex.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "mossy: {mossy}, stonetex: {stone}"' in params


def test_unused_embeddings_are_not_recorded(pipe):
    assert "TI hashes" not in pipe.txt2img("plain stone", **KW)[0].info["parameters"]


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"string_to_param": {"*": _RunsCode()}}, f)
    with pytest.raises(EmbeddingError, match="evil.pt"):
        read_embedding(path)
    assert "this must never run" not in capsys.readouterr().out


def test_sdxl_embedding_is_read_and_skipped_on_sd1(pipe, tmp_path):
    """`{clip_l, clip_g}`: read with both parts; not made for SD1's one tower, so its name stays text there."""
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.ones(2, 1280)}, str(tmp_path / "xl.safetensors"))
    emb = read_embedding(tmp_path / "xl.safetensors")
    assert (emb.count, emb.width, emb.widths) == (2, 2048, (768, 1280))
    library = EmbeddingLibrary([tmp_path])
    assert not library.lookup(TEXT_WIDTH, pipe.tokenizer), "SD1's one tower takes no SDXL embedding"
    assert library.lookup((768, 1280), pipe.tokenizer), "SDXL's two towers take it"


def test_diffusers_learned_embeds_bin(tmp_path):
    """diffusers' textual-inversion trainer saves {token: [width]}: one vector, named by the file."""
    torch.save({"<cat-toy>": vectors(1, 5)[0]}, tmp_path / "cattoy.bin")
    emb = read_embedding(tmp_path / "cattoy.bin")
    assert (emb.name, emb.count) == ("cattoy", 1) and torch.equal(emb.vectors, vectors(1, 5))


def test_a1111_fields_are_read(emb_dir):
    emb = read_embedding(emb_dir / "woodgrain.pt")
    assert (emb.name, emb.count, emb.width, emb.step, emb.checkpoint) == ("woodgrain", 3, TEXT_WIDTH, 500, "abcdef12")
