"""The projection geometry (`sd_core.projection`, numpy only, shipped in the Blender add-on): camera projection,
visibility from a depth pass, UV rasterization, bilinear sampling and baking with a coverage mask."""

from __future__ import annotations

import numpy as np
import pytest

from sd_core import projection as pj


def perspective(fov_x: float, width: int, height: int, near: float = 0.1, far: float = 100.0) -> np.ndarray:
    """An OpenGL projection like Blender's camera (sensor fit horizontal)."""
    fx = 1 / np.tan(fov_x / 2)
    fy = fx * width / height
    return np.array(
        [
            [fx, 0, 0, 0],
            [0, fy, 0, 0],
            [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0, 0, -1, 0],
        ]
    )


# The camera at the origin looking down -Z: world = camera space
EYE = np.eye(4)
W, H = 64, 48
P = perspective(np.pi / 2, W, H)


def test_projection_of_known_points():
    """A 90 degree camera: (0,0,-2) is the centre; (2,0,-2) the right edge; (0, 2*H/W, -2) the top edge."""
    pts = np.array([[0, 0, -2], [2, 0, -2], [0, 2 * H / W, -2], [-1, -0.5, -4], [0, 0, 1]], float)
    xy, depth = pj.project(pts, EYE, P, W, H)
    np.testing.assert_allclose(depth, [2, 2, 2, 4, -1])
    np.testing.assert_allclose(xy[0], [W / 2, H / 2])
    np.testing.assert_allclose(xy[1], [W, H / 2])
    np.testing.assert_allclose(xy[2], [W / 2, 0], atol=1e-9)
    np.testing.assert_allclose(xy[3], [W / 2 - W / 8, H / 2 + 0.5 / 4 * W / 2], atol=1e-9)
    assert np.isnan(xy[4]).all()  # behind the camera
    assert pj.in_frame(xy, W, H)[[0, 1, 3, 4]].tolist() == [True, False, True, False]  # x = W is outside


def test_a_moved_camera_is_the_inverse_of_its_world_matrix():
    cam_world = np.eye(4)
    cam_world[:3, 3] = [1, 2, 3]
    xy, depth = pj.project(np.array([[1, 2, 0.0]]), np.linalg.inv(cam_world), P, W, H)
    np.testing.assert_allclose(depth, [3])
    np.testing.assert_allclose(xy[0], [W / 2, H / 2])


def test_bilinear_between_pixel_centres():
    img = np.array([[0.0, 10.0], [20.0, 30.0]])
    xy = np.array([[0.5, 0.5], [1.5, 0.5], [1.0, 1.0], [1.0, 0.5], [0.0, 0.0], [9.0, 9.0], [np.nan, 1.0]])
    np.testing.assert_allclose(pj.bilinear(img, xy), [0, 10, 15, 5, 0, 30, 0])
    rgb = np.stack([img, img * 2], axis=2)
    np.testing.assert_allclose(pj.bilinear(rgb, xy[:3]), [[0, 0], [10, 20], [15, 30]])


def test_depth_levels_match_the_control_map_convention():
    z = np.array([[2.0, 4.0], [8 / 3, np.inf]])
    np.testing.assert_array_equal(pj.depth_levels(z), [[255, 0], [128, 0]])
    np.testing.assert_array_equal(pj.depth_levels(z, mode="linear"), [[255, 0], [170, 0]])
    with pytest.raises(ValueError, match="no surface"):
        pj.depth_levels(np.full((2, 2), np.inf))


