"""PBR maps from a texture (`sd_core.pbr`): the normals of known surfaces against their analytic normals, Blender's
(OpenGL, green up) orientation, wrap-around for seamless sources, and height from luminance."""

from __future__ import annotations

import numpy as np
import pytest

from sd_core import pbr


def angle_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = np.clip((a * b).sum(axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def test_the_normals_of_a_sine_surface_are_its_analytic_normals_everywhere_when_it_wraps():
    """z = s * (0.5 + 0.25 sin(2 pi u / P) + 0.25 cos(2 pi row / Q)) on a 192 x 128 grid whose periods divide it:
    seamless, so the edges are as right as the middle. Analytic: n = normalize(-dz/du, -dz/dv, 1), v = -row."""
    height, width, p, q, s = 128, 192, 64, 32, 6.0
    row, u = np.mgrid[0:height, 0:width].astype(np.float64)
    h = 0.5 + 0.25 * np.sin(2 * np.pi * u / p) + 0.25 * np.cos(2 * np.pi * row / q)
    dz_du = s * 0.25 * (2 * np.pi / p) * np.cos(2 * np.pi * u / p)
    dz_drow = -s * 0.25 * (2 * np.pi / q) * np.sin(2 * np.pi * row / q)
    analytic = np.stack([-dz_du, dz_drow, np.ones_like(h)], axis=-1)  # -dz/dv = +dz/drow
    got = pbr.normals(h, strength=s, seamless="xy")
    error = angle_degrees(got, analytic)
    assert error.max() < 0.2, error.max()  # central differences: slope error ~ (2 pi / period)^2 / 6 (0.1 deg)
    assert np.allclose(np.linalg.norm(got, axis=-1), 1.0)
    encoded = pbr.normal_map(h, strength=s, seamless="xy")
    assert encoded.min() >= 0.0 and encoded.max() <= 1.0 and np.allclose(encoded * 2 - 1, got)
    flat = pbr.normals(np.zeros((4, 4)))  # a flat surface points straight out: (0.5, 0.5, 1) encoded
    assert np.allclose(flat, [0.0, 0.0, 1.0])


def test_a_plane_that_does_not_wrap_is_exact_up_to_its_edges():
    row, u = np.mgrid[0:20, 0:30].astype(np.float64)
    h = 0.01 * u - 0.02 * row
    got = pbr.normals(h, strength=1.0, seamless="")
    expected = np.array([-0.01, -0.02, 1.0]) / np.linalg.norm([-0.01, -0.02, 1.0])  # dz/dv = +0.02 (v = -row)
    assert np.allclose(got, expected, atol=1e-12)


def test_orientation_is_blenders_opengl_tangent_space():
    """A bump in the middle: on its right flank the normal leans right (+X, red up), on its upper flank (rows above,
    which is +V in Blender's UVs) it leans up (+Y, green up)."""
    row, u = np.mgrid[0:64, 0:64].astype(np.float64)
    h = np.exp(-((u - 32) ** 2 + (row - 32) ** 2) / 60.0)
    n = pbr.normals(h, strength=8.0)
    assert n[32, 40, 0] > 0.2 and abs(n[32, 40, 1]) < 1e-9  # right flank
    assert n[24, 32, 1] > 0.2 and abs(n[24, 32, 0]) < 1e-9  # upper flank (smaller row index)
    assert n[32, 24, 0] < -0.2 and n[40, 32, 1] < -0.2


@pytest.mark.parametrize("seamless", ["x", "y", "xy"])
def test_maps_of_a_seamless_texture_wrap_like_it(seamless):
    """Rolling a seamless texture across its wrapping axes rolls its maps the same way (nothing depends on where the
    image happens to start); an axis that does not wrap breaks that."""
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    shift = (7 if "y" in seamless else 0, 11 if "x" in seamless else 0)
    maps = pbr.pbr_maps(texture, seamless=seamless)
    rolled = pbr.pbr_maps(np.roll(texture, shift, axis=(0, 1)), seamless=seamless)
    for name in ("height", "normal", "roughness"):
        assert np.allclose(np.roll(maps[name], shift, axis=(0, 1)), rolled[name]), name
    plain = pbr.pbr_maps(np.roll(texture, (7, 11), axis=(0, 1)), seamless="")
    assert not np.allclose(np.roll(pbr.pbr_maps(texture)["normal"], (7, 11), axis=(0, 1)), plain["normal"])


def test_height_is_linear_luminance_and_roughness_follows_it():
    """White is high and black low; green weighs more than red, red more than blue (BT.709, after sRGB decoding)."""
    texture = np.zeros((4, 5, 3), np.uint8)
    texture[:, 0] = 0
    texture[:, 1] = (255, 0, 0)
    texture[:, 2] = (0, 255, 0)
    texture[:, 3] = (0, 0, 255)
    texture[:, 4] = 255
    h = pbr.height_map(texture, blur=0)
    row = h[0]
    assert row[0] == 0.0 and row[4] == 1.0
    assert np.isclose(row[1], 0.2126) and np.isclose(row[2], 0.7152) and np.isclose(row[3], 0.0722)
    grey = np.full((2, 2, 3), 188, np.uint8)  # sRGB 188 is linear 0.5
    assert np.isclose(pbr.srgb_to_linear(to := grey / 255.0)[0, 0, 0], 0.5, atol=3e-3) and to.max() < 1
    r = pbr.roughness_map(h)
    assert r.min() >= 0 and r.max() <= 1 and r[0, 0] > r[0, 4]  # recessed rougher than raised
    with pytest.raises(ValueError, match="seamless"):
        pbr.normals(h, seamless="z")
