"""AC3: the preprocessors. Canny is OpenCV's with the same thresholds; depth and normal maps from synthetic renderer
passes with known answers (planes at known distances, known orientations); invert, threshold, scribble, none."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from sd_core.controlnet import preprocess
from sd_core.limits import SettingError


def drawing(size: int = 96) -> np.ndarray:
    """Black strokes on white with a grey disc: edges, strokes and grey levels to find."""
    img = np.full((size, size, 3), 255, np.uint8)
    cv2.line(img, (10, 10), (80, 70), (0, 0, 0), 3)
    cv2.circle(img, (60, 30), 15, (90, 140, 200), -1)
    return img


@pytest.mark.parametrize(("low", "high"), [(100, 200), (30, 60), (150, 250)])
def test_canny_is_opencv_canny_with_the_same_thresholds(low, high):
    img = drawing()
    out = preprocess.canny(Image.fromarray(img), low, high)
    expected = cv2.Canny(img, low, high)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[:, :, c], expected) for c in range(3))
    assert expected.any() and not expected.all()


def test_canny_thresholds_matter_and_are_checked():
    img = drawing()
    assert (preprocess.canny(img, 30, 60) > 0).sum() >= (preprocess.canny(img, 150, 250) > 0).sum()
    with pytest.raises(SettingError, match="threshold_b"):
        preprocess.canny(img, 100, 300)


def test_invert_threshold_scribble_none():
    img = drawing()
    assert np.array_equal(preprocess.invert(img), 255 - img)
    assert np.array_equal(preprocess.none(img), img)
    scribble = preprocess.scribble(img)
    assert scribble[10, 10].tolist() == [255] * 3 and scribble[90, 5].tolist() == [0] * 3  # stroke, paper
    assert scribble[30, 60].tolist() == [255] * 3  # the disc's darkest channel (90) is below 127
    binary = preprocess.threshold(img, 127)
    assert binary[90, 5].tolist() == [255] * 3 and binary[10, 10].tolist() == [0] * 3
    assert binary[30, 60].tolist() == [255] * 3  # the disc's grey level (143) is above 127
    assert set(np.unique(binary)) <= {0, 255}


def test_depth_of_planes_at_known_distances():
    """Three planes at 2, 8/3 and 4 units and an empty sky: inverse depth puts 8/3 half way (1/z = 0.375), linear
    depth puts 3 half way; near is white, the sky black."""
    z = np.full((4, 8), np.inf)
    z[0], z[1], z[2] = 2.0, 8 / 3, 4.0
    inverse = preprocess.depth_map(z)
    assert inverse.shape == (4, 8, 3)
    assert inverse[0, 0, 0] == 255 and inverse[2, 0, 0] == 0 and inverse[3, 0, 0] == 0
    assert inverse[1, 0, 0] == 128  # round(0.5 * 255)
    z[1] = 3.0
    linear = preprocess.depth_map(z, mode="linear")
    assert linear[:, 0, 0].tolist() == [255, 128, 0, 0]
    fixed = preprocess.depth_map(z, near=1.0, far=5.0, mode="linear")
    assert fixed[:, 0, 0].tolist() == [191, 128, 64, 0]  # (5 - z) / 4 of 255
    with pytest.raises(SettingError, match="depth"):
        preprocess.depth_map(np.full((4, 4), np.inf))


def test_normals_facing_the_camera_and_sideways():
    n = np.zeros((2, 3, 3))
    n[0, 0] = (0, 0, 1)  # facing the camera
    n[0, 1] = (1, 0, 0)  # facing right
    n[0, 2] = (0, 1, 0)  # facing up
    n[1, 0] = (0, 0, 2)  # not unit length: normalised
    # n[1, 1], n[1, 2]: no surface
    out = preprocess.normal_map(n)
    assert out[0, 0].tolist() == [128, 128, 255]
    assert out[0, 1].tolist() == [255, 128, 128]
    assert out[0, 2].tolist() == [128, 255, 128]
    assert out[1, 0].tolist() == [128, 128, 255]
    assert out[1, 1].tolist() == [128, 128, 128]


def test_world_normals_through_the_camera_rotation():
    """A camera looking along world +X, up world +Z: its right is world +Y, so a world +Y normal is red; world -X
    points back at the camera, so it is blue. Rows of the rotation: the camera's X, Y, Z axes in world space."""
    world_to_camera = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    n = np.array([[[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]])
    out = preprocess.normal_map(n, camera_rotation=world_to_camera)
    assert out[0, 0].tolist() == [255, 128, 128]
    assert out[0, 1].tolist() == [128, 128, 255]
    with pytest.raises(SettingError, match="camera_rotation"):
        preprocess.normal_map(n, camera_rotation=np.eye(4))


def test_run_by_name_with_processor_resolution_and_defaults():
    img = drawing(96)
    out = preprocess.run("canny", img, resolution=48)
    assert out.shape == (48, 48, 3)
    assert np.array_equal(out[:, :, 0], cv2.Canny(cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA), 100, 200))
    assert preprocess.run("none", img, resolution=48).shape == (96, 96, 3)
    with pytest.raises(SettingError, match="depth_midas"):
        preprocess.run("depth_midas", img)
    with pytest.raises(SettingError, match="control_image"):
        preprocess.run("canny", np.zeros((0, 4, 3), np.uint8))


def test_canny_without_opencv_names_the_extra(monkeypatch):
    """OpenCV is the `controlnet` extra (its wheels need numpy 2, Blender's Python has 1.26): without it, canny is a
    clear error naming what to install, not an ImportError."""
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(SettingError, match=r"canny preprocessor needs OpenCV: pip install 'sd-core\[controlnet\]'"):
        preprocess.canny(np.zeros((16, 16, 3), np.uint8))
