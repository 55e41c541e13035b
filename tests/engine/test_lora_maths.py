"""Each LoRA-family layer kind changes its layer's weight by its maths, written out here independently of
`sd_core.lora.networks`: W' = W + multiplier · alpha/rank · ΔW, with

- LoCon 3x3 with a CP core: ΔW[o, i, y, x] = Σ_a Σ_b up[o, a] · mid[a, b, y, x] · down[b, i];
- LoHa: ΔW = (w1a @ w1b) ⊙ (w2a @ w2b), i.e. ΔW[o, i] = Σ_r Σ_s w1a[o, r] w1b[r, i] w2a[o, s] w2b[s, i];
- LoKr: ΔW = w1 ⊗ w2, the block (i, j) of ΔW being w1[i, j] · w2 (alpha/rank only with a low-rank factor);
- full: ΔW = diff, and the bias + diff_b.

A1111 applies these (extensions-builtin/Lora/network_{lora,hada,lokr,full}.py); the tests read the merged weights
through `state_dict()`, which packed layers give back dense."""

from __future__ import annotations

import pytest
import torch
from lora_files import save
from model_fixtures import _cached_folder

import sd_core
from sd_core.settings import GenerationSettings

CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # 32 -> 32, 3x3
CONV_LDM = "input_blocks.1.0.in_layers.2"
LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # 32 -> 32
LINEAR_LDM = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
FF = "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj"  # 32 -> 256 (GEGLU)
FF_LDM = "output_blocks.5.1.transformer_blocks.0.ff.net.0.proj"
TEXT = "lora_te_text_model_encoder_layers_1_mlp_fc1"  # 128 -> 256
TEXT_KEY = "text_model.encoder.layers.1.mlp.fc1"


@pytest.fixture(scope="module")
def pipe():
    return sd_core.load(_cached_folder(0, False, False), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def originals(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}, {
        k: v.clone() for k, v in pipe.text_encoder.state_dict().items()
    }


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))


def apply(pipe, tmp_path, tensors, weight: float = 1.0):
    path = save(tmp_path / "net.safetensors", tensors)
    pipe.extra_networks.activate(GenerationSettings(loras={str(path): weight}))


@pytest.fixture(autouse=True)
def restore(pipe):
    yield
    pipe.extra_networks.patcher.restore()


