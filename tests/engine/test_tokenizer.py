"""CLIPTokenizer against transformers' CLIPTokenizer (what diffusers uses) built from the same shipped merge list."""

import gzip
import hashlib
import json
import random
import unicodedata
from importlib import resources

import pytest

from sd_core.prompt import tokenize_prompt
from sd_core.tokenizer import BOS, EOS, CLIPTokenizer

transformers = pytest.importorskip("transformers")

VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "masterpiece, best quality, 1girl, solo, looking at viewer; (detailed) [eyes]!",
    "don't stop, it's fine, we're here, they've gone, I'm ok, you'll see, he'd go, I'LL SHOUT",
    "''s !'s x's 'sun 'tis",
    "3.14159 1999 4k 8K 16:9 1/2 -5 +7 #1 @user",
    "café crème brûlée, naïve Straße, Ünïcödé, cafe\u0301 (decomposed)",
    "ΟΔΟΣ Σ σ ς İstanbul ǅ",
    "🐱🐶 👨\u200d👩\u200d👧 emoji😀test ☕️",
    "日本語の猫、東京タワー。中文提示词 한국어 프롬프트",
    "Привет мир, مرحبا بالعالم, नमस्ते",
    "  leading and trailing   spaces\t\ttabs\nnew lines\r\n ",
    "no\u00a0break\u3000ideographic\u2003em space\u200bzero width\x1cfile sep",
    "&amp; &lt;tag&gt; &quot;quoted&quot; &#39;apos&#39; &nbsp;",
    "x² ½ Ⅻ ٣ ① superscript",
    "snake_case kebab-case CamelCase dots...ellipsis --- !!! ???",
    "<|endoftext|> verbatim <|startoftext|>x<|ENDOFTEXT|>! <|endoftext",
    "a\x00b\ufffdc\x7f",
    "",
    "   ",
]


def _byte_stand_ins() -> list[str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory):
    """vocab.json / merges.txt written from the shipped .gz, the files a diffusers `tokenizer/` folder holds."""
    raw = resources.files("sd_core").joinpath("data", "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : 1 + 48894]
    base = _byte_stand_ins()
    tokens = base + [t + "</w>" for t in base] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def oracle(oracle_dir):
    return transformers.CLIPTokenizer.from_pretrained(str(oracle_dir), model_max_length=77)


@pytest.fixture(scope="module")
def oracle_sd2(oracle_dir):
    return transformers.CLIPTokenizer.from_pretrained(str(oracle_dir), model_max_length=77, pad_token="!")


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer()


def test_shipped_vocabulary_is_the_openai_clip_file():
    raw = resources.files("sd_core").joinpath("data", "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == VOCAB_SHA256


def test_known_stable_diffusion_ids(tok):
    # Ids every SD tokenizer gives (independent of the oracle): "a photo of a cat" and the comma.
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tok.encode(",") == [267]


def test_vocabulary_layout_matches_oracle(tok, oracle):
    vocab = oracle.get_vocab()
    assert len(vocab) == 49408
    assert all(tok.token_id(token) == i for token, i in vocab.items())


def test_special_token_ids(oracle):
    assert (BOS, EOS) == (oracle.bos_token_id, oracle.eos_token_id) == (49406, 49407)


@pytest.mark.parametrize("text", PROMPTS)
def test_encode_matches_transformers(tok, oracle, text):
    assert tok.encode(text) == oracle(text, add_special_tokens=False)["input_ids"]


def test_character_classes_match_transformers_over_unicode(tok, oracle):
    # Every 61st assigned code point, alone, inside a word, after a digit and upper-cased: letter / number / other /
    # whitespace classification and lower-casing must agree with the oracle's Oniguruma classes.
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")][::61]
    texts = [f"x{c}y {c} 1{c}{c.upper()}!" for c in chars]
    expected = oracle(texts, add_special_tokens=False)["input_ids"]
    mismatches = [(c, text) for c, text, ids in zip(chars, texts, expected, strict=True) if tok.encode(text) != ids]
    assert mismatches == []


def test_random_strings_match_transformers(tok, oracle):
    rng = random.Random(1234)
    alphabet = "abcXYZ019 ,.'!:;()<|>-_sdtlmrev\t\néüß日本🐱²½\u00a0"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    expected = oracle(texts, add_special_tokens=False)["input_ids"]
    assert [tok.encode(t) for t in texts] == expected


def test_long_word_matches_transformers(tok, oracle):
    text = "supercalifragilisticexpialidocious" * 20 + "!" * 50
    assert tok.encode(text) == oracle(text, add_special_tokens=False)["input_ids"]


def test_encode_is_repeatable_with_cache(tok):
    assert tok.encode("a cat, a cat") == tok.encode("a cat, a cat") == [320, 2368, 267, 320, 2368]


# Plain prompts (no prompt syntax) of up to 75 tokens: exactly what diffusers' pipelines feed the text encoder.
SHORT_PROMPTS = [p for p in PROMPTS if not any(c in p for c in "()[]\\:") and "BREAK" not in p]


@pytest.mark.parametrize("text", SHORT_PROMPTS)
def test_sd1_sequence_equals_diffusers_tokens(tok, oracle, text):
    ids, _ = tokenize_prompt(text, tok, pad_token=EOS)
    expected = oracle(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.tolist() == expected.tolist()


# diffusers' SD2 tokenizer has pad_token "!", which transformers then matches as a special token: every "!" becomes id 0
# on its own, never merged ("!!!" -> 0 0 0). OpenCLIP, which SD2 was trained with, does not do that, nor does sd_core.
SD2_PROMPTS = [p for p in SHORT_PROMPTS if "!" not in p]


@pytest.mark.parametrize("text", SD2_PROMPTS)
def test_sd2_sequence_equals_diffusers_tokens(tok, oracle_sd2, text):
    ids, _ = tokenize_prompt(text, tok, pad_token=0)
    expected = oracle_sd2(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.tolist() == expected.tolist()


def test_sd1_sequence_of_exactly_75_tokens_equals_diffusers(tok, oracle):
    text = " ".join(["cat"] * 75)
    ids, _ = tokenize_prompt(text, tok, pad_token=EOS)
    expected = oracle(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.tolist() == expected.tolist()
