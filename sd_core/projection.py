"""Projecting a picture taken from a camera onto a mesh's UV texture: the geometry, in plain numpy.

numpy only (no torch, no PIL, no bpy): the Blender add-on ships this file as `sd_projection.py` and runs it in
Blender's own Python (numpy 1.26). The Blender side (`blender_addon/projection.py`) gathers the numbers (camera
matrices, the mesh's triangles in world space with their UVs, the rendered depth pass); everything that can be
checked without Blender is here.

Conventions:

- **Camera**: `world_to_camera` is the 4x4 inverse of the camera's world matrix (Blender's camera looks down its
  own -Z, +Y up); `projection` the 4x4 matrix from camera space to clip space (Blender's `calc_matrix_camera`,
  OpenGL style: NDC x, y in [-1, 1], +y up). The **depth** of a point is its view Z distance, `-z` in camera space:
  what Blender's Z pass (and a Camera Data node's View Z Depth) hold.
- **Image coordinates** are continuous pixels, rows top-down (PNG order): pixel (i, j) covers `[j, j+1) x [i, i+1)`
  and its centre is `(j + 0.5, i + 0.5)`; `x = (ndc_x + 1) / 2 * width`, `y = (1 - ndc_y) / 2 * height`.
- **Textures** here are rows **bottom-up**, Blender's own layout: texel (r, c) of a `size x size` texture sits at
  `uv = ((c + 0.5) / width, (r + 0.5) / height)`, so arrays go to and from `Image.pixels` without a flip.
- **Depth maps for a depth ControlNet**: near = white, far = black, see `depth_levels` (used by
  `sd_core.controlnet.preprocess.depth_map`).

The steps of one projection: `rasterize_uv` (each texel's world position and normal), `project` (its image position
and depth), `visible` (in frame, facing the camera, not occluded: its depth agrees with the depth pass there),
`bilinear` (the picture's colour there), `bake` (written where visible and not already covered, the coverage mask
grown). Several cameras in turn: each bakes only what earlier ones left uncovered.
"""

from __future__ import annotations

import numpy as np


def depth_levels(
    z: np.ndarray, near: float | None = None, far: float | None = None, mode: str = "inverse"
) -> np.ndarray:
    """A depth pass (HxW distances, view Z) as grey levels 0..255 (uint8 HxW): near = white, far = black, pixels with
    no surface (non-finite, <= 0, or beyond `far`) black. `near`/`far`: the distances mapped to 255 and 0 (None: the
    nearest and farthest surface seen). `mode` "inverse" normalises 1/z (a disparity, as MiDaS's maps), "linear" z.
    One flat distance is all white. Raises ValueError when there is no surface or near >= far."""
    if mode not in ("inverse", "linear"):
        raise ValueError(f"depth mode must be 'inverse' or 'linear', got {mode!r}")
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        surface = np.isfinite(z) & (z > 0)
        if far is not None:
            surface &= z <= far
    if not surface.any():
        raise ValueError("depth pass has no surface (every value is non-finite, zero or too far)")
    lo = float(z[surface].min()) if near is None else float(near)
    hi = float(z[surface].max()) if far is None else float(far)
    if not 0 < lo < hi:
        if lo == hi:
            return np.where(surface, 255, 0).astype(np.uint8)
        raise ValueError(f"depth: near ({lo:g}) must be positive and less than far ({hi:g})")
    zs = np.clip(np.where(surface, z, hi), lo, hi)
    value = (1 / zs - 1 / hi) / (1 / lo - 1 / hi) if mode == "inverse" else (hi - zs) / (hi - lo)
    return np.where(surface, np.round(value * 255), 0).astype(np.uint8)