def test_facing_and_occlusion():
    """A near plane at z=-2 covering the left half of the view hides a far plane at z=-4 there."""
    zpass = np.full((H, W), 4.0)
    zpass[:, : W // 2] = 2.0
    far_pts = np.array([[-2.0, 0, -4], [2.0, 0, -4], [1.0, 0, -4]])
    xy, depth = pj.project(far_pts, EYE, P, W, H)
    assert pj.visible(xy, depth, zpass).tolist() == [False, True, True]
    near_pt = np.array([[-1.0, 0, -2]])
    xy, depth = pj.project(near_pt, EYE, P, W, H)
    assert pj.visible(xy, depth, zpass).tolist() == [True]
    normals = np.array([[0, 0, 1.0], [0, 0, -1.0], [1.0, 0, 0]])
    pts = np.array([[0, 0, -3.0], [0, 0, -3.0], [0, 0, -3.0]])
    assert pj.facing(pts, normals, EYE).tolist() == [True, False, False]
    # a point off-axis with a normal along +X faces the camera when the camera is to its +X side
    assert pj.facing(np.array([[-1.0, 0, -1]]), np.array([[1.0, 0, 0]]), EYE).tolist() == [True]
    assert pj.facing(np.array([[-1.0, 0, -1]]), np.array([[1.0, 0, 0]]), EYE, orthographic=True).tolist() == [False]


def test_depth_comparison_is_exact_on_a_tilted_plane():
    """Points on a plane tilted 30 degrees from the view agree with its own depth pass everywhere in frame: 1/z
    interpolates exactly between pixel centres, so a tight tolerance keeps them all visible."""
    rng = np.random.default_rng(0)
    n = np.array([np.sin(np.radians(30)), 0, np.cos(np.radians(30))])  # plane n.p = -3 * n_z
    rows, cols = np.mgrid[0:H, 0:W]
    ndc_x = (cols + 0.5) / W * 2 - 1
    ndc_y = 1 - (rows + 0.5) / H * 2
    rays = np.stack([ndc_x / P[0, 0], ndc_y / P[1, 1], -np.ones_like(ndc_x, dtype=float)], axis=2)
    d = n @ np.array([0, 0, -3.0])
    t = d / (rays @ n)
    zpass = t  # ray z component is -1, so the view depth is t
    assert (zpass > 0).all()
    uv = rng.uniform([2, 2], [W - 2, H - 2], size=(500, 2))
    ray = np.stack([(uv[:, 0] / W * 2 - 1) / P[0, 0], (1 - uv[:, 1] / H * 2) / P[1, 1], -np.ones(500)], axis=1)
    pts = ray * (d / (ray @ n))[:, None]
    xy, depth = pj.project(pts, EYE, P, W, H)
    np.testing.assert_allclose(xy, uv, atol=1e-9)
    assert pj.visible(xy, depth, zpass, tolerance=1e-6).all()
    assert not pj.visible(xy, depth * 1.01, zpass, tolerance=0.005).any()  # a hair behind: occluded


def test_rasterize_uv_interpolates_positions_and_covers_texel_centres():
    """Two triangles filling the UV square with a 3D quad: each texel's position is its UV mapped onto the quad."""
    uvs = np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], float)

    def to3d(uv):
        return np.stack([uv[..., 0] * 4 - 2, uv[..., 1] * 2 - 1, np.full(uv.shape[:-1], -5.0)], axis=-1)

    normals = np.broadcast_to([0, 0, 1.0], (2, 3, 3))
    pos, nrm, covered = pj.rasterize_uv(uvs, to3d(uvs), normals, 8, 4)
    assert covered.all()
    cols, rows = np.meshgrid(np.arange(8), np.arange(4))
    centre_uv = np.stack([(cols + 0.5) / 8, (rows + 0.5) / 4], axis=2)  # rows bottom-up: row 0 is v near 0
    np.testing.assert_allclose(pos, to3d(centre_uv), atol=1e-12)
    np.testing.assert_allclose(nrm, np.broadcast_to([0, 0, 1.0], (4, 8, 3)))
    # half the square: only the texels whose centre is on the lower right of the diagonal
    _, _, half = pj.rasterize_uv(uvs[:1], to3d(uvs[:1]), normals[:1], 8, 8)
    expected = (np.arange(8)[None, :] + 0.5) >= (np.arange(8)[:, None] + 0.5)
    np.testing.assert_array_equal(half, expected)


def test_bake_writes_seen_uncovered_texels_and_keeps_the_rest():
    picture = np.zeros((4, 4, 3))
    picture[:, :, 0] = np.arange(4)[None, :]  # red = column index
    texture = np.full((2, 3, 3), 0.5)
    coverage = np.array([[True, False, False], [False, False, False]])
    seen = np.array([[True, True, False], [True, True, True]])
    xy = np.zeros((2, 3, 2))
    xy[..., 0] = [[0.5, 1.5, 2.5], [3.5, 0.5, 1.5]]
    xy[..., 1] = 0.5
    tex, cov, wrote = pj.bake(texture, coverage, picture, xy, seen)
    np.testing.assert_array_equal(wrote, [[False, True, False], [True, True, True]])
    np.testing.assert_array_equal(cov, [[True, True, False], [True, True, True]])
    np.testing.assert_allclose(tex[..., 0], [[0.5, 1, 0.5], [3, 0, 1]])  # covered / unseen keep their 0.5
    np.testing.assert_allclose(texture, 0.5)  # the input is not changed in place


