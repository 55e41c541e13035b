"""A1111 prompt syntax, 75-token chunking and weighted encoding.

Expected weights follow A1111's rules (its parse_prompt_attention doctests give the float values, e.g. 1.573...04).
"""

import pytest
import torch

from sd_core.prompt import encode_with_weights, parse_prompt_attention, tokenize_prompt
from sd_core.tokenizer import BOS, EOS, CLIPTokenizer

CAT, DOG, COMMA = 2368, 1929, 267  # "cat</w>", "dog</w>", ",</w>"


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer()


# --- parse_prompt_attention -------------------------------------------------------------------------------------


def test_plain_text_has_weight_one():
    assert parse_prompt_attention("normal text") == [("normal text", 1.0)]


def test_round_brackets_multiply_by_1_1():
    assert parse_prompt_attention("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]


def test_nested_round_brackets_multiply_twice():
    assert parse_prompt_attention("((x))") == [("x", 1.1 * 1.1)]


def test_explicit_weight():
    assert parse_prompt_attention("a (cat:1.5) b") == [("a ", 1.0), ("cat", 1.5), (" b", 1.0)]


def test_explicit_weight_allows_spaces_and_sign():
    assert parse_prompt_attention("(cat: 0.5 )(dog:-1)") == [("cat", 0.5), ("dog", -1.0)]


def test_square_brackets_divide_by_1_1():
    assert parse_prompt_attention("[x]") == [("x", 1 / 1.1)]


def test_mixed_nesting_matches_a1111_float_values():
    parsed = parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert parsed == [
        ("a ", 1.0),
        ("house", 1.5730000000000004),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641000000000006),
        (".", 1.1),
    ]