def normal_colours(normals: np.ndarray, camera_rotation: np.ndarray | None = None) -> np.ndarray:
    """Normals (HxWx3) as a normal ControlNet's map, uint8 HxWx3: camera space encoded `(n + 1) / 2` (red = +X right,
    green = +Y up, blue = +Z toward the camera; zero vectors = no surface = 128 grey). `camera_rotation`: the 3x3
    world-to-camera rotation for world-space normals (Blender's). Used by `controlnet.preprocess.normal_map`."""
    n = np.asarray(normals, dtype=np.float64)
    if camera_rotation is not None:
        n = n @ np.asarray(camera_rotation, dtype=np.float64).T
    length = np.linalg.norm(n, axis=2, keepdims=True)
    unit = np.divide(n, length, out=np.zeros_like(n), where=length > 1e-8)
    return np.round((unit + 1) * 127.5).clip(0, 255).astype(np.uint8)


def transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (..., 3) through a 4x4 affine matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


def project(
    points: np.ndarray, world_to_camera: np.ndarray, projection: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> (image coordinates (N, 2) as (x, y) pixels, rows top-down; depth (N,), view Z).
    Points at or behind the camera plane get depth <= 0 and NaN coordinates."""
    cam = transform(world_to_camera, points)
    depth = -cam[:, 2]
    clip = np.concatenate([cam, np.ones((len(cam), 1))], axis=1) @ np.asarray(projection, dtype=np.float64).T
    w = clip[:, 3]
    ok = np.abs(w) > 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        ndc = np.where(ok[:, None], clip[:, :2] / np.where(ok, w, 1)[:, None], np.nan)
    ndc[depth <= 0] = np.nan
    xy = np.stack([(ndc[:, 0] + 1) / 2 * width, (1 - ndc[:, 1]) / 2 * height], axis=1)
    return xy, depth


def _corners(xy: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """Bilinear footprint of continuous coordinates: the four pixel indices (clamped) and the weights."""
    fx = xy[:, 0] - 0.5
    fy = xy[:, 1] - 0.5
    x0 = np.floor(fx)
    y0 = np.floor(fy)
    tx = fx - x0
    ty = fy - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xa, xb = np.clip(x0, 0, width - 1), np.clip(x0 + 1, 0, width - 1)
    ya, yb = np.clip(y0, 0, height - 1), np.clip(y0 + 1, 0, height - 1)
    return xa, xb, ya, yb, tx, ty


def bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """`image` (H, W[, C], rows top-down) sampled at continuous pixel coordinates (N, 2) by bilinear interpolation
    between pixel centres, edges clamped. Coordinates that are not finite give 0."""
    img = np.asarray(image, dtype=np.float64)
    flat = img.ndim == 2
    if flat:
        img = img[:, :, None]
    h, w = img.shape[:2]
    finite = np.isfinite(xy).all(axis=1)
    safe = np.where(finite[:, None], xy, 0.5)
    xa, xb, ya, yb, tx, ty = _corners(safe, w, h)
    tx, ty = tx[:, None], ty[:, None]
    top = img[ya, xa] * (1 - tx) + img[ya, xb] * tx
    bottom = img[yb, xa] * (1 - tx) + img[yb, xb] * tx
    out = top * (1 - ty) + bottom * ty
    out[~finite] = 0
    return out[:, 0] if flat else out


def in_frame(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Coordinates inside the picture (N,) bool."""
    with np.errstate(invalid="ignore"):
        return (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)


def facing(
    points: np.ndarray,
    normals: np.ndarray,
    world_to_camera: np.ndarray,
    orthographic: bool = False,
    min_cosine: float = 0.0,
) -> np.ndarray:
    """Surfaces whose normal (world space, (N, 3)) points toward the camera by more than `min_cosine` (the cosine
    of the angle between the normal and the direction to the camera; orthographic cameras look along -Z)."""
    rot = np.asarray(world_to_camera, dtype=np.float64)[:3, :3]
    n = np.asarray(normals, dtype=np.float64) @ rot.T
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    if orthographic:
        to_camera = np.broadcast_to(np.array([0.0, 0.0, 1.0]), n.shape)
    else:
        cam = transform(world_to_camera, points)
        to_camera = -cam / np.maximum(np.linalg.norm(cam, axis=1, keepdims=True), 1e-12)
    return (n * to_camera).sum(axis=1) > min_cosine


def visible(xy: np.ndarray, depth: np.ndarray, depth_pass: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
    """Points (image coordinates, depth) that the camera sees: in the frame, in front of it, and not behind the
    surface the depth pass (H x W view Z, rows top-down, inf where there is none) shows there. The pass is compared
    as inverse depth interpolated bilinearly (exact on planes, since 1/z is affine in screen space): a point is
    occluded when its depth exceeds the surface's by more than `tolerance` (relative). Background pixels (no
    surface) count as infinitely far, so points on a silhouette stay seen."""
    zpass = np.asarray(depth_pass, dtype=np.float64)
    h, w = zpass.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(np.isfinite(zpass) & (zpass > 0), 1 / zpass, 0.0)
    inside = in_frame(xy, w, h) & (depth > 0)
    surface_inv = bilinear(inv, xy)
    with np.errstate(divide="ignore", invalid="ignore"):
        seen = depth * surface_inv <= 1 + tolerance  # depth <= surface depth * (1 + tolerance)
    return inside & seen


def _barycentric_raster(uv: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels whose centre lies in the UV triangle `uv` (3, 2): their rows, columns and barycentric weights (K, 3)."""
    px = uv * np.array([width, height]) - 0.5  # texel-centre coordinates: centre of texel c is at c
    c0 = max(int(np.floor(px[:, 0].min())), 0)
    c1 = min(int(np.ceil(px[:, 0].max())), width - 1)
    r0 = max(int(np.floor(px[:, 1].min())), 0)
    r1 = min(int(np.ceil(px[:, 1].max())), height - 1)
    empty = np.zeros(0, np.int64)
    if c0 > c1 or r0 > r1:
        return empty, empty, np.zeros((0, 3))
    rows, cols = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
    rows, cols = rows.ravel(), cols.ravel()
    a, b, c = px
    det = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])
    if abs(det) < 1e-12:
        return empty, empty, np.zeros((0, 3))
    l1 = ((cols - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (rows - a[1])) / det
    l2 = ((b[0] - a[0]) * (rows - a[1]) - (cols - a[0]) * (b[1] - a[1])) / det
    l0 = 1 - l1 - l2
    eps = -1e-9
    inside = (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    return rows[inside], cols[inside], np.stack([l0, l1, l2], axis=1)[inside]


def _batch_raster(
    uvs: np.ndarray, width: int, height: int, box: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_barycentric_raster` for many small triangles at once: each triangle's texels within a `box` (rows, cols)
    window from its bounding box's corner. Returns (triangle index, rows, cols, barycentric weights) of the texels
    inside."""
    px = uvs * np.array([width, height]) - 0.5  # (T, 3, 2) texel-centre coordinates
    c0 = np.floor(px[:, :, 0].min(axis=1)).astype(np.int64)
    r0 = np.floor(px[:, :, 1].min(axis=1)).astype(np.int64)
    dr, dc = np.mgrid[0 : box[0], 0 : box[1]]
    rows = r0[:, None] + dr.ravel()[None, :]  # (T, K)
    cols = c0[:, None] + dc.ravel()[None, :]
    a, b, c = px[:, 0], px[:, 1], px[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    ok = np.abs(det) >= 1e-12
    det = np.where(ok, det, 1.0)[:, None]
    x, y = cols - a[:, 0:1], rows - a[:, 1:2]
    l1 = (x * (c[:, 1:2] - a[:, 1:2]) - (c[:, 0:1] - a[:, 0:1]) * y) / det
    l2 = ((b[:, 0:1] - a[:, 0:1]) * y - x * (b[:, 1:2] - a[:, 1:2])) / det
    l0 = 1 - l1 - l2
    eps = -1e-9
    inside = (l0 >= eps) & (l1 >= eps) & (l2 >= eps) & ok[:, None]
    inside &= (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    tri, k = np.nonzero(inside)
    return tri, rows[tri, k], cols[tri, k], np.stack([l0[tri, k], l1[tri, k], l2[tri, k]], axis=1)


def rasterize_uv(
    uvs: np.ndarray, positions: np.ndarray, normals: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each texel's world position and normal from triangles: `uvs` (T, 3, 2), `positions` and `normals` (T, 3, 3)
    per corner (world space). Returns (positions (H, W, 3), normals (H, W, 3), covered (H, W) bool), rows bottom-up
    (Blender's texture layout); texels whose centre no triangle covers are not `covered`. Where UV islands overlap,
    one of the triangles wins. Small triangles (bounding box up to 16 x 16 texels: a dense mesh's) are rasterized
    together in batches, bucketed by size; larger ones one by one."""
    uvs = np.asarray(uvs, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    normals = np.asarray(normals, dtype=np.float64)
    pos_out = np.zeros((height, width, 3))
    nrm_out = np.zeros((height, width, 3))
    covered = np.zeros((height, width), bool)
    px = uvs * np.array([width, height]) - 0.5
    span = np.ceil(px.max(axis=1)) - np.floor(px.min(axis=1)) + 1  # (T, 2): columns, rows of the bounding box
    largest = span.max(axis=1)
    low = 0
    for box in (4, 8, 16):  # buckets by bounding-box size, so little of each window is wasted
        bucket = np.nonzero((largest > low) & (largest <= box))[0]
        low = box
        for start in range(0, len(bucket), 8192):
            index = bucket[start : start + 8192]
            tri, rows, cols, bary = _batch_raster(uvs[index], width, height, (box, box))
            t = index[tri]
            pos_out[rows, cols] = np.einsum("kc,kcd->kd", bary, positions[t])
            nrm_out[rows, cols] = np.einsum("kc,kcd->kd", bary, normals[t])
            covered[rows, cols] = True
    for t in np.nonzero(largest > 16)[0]:
        rows, cols, bary = _barycentric_raster(uvs[t], width, height)
        if len(rows):
            pos_out[rows, cols] = bary @ positions[t]
            nrm_out[rows, cols] = bary @ normals[t]
            covered[rows, cols] = True
    return pos_out, nrm_out, covered


def bake(
    texture: np.ndarray,
    coverage: np.ndarray,
    picture: np.ndarray,
    xy: np.ndarray,
    seen: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One camera's `picture` (Hp x Wp x C, rows top-down) baked into `texture` (H x W x C, rows bottom-up) where the
    texel is `seen` (H x W bool, from `visible` & `facing`) and not yet covered by an earlier view (`coverage`, H x W
    bool). `xy` (H x W x 2): each texel's image coordinates. Returns (new texture, new coverage, the texels written);
    every other texel keeps its previous colour."""
    tex = np.array(texture, dtype=np.float64, copy=True)
    write = np.asarray(seen, bool) & ~np.asarray(coverage, bool)
    if write.any():
        colours = bilinear(picture, xy[write])
        tex[write] = colours[:, : tex.shape[2]] if colours.ndim == 2 else colours[:, None]
    return tex, np.asarray(coverage, bool) | write, write


def project_texels(
    positions: np.ndarray,
    normals: np.ndarray,
    covered: np.ndarray,
    world_to_camera: np.ndarray,
    projection: np.ndarray,
    depth_pass: np.ndarray,
    *,
    orthographic: bool = False,
    tolerance: float = 0.01,
    min_cosine: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """For the texels of `rasterize_uv`: their image coordinates (H, W, 2) in the depth pass's picture and whether
    the camera sees them (H, W): covered by the mesh, facing the camera (`min_cosine`), in frame and not occluded."""
    h, w = covered.shape
    height, width = np.asarray(depth_pass).shape
    pts = positions.reshape(-1, 3)
    xy, depth = project(pts, world_to_camera, projection, width, height)
    seen = covered.ravel().copy()
    seen &= facing(pts, normals.reshape(-1, 3), world_to_camera, orthographic, min_cosine)
    seen &= visible(xy, depth, depth_pass, tolerance)
    return xy.reshape(h, w, 2), seen.reshape(h, w)