def test_project_texels_of_a_box_face_round_trip():
    """End to end in numpy: a quad facing the camera, rasterized into a texture, baked from a picture, and each
    texel's colour equals the picture at its projection; the texels of a quad behind it are hidden."""
    picture = np.random.default_rng(1).uniform(size=(H, W, 3))
    uvs = np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], float)

    def quad(z):
        return np.stack([uvs[..., 0] * 2 - 1, uvs[..., 1] * 1 - 0.5, np.full(uvs.shape[:-1], z)], axis=-1)

    normals = np.broadcast_to([0, 0, 1.0], (2, 3, 3))
    pos, nrm, cov = pj.rasterize_uv(uvs, quad(-3.0), normals, 32, 32)
    zpass = np.full((H, W), np.inf)
    xy_all, _ = pj.project(pos.reshape(-1, 3), EYE, P, W, H)
    # the front quad's own depth pass: 3 wherever its projection lands
    x0, y0 = np.floor(xy_all.min(axis=0)).astype(int)
    x1, y1 = np.ceil(xy_all.max(axis=0)).astype(int)
    zpass[y0:y1, x0:x1] = 3.0
    xy, seen = pj.project_texels(pos, nrm, cov, EYE, P, zpass)
    assert seen.all()
    tex, coverage, _ = pj.bake(np.zeros((32, 32, 3)), np.zeros((32, 32), bool), picture, xy, seen)
    np.testing.assert_allclose(tex.reshape(-1, 3), pj.bilinear(picture, xy.reshape(-1, 2)))
    assert coverage.all()
    pos_b, nrm_b, cov_b = pj.rasterize_uv(uvs, quad(-6.0), normals, 32, 32)
    _, seen_b = pj.project_texels(pos_b, nrm_b, cov_b, EYE, P, zpass)
    xy_b, _ = pj.project(pos_b.reshape(-1, 3), EYE, P, W, H)
    behind = ((xy_b >= [x0 + 1, y0 + 1]) & (xy_b <= [x1 - 1, y1 - 1])).all(axis=1).reshape(32, 32)
    assert behind.all() and not seen_b.any()  # the far quad projects inside the near one: all hidden
    _, seen_alone = pj.project_texels(pos_b, nrm_b, cov_b, EYE, P, np.full((H, W), 6.0))
    assert seen_alone.all()  # with nothing in front, the same texels are seen


def test_batched_small_triangles_match_one_by_one():
    """Small triangles go through the batched path, large ones one by one: the same texels and values either way
    (a grid of quads of about 3, 7 and 12 texels and a few large random triangles)."""
    rng = np.random.default_rng(3)
    tris = []
    for n in (120, 40, 24):
        u = np.linspace(0, 1, n + 1)
        for i in range(0, n, 3):
            for j in range(0, n, 3):
                a, b, c, d = (u[j], u[i]), (u[j + 1], u[i]), (u[j + 1], u[i + 1]), (u[j], u[i + 1])
                tris += [(a, b, c), (a, c, d)]
    uvs = np.concatenate([np.array(tris), rng.uniform(0, 1, size=(4, 3, 2))])
    values = rng.normal(size=uvs.shape[:2] + (3,))
    pos, nrm, cov = pj.rasterize_uv(uvs, values, -values, 360, 360)
    ref_pos, ref_cov = np.zeros((360, 360, 3)), np.zeros((360, 360), bool)
    written = np.zeros((360, 360), int)
    for t in range(len(uvs)):
        rows, cols, bary = pj._barycentric_raster(uvs[t], 360, 360)
        ref_pos[rows, cols] = bary @ values[t]
        ref_cov[rows, cols] = True
        written[rows, cols] += 1
    np.testing.assert_array_equal(cov, ref_cov)
    once = written == 1  # where triangles overlap, which one wins may differ
    assert once.sum() > 0.5 * cov.sum()
    np.testing.assert_allclose(pos[once], ref_pos[once], atol=1e-12)
    np.testing.assert_allclose(nrm[once], -ref_pos[once], atol=1e-12)
