"""A1111 `parameters` text: written the way other tools read it, and read back."""

from PIL import Image

from sd_core.pnginfo import format_parameters, parse_parameters, pnginfo_for, read_parameters

SETTINGS = {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": 7, "Seed": 1, "Size": "512x512"}


def test_format_matches_a1111_layout():
    text = format_parameters("a cat", "blurry", SETTINGS)
    assert text == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512"
    )


def test_negative_line_omitted_when_empty():
    assert "Negative prompt" not in format_parameters("a cat", "", SETTINGS)


def test_values_with_separators_are_quoted_and_parse_back():
    text = format_parameters("p", "", {"Model": 'odd, name: "x"', "Seed": 3, "Steps": 20})
    assert 'Model: "odd, name: \\"x\\""' in text
    parsed = parse_parameters(text)
    assert parsed["Model"] == 'odd, name: "x"'
    assert parsed["Seed"] == "3"


def test_round_trip_multiline_prompts():
    text = format_parameters("line one\nline two", "neg one\nneg two", SETTINGS)
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "line one\nline two"
    assert parsed["negative_prompt"] == "neg one\nneg two"
    assert parsed["Sampler"] == "Euler a" and parsed["Size"] == "512x512"


def test_png_text_chunk_round_trip(tmp_path):
    text = format_parameters("a cat", "dog", SETTINGS)
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=pnginfo_for(text))
    with Image.open(path) as img:
        assert read_parameters(img) == text


def test_short_prompt_with_colon_is_not_settings():
    assert parse_parameters("a cat: cute")["prompt"] == "a cat: cute"


def test_long_settings_line_parses():
    """80 KB of settings: a backtracking regex took minutes on this, the linear parser milliseconds."""
    line = ", ".join(f"Key{i}: value {i}" for i in range(5000))
    assert parse_parameters("prompt\n" + line)["Key4999"] == "value 4999"


def test_garbage_is_all_prompt():
    assert parse_parameters('::,,"\n:,"')["prompt"] == '::,,"\n:,"'


def test_a_float_that_went_through_single_precision_is_written_as_typed():
    """Blender's FloatProperty holds 0.6 as float32: 0.6000000238418579 as a double. The infotext shows what was
    typed, as A1111 (which keeps the double from JSON) shows "0.6"; other values keep Python's own text."""
    import numpy as np

    values = {"Denoising strength": float(np.float32(0.6)), "CFG scale": float(np.float32(7.5)), "Eta": 0.123456789}
    text = format_parameters("p", "", {**values, "Hires upscale": 2.0, "Seed": 3, "Noise multiplier": 1e-5})
    assert text.endswith(
        "Denoising strength: 0.6, CFG scale: 7.5, Eta: 0.123456789, Hires upscale: 2.0, Seed: 3, "
        "Noise multiplier: 1e-05"
    )
    assert format_parameters("p", "", {"Variation seed strength": float(np.float32(0.35))}).endswith(": 0.35")
    assert np.float32(float(parse_parameters(text + ", A: 1, B: 2")["Denoising strength"])) == np.float32(0.6)