def test_adjacent_equal_weights_merge():
    assert parse_prompt_attention("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]


def test_escaped_brackets_are_literal():
    assert parse_prompt_attention(r"\(literal\] \[x\) \\") == [("(literal] [x) \\", 1.0)]


def test_lone_backslash_vanishes():
    assert parse_prompt_attention(r"a\b") == [("ab", 1.0)]


def test_unclosed_round_bracket_weights_to_the_end():
    assert parse_prompt_attention("a (unbalanced") == [("a ", 1.0), ("unbalanced", 1.1)]


def test_unclosed_square_bracket_weights_to_the_end():
    assert parse_prompt_attention("a [b") == [("a ", 1.0), ("b", 1 / 1.1)]


def test_unmatched_closing_brackets_are_literal():
    assert parse_prompt_attention("a) b] c") == [("a) b] c", 1.0)]


def test_weight_without_open_bracket_is_literal():
    assert parse_prompt_attention("cat:1.5) x") == [("cat:1.5) x", 1.0)]


def test_colon_in_square_brackets_is_text():
    assert parse_prompt_attention("[a:1.5]") == [("a:1.5", 1 / 1.1)]


def test_unparsable_weight_is_literal_text():
    # A1111 raises ValueError here; sd_core keeps the text and the "(" stays open (x1.1 to the end).
    assert parse_prompt_attention("(x:1.2.3)") == [("x:1.2.3)", 1.1)]


def test_empty_prompt():
    assert parse_prompt_attention("") == [("", 1.0)]


def test_break_splits_and_eats_surrounding_whitespace():
    assert parse_prompt_attention("a cat  BREAK\n a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]


@pytest.mark.parametrize("text", ["a break b", "BREAKFAST", "a_BREAK_b"])
def test_break_must_be_an_uppercase_standalone_word(text):
    assert parse_prompt_attention(text) == [(text, 1.0)]


def test_break_inside_brackets_still_breaks():
    assert parse_prompt_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]


# --- tokenize_prompt --------------------------------------------------------------------------------------------


def _row(tokens, pad):
    return [BOS, *tokens, EOS] + [pad] * (75 - len(tokens))


def _weights(weights):
    return [1.0, *weights, 1.0] + [1.0] * (75 - len(weights))


def test_plain_prompt_is_one_padded_chunk(tok):
    ids, weights = tokenize_prompt("a photo of a cat", tok, pad_token=EOS)
    assert ids.tolist() == [_row([320, 1125, 539, 320, 2368], EOS)]
    assert weights.tolist() == [[1.0] * 77]


def test_output_types_and_shapes(tok):
    ids, weights = tokenize_prompt("a cat", tok, pad_token=0)
    assert (ids.dtype, weights.dtype, tuple(ids.shape), tuple(weights.shape)) == (
        torch.long,
        torch.float32,
        (1, 77),
        (1, 77),
    )


def test_sd2_pads_with_zero_after_eos(tok):
    ids, _ = tokenize_prompt("a cat", tok, pad_token=0)
    assert ids.tolist() == [_row([320, CAT], 0)]


def test_empty_prompt_is_bos_eos_padding(tok):
    ids, weights = tokenize_prompt("", tok, pad_token=0)
    assert ids.tolist() == [[BOS, EOS] + [0] * 75]
    assert weights.tolist() == [[1.0] * 77]


def test_weights_follow_tokens(tok):
    _, weights = tokenize_prompt("a (cat:1.5) [dog]", tok, pad_token=EOS)
    expected = torch.tensor([_weights([1.0, 1.5, 1 / 1.1])], dtype=torch.float32)
    assert torch.equal(weights, expected)


def test_each_weighted_run_is_tokenized_on_its_own(tok):
    # BPE never merges across a bracket: "photo" + "graph", not "photograph" (A1111 tokenizes each run alone).
    separate = tok.encode("photo") + tok.encode("graph")
    assert separate != tok.encode("photograph")
    ids, _ = tokenize_prompt("(photo)graph", tok, pad_token=EOS)
    assert ids.tolist() == [_row(separate, EOS)]


def test_break_starts_a_new_chunk(tok):
    ids, _ = tokenize_prompt("a cat BREAK a dog", tok, pad_token=EOS)
    assert ids.tolist() == [_row([320, CAT], EOS), _row([320, DOG], EOS)]


def test_leading_break_gives_an_empty_first_chunk(tok):
    ids, _ = tokenize_prompt("BREAK cat", tok, pad_token=0)
    assert ids.tolist() == [_row([], 0), _row([CAT], 0)]


def test_trailing_break_adds_no_chunk(tok):
    ids, _ = tokenize_prompt("cat BREAK", tok, pad_token=0)
    assert ids.tolist() == [_row([CAT], 0)]


def test_exactly_75_tokens_fit_one_chunk(tok):
    ids, _ = tokenize_prompt("cat " * 75, tok, pad_token=EOS)
    assert ids.tolist() == [[BOS] + [CAT] * 75 + [EOS]]


def test_long_prompt_continues_in_a_second_chunk(tok):
    ids, _ = tokenize_prompt("cat " * 75 + "dog " * 25, tok, pad_token=EOS)
    assert ids.tolist() == [[BOS] + [CAT] * 75 + [EOS], _row([DOG] * 25, EOS)]


def test_comma_near_chunk_end_moves_the_rest_to_the_next_chunk(tok):
    # 60 cats, a comma at position 60, then 20 dogs: the chunk fills at 75 with 14 dogs after the comma (<= 20),
    # so those dogs move to the next chunk with the rest.
    ids, _ = tokenize_prompt("cat " * 60 + ", " + "dog " * 20, tok, pad_token=EOS)
    assert ids.tolist() == [_row([CAT] * 60 + [COMMA], EOS), _row([DOG] * 20, EOS)]


def test_moved_tokens_keep_their_weights(tok):
    _, weights = tokenize_prompt("cat " * 60 + ", (" + "dog " * 20 + ":1.25)", tok, pad_token=EOS)
    assert weights.tolist() == [_weights([1.0] * 61), _weights([1.25] * 20)]


def test_comma_too_far_back_gives_a_hard_cut(tok):
    # comma at position 50: 25 tokens after it when the chunk fills, more than 20 -> no backtrack.
    ids, _ = tokenize_prompt("cat " * 50 + ", " + "dog " * 30, tok, pad_token=EOS)
    assert ids.tolist() == [[BOS] + [CAT] * 50 + [COMMA] + [DOG] * 24 + [EOS], _row([DOG] * 6, EOS)]


def test_comma_backtrack_zero_disables_it(tok):
    ids, _ = tokenize_prompt("cat " * 60 + ", " + "dog " * 20, tok, pad_token=EOS, comma_padding_backtrack=0)
    assert ids.tolist() == [[BOS] + [CAT] * 60 + [COMMA] + [DOG] * 14 + [EOS], _row([DOG] * 6, EOS)]


def test_comma_that_overflows_starts_the_next_chunk(tok):
    ids, _ = tokenize_prompt("cat " * 75 + ", dog", tok, pad_token=EOS)
    assert ids.tolist() == [[BOS] + [CAT] * 75 + [EOS], _row([COMMA, DOG], EOS)]


def test_min_chunks_appends_empty_chunks(tok):
    ids, weights = tokenize_prompt("a cat", tok, pad_token=0, min_chunks=3)
    assert ids.tolist() == [_row([320, CAT], 0), _row([], 0), _row([], 0)]
    assert weights.tolist() == [[1.0] * 77] * 3


def test_min_chunks_never_truncates(tok):
    ids, _ = tokenize_prompt("cat BREAK dog", tok, pad_token=0, min_chunks=1)
    assert ids.shape[0] == 2


# --- encode_with_weights ----------------------------------------------------------------------------------------


def _fake_encoder(width=8):
    """A deterministic [k, 77] -> [k, 77, width] function with a non-zero mean, standing in for the text encoder."""
    table = torch.randn(49408, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.3
    calls = []

    def encode(tokens):
        calls.append(tokens)
        return table[tokens]

    return encode, calls


def test_all_ones_weights_is_identity(tok):
    encode, _ = _fake_encoder()
    ids, weights = tokenize_prompt("cat " * 80, tok, pad_token=EOS)
    out = encode_with_weights(encode, ids, weights)
    assert torch.equal(out, encode(ids).reshape(1, 154, 8))


def test_encoder_called_once_on_the_chunk_batch(tok):
    encode, calls = _fake_encoder()
    ids, weights = tokenize_prompt("cat BREAK dog", tok, pad_token=EOS)
    encode_with_weights(encode, ids, weights)
    assert len(calls) == 1 and torch.equal(calls[0], ids)


def test_chunks_concatenate_in_order(tok):
    encode, _ = _fake_encoder()
    ids, weights = tokenize_prompt("cat BREAK dog", tok, pad_token=EOS)
    out = encode_with_weights(encode, ids, weights)
    assert out.shape == (1, 154, 8) and torch.equal(out[0, 77:], encode(ids[1]))


def test_weighting_scales_then_restores_each_chunk_mean(tok):
    encode, _ = _fake_encoder()
    ids, weights = tokenize_prompt("a (cat:1.5) [dog] BREAK (((bird)))", tok, pad_token=EOS)
    z = encode(ids)
    expected = []
    for chunk, w in zip(z, weights.double(), strict=True):
        scaled = chunk * w[:, None]
        expected.append(scaled * (chunk.mean() / scaled.mean()))
    out = encode_with_weights(encode, ids, weights)
    assert torch.equal(out, torch.cat(expected)[None])


def test_weighting_keeps_each_chunk_mean(tok):
    encode, _ = _fake_encoder()
    ids, weights = tokenize_prompt("(cat:2.0) BREAK [[dog]]", tok, pad_token=EOS)
    out = encode_with_weights(encode, ids, weights).reshape(2, 77, 8)
    torch.testing.assert_close(out.mean(dim=(1, 2)), encode(ids).mean(dim=(1, 2)), rtol=1e-12, atol=0)


def test_unweighted_chunk_is_untouched_by_weights_elsewhere(tok):
    encode, _ = _fake_encoder()
    ids, weights = tokenize_prompt("(cat:2.0) BREAK dog", tok, pad_token=EOS)
    out = encode_with_weights(encode, ids, weights)
    assert torch.equal(out[0, 77:], encode(ids[1]))