def test_locon_3x3_with_cp_core(pipe, originals, tmp_path):
    up, mid, down = rand(32, 4, 1, 1), rand(4, 4, 3, 3, seed=1), rand(4, 32, 1, 1, seed=2)
    apply(pipe, tmp_path, {
        f"{CONV}.lora_up.weight": up, f"{CONV}.lora_mid.weight": mid, f"{CONV}.lora_down.weight": down,
        f"{CONV}.alpha": torch.tensor(3.0),
    }, weight=0.7)  # fmt: skip
    delta = torch.zeros(32, 32, 3, 3)
    for y in range(3):
        for x in range(3):
            delta[:, :, y, x] = up[:, :, 0, 0] @ mid[:, :, y, x] @ down[:, :, 0, 0]
    expected = originals[0][f"{CONV_LDM}.weight"] + 0.7 * (3.0 / 4) * delta
    torch.testing.assert_close(pipe.unet.state_dict()[f"{CONV_LDM}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_locon_3x3_plain(pipe, originals, tmp_path):
    up, down = rand(32, 8, 1, 1), rand(8, 32, 3, 3, seed=1)
    apply(pipe, tmp_path, {f"{CONV}.lora_up.weight": up, f"{CONV}.lora_down.weight": down})  # no alpha: scale 1
    delta = torch.einsum("oa,aiyx->oiyx", up[:, :, 0, 0], down)
    expected = originals[0][f"{CONV_LDM}.weight"] + delta
    torch.testing.assert_close(pipe.unet.state_dict()[f"{CONV_LDM}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_loha_linear(pipe, originals, tmp_path):
    w1a, w1b, w2a, w2b = rand(32, 4), rand(4, 32, seed=1), rand(32, 4, seed=2), rand(4, 32, seed=3)
    apply(pipe, tmp_path, {
        f"{LINEAR}.hada_w1_a": w1a, f"{LINEAR}.hada_w1_b": w1b, f"{LINEAR}.hada_w2_a": w2a,
        f"{LINEAR}.hada_w2_b": w2b, f"{LINEAR}.alpha": torch.tensor(2.0),
    }, weight=-0.5)  # fmt: skip
    delta = torch.einsum("or,ri,os,si->oi", w1a, w1b, w2a, w2b)
    expected = originals[0][f"{LINEAR_LDM}.weight"] - 0.5 * (2.0 / 4) * delta
    torch.testing.assert_close(pipe.unet.state_dict()[f"{LINEAR_LDM}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_loha_3x3_with_tucker_cores(pipe, originals, tmp_path):
    """With cores t1/t2 [r, r, 3, 3] each factor is Σ t[a, b] · wa[a, o] · wb[b, i] (wa stored [r, out])."""
    t1, t2 = rand(2, 2, 3, 3), rand(2, 2, 3, 3, seed=1)
    w1a, w1b, w2a, w2b = rand(2, 32, seed=2), rand(2, 32, seed=3), rand(2, 32, seed=4), rand(2, 32, seed=5)
    apply(pipe, tmp_path, {
        f"{CONV}.hada_t1": t1, f"{CONV}.hada_t2": t2, f"{CONV}.hada_w1_a": w1a, f"{CONV}.hada_w1_b": w1b,
        f"{CONV}.hada_w2_a": w2a, f"{CONV}.hada_w2_b": w2b,
    })  # fmt: skip
    f1 = torch.einsum("abyx,ao,bi->oiyx", t1, w1a, w1b)
    f2 = torch.einsum("abyx,ao,bi->oiyx", t2, w2a, w2b)
    expected = originals[0][f"{CONV_LDM}.weight"] + f1 * f2
    torch.testing.assert_close(pipe.unet.state_dict()[f"{CONV_LDM}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_lokr_whole_and_low_rank_factors(pipe, originals, tmp_path):
    """w1 [4, 2] whole, w2 = w2a @ w2b [64, 16] low-rank (rank 3, alpha 6): ΔW [256, 32] for the GEGLU projection."""
    w1, w2a, w2b = rand(4, 2), rand(64, 3, seed=1), rand(3, 16, seed=2)
    apply(pipe, tmp_path, {
        f"{FF}.lokr_w1": w1, f"{FF}.lokr_w2_a": w2a, f"{FF}.lokr_w2_b": w2b, f"{FF}.alpha": torch.tensor(6.0),
    })  # fmt: skip
    w2 = w2a @ w2b
    delta = torch.zeros(256, 32)
    for i in range(4):
        for j in range(2):
            delta[i * 64 : (i + 1) * 64, j * 16 : (j + 1) * 16] = w1[i, j] * w2
    expected = originals[0][f"{FF_LDM}.weight"] + (6.0 / 3) * delta
    torch.testing.assert_close(pipe.unet.state_dict()[f"{FF_LDM}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_lokr_without_low_rank_ignores_alpha(pipe, originals, tmp_path):
    w1, w2 = rand(2, 4), rand(16, 8, seed=1)
    apply(pipe, tmp_path, {f"{LINEAR}.lokr_w1": w1, f"{LINEAR}.lokr_w2": w2, f"{LINEAR}.alpha": torch.tensor(9.0)})
    expected = originals[0][f"{LINEAR_LDM}.weight"] + torch.kron(w1, w2)
    torch.testing.assert_close(pipe.unet.state_dict()[f"{LINEAR_LDM}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_full_diff_with_bias(pipe, originals, tmp_path):
    diff, diff_b = rand(256, 128), rand(256, seed=1)
    apply(pipe, tmp_path, {f"{TEXT}.diff": diff, f"{TEXT}.diff_b": diff_b}, weight=0.25)
    state = pipe.text_encoder.state_dict()
    torch.testing.assert_close(state[f"{TEXT_KEY}.weight"], originals[1][f"{TEXT_KEY}.weight"] + 0.25 * diff)
    torch.testing.assert_close(state[f"{TEXT_KEY}.bias"], originals[1][f"{TEXT_KEY}.bias"] + 0.25 * diff_b)


def test_only_the_named_layers_change(pipe, originals, tmp_path):
    apply(pipe, tmp_path, {f"{LINEAR}.lora_up.weight": rand(32, 2), f"{LINEAR}.lora_down.weight": rand(2, 32)})
    changed = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, originals[0][k])]
    assert changed == [f"{LINEAR_LDM}.weight"]
    assert all(torch.equal(v, originals[1][k]) for k, v in pipe.text_encoder.state_dict().items())


@pytest.mark.parametrize(
    ("down_key", "up_key"),
    [
        (f"{LINEAR}.lora_A.weight", f"{LINEAR}.lora_B.weight"),  # PEFT's names on a kohya key (A1111 takes them)
        (
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight",
        ),  # diffusers' older attention-processor LoRAs
        (
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
        ),  # PEFT / diffusers today
    ],
    ids=["kohya-peft-names", "old-diffusers", "peft"],
)
def test_other_spellings_of_the_same_layer(pipe, originals, tmp_path, down_key, up_key):
    down, up = rand(2, 32), rand(32, 2, seed=1)
    apply(pipe, tmp_path, {down_key: down, up_key: up})
    expected = originals[0][f"{LINEAR_LDM}.weight"] + up @ down
    torch.testing.assert_close(pipe.unet.state_dict()[f"{LINEAR_LDM}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_old_diffusers_text_encoder_names(pipe, originals, tmp_path):
    stem = "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer"
    down, up = rand(3, 128), rand(256, 3, seed=1)
    apply(pipe, tmp_path, {f"{stem}.down.weight": down, f"{stem}.up.weight": up})
    expected = originals[1][f"{TEXT_KEY}.weight"] + up @ down
    torch.testing.assert_close(pipe.text_encoder.state_dict()[f"{TEXT_KEY}.weight"], expected, rtol=1e-5, atol=1e-5)
