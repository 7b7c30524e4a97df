"""Simulate scribble annotations from dense label maps (METHODS.md section 7).

Two generators are provided, both producing a *scribble map*: an integer array of the
same shape as the dense label in which annotated voxels carry their class
(0..ignore_label-1, background 0 is a class and gets scribbles too) and every
unannotated voxel carries ``ignore_label`` (nnU-Net ignore-label convention).

``skeleton`` (METHODS §7a; WSL4MIS / WORD / DMSPS ``scribbles_generator.py``)
    Per 2D slice and per class present in it: erode (3x3) large masks, skeletonise
    (``method='lee'``); for foreground classes keep one branch-free path of the
    skeleton, dilate it once (3x3), randomly translate/rotate it about the slice
    centre and clip it to the class mask; background keeps its full undilated skeleton.

``interior_border`` (METHODS §7c; nnU-Net ``ignore_label.md`` / ScribbleBench)
    Per 2D slice and per class present in it: one connected component chosen with
    probability proportional to its area gets one interior scribble (a quadratic
    B-spline through 4 control points sampled inside the component) and one border
    scribble (a piece of the contour of the eroded component, centred at a position
    sampled proportional to the smoothed contour curvature), dilated by disk(1) and
    clipped to the component.

Both generators also have a genuinely 3D mode (``axis=None``), see the generator
docstrings. Post-processing utilities reproduce the sparser-scribble studies:
:func:`keep_every_nth_slice` (PS-Seg / DMSPS partial scribbles) and
:func:`shorten_scribbles` (DMSPS ``ACDC_scribble_reduce_enhance.py``).

Guarantee (per-slice modes): every class that is present in a slice of the dense
label ends with at least one scribble pixel in that slice. Whenever a generator step
would leave a class empty, the generator falls back (skeleton: to the un-displaced
path) and finally to the single most interior pixel of the mask (maximum of the
Euclidean distance transform). In 3D mode the same holds per volume. Scribbles of two
classes can never overlap because every scribble is clipped to its own class mask.

Deviations from the reference implementations (all deliberate, see the docstrings):

* skeleton, branch cutting: instead of the pixel random walk with bifurcation
  snapshots of ``Cutting_branch``, the path is the shortest (hop-count) path on the
  8-connected skeleton graph from a random endpoint to a second endpoint chosen
  uniformly at random among the reachable ones. On a tree-shaped skeleton this is
  exactly what a non-backtracking random walk to a dead end produces; unlike a naive
  pixel walk it cannot be trapped by the staircase pixels of 8-connected skeletons.
* skeleton, erosion: if eroding ``n`` times would empty the mask, the erosion stops at
  the last non-empty result (the reference code would produce no scribble at all).
* interior_border: the degree-2 NURBS with unit weights of ScribbleBench is a clamped
  quadratic B-spline, evaluated here with ``scipy.interpolate.BSpline``; the hull
  truncation of the control-point segments is done on the rasterised segment instead
  of a shapely polygon.
* 3D modes (not in the references, specified by this project): see
  :func:`skeleton_scribbles` and :func:`interior_border_scribbles`.

All randomness comes from ``np.random.default_rng``; per-slice generators are seeded
from ``(seed, slice_index)`` so results do not depend on the processing order and the
global random state is never touched.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, List, Optional, Sequence, Tuple

import cc3d
import numpy as np
from scipy import ndimage
from scipy.interpolate import BSpline
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import breadth_first_order
from skimage.draw import line_nd
from skimage.measure import find_contours
from skimage.morphology import disk, skeletonize

GENERATORS = ("skeleton", "interior_border")

# skeleton generator (WSL4MIS constants)
_SKELETON_ERODE_MIN_AREA = 900
_SKELETON_DISPLACE_MIN_AREA = 1000
_SKELETON_MIN_COMPONENT = 15
_SKELETON_MAX_SHIFT = 6
_SKELETON_MAX_ROTATION_DEG = 15.0

# interior_border generator (ScribbleBench constants)
_NUM_CONTROL_POINTS = 4
_BORDER_RADIUS_RANGE = (2, 5)
_BORDER_LENGTH_RANGE = (0.07, 0.15)
_BORDER_MIN_LENGTH_3D = 5
_CURVATURE_EPS = 1e-3

_SQUARE_2D = np.ones((3, 3), dtype=bool)
_CROSS_3D = ndimage.generate_binary_structure(3, 1)


# --------------------------------------------------------------------------- validation
def _output_dtype(ignore_label: int) -> type:
    """uint8 where the ignore value fits, else uint16."""
    return np.uint8 if ignore_label < 256 else np.uint16


def _check_ignore_label(ignore_label: int) -> int:
    if isinstance(ignore_label, (bool, np.bool_)) or not isinstance(ignore_label, (int, np.integer)):
        raise ValueError(f"ignore_label must be an integer, got {ignore_label!r}")
    ignore_label = int(ignore_label)
    if ignore_label < 2:
        raise ValueError(f"ignore_label must be >= 2 (background plus at least one class), got {ignore_label}")
    if ignore_label > np.iinfo(np.uint16).max:
        raise ValueError(f"ignore_label must be <= 65535, got {ignore_label}")
    return ignore_label


def _check_integer_array(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D or 3D, got {arr.ndim}D with shape {arr.shape}")
    return arr


def _validate_label(label: np.ndarray, ignore_label: int) -> Tuple[np.ndarray, int]:
    """Check a dense label map; returns it (bool cast to uint8) and the ignore label."""
    ignore_label = _check_ignore_label(ignore_label)
    label = _check_integer_array(label, "label")
    lo, hi = int(label.min()), int(label.max())
    if lo < 0:
        raise ValueError(f"label contains negative values (min {lo}); classes must be 0..{ignore_label - 1}")
    if hi >= ignore_label:
        raise ValueError(
            f"label contains values >= ignore_label (max {hi}, ignore_label {ignore_label}); "
            f"classes must be 0..{ignore_label - 1}")
    return label, ignore_label


def _validate_scribble(scribble: np.ndarray, ignore_label: int) -> Tuple[np.ndarray, int]:
    """Check a scribble map: values 0..ignore_label (ignore_label = unannotated)."""
    ignore_label = _check_ignore_label(ignore_label)
    scribble = _check_integer_array(scribble, "scribble")
    lo, hi = int(scribble.min()), int(scribble.max())
    if lo < 0 or hi > ignore_label:
        raise ValueError(
            f"scribble values must lie in 0..{ignore_label} (ignore_label = unannotated), got range [{lo}, {hi}]")
    return scribble, ignore_label


def _check_axis(ndim: int, axis: Optional[int], allow_none: bool) -> Optional[int]:
    if axis is None:
        if not allow_none:
            raise ValueError("axis must be an integer here, got None")
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis must be an integer or None, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a {ndim}D array")
    return int(axis) % ndim


AXIS_HELP = "slicing axis of the (z,y,x) array (0, 1 or 2), or 'none' / -1 for 3D scribbles"


def axis_argument(text: str) -> Optional[int]:
    """Command-line ``--axis``, the same in every command: ``0``..``2`` slice along that array axis;
    ``none`` or ``-1`` mean 3D scribbles (``axis=None``). Other negative values are refused rather than
    read as numpy's from-the-end indices."""
    import argparse
    if text.strip().lower() in ("none", "-1"):
        return None
    try:
        axis = int(text)
    except ValueError:
        axis = -2
    if not 0 <= axis <= 2:
        raise argparse.ArgumentTypeError(f"--axis {text!r}: use 0, 1 or 2 (slicing axis) or 'none' / -1 (3D)")
    return axis


# --------------------------------------------------------------------------- helpers
def _check_seed(seed: int) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _slice_rng(seed: int, index: int) -> np.random.Generator:
    """Independent, order-free random stream for one slice."""
    return np.random.default_rng([int(seed), int(index)])


def _volume_rng(seed: int, cls: int) -> np.random.Generator:
    """Random stream for one class of a genuinely 3D scribble (distinct from slice streams)."""
    return np.random.default_rng([int(seed), 2 ** 31 + int(cls)])


def _unpad(arr: np.ndarray, pad: int = 1) -> np.ndarray:
    return arr[tuple(slice(pad, -pad) for _ in range(arr.ndim))]


def _most_interior_pixel(mask: np.ndarray) -> np.ndarray:
    """Mask with only the pixel of ``mask`` farthest from its boundary."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))
    dist = _unpad(dist)
    out = np.zeros(mask.shape, dtype=bool)
    out[np.unravel_index(int(np.argmax(dist)), mask.shape)] = True
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8- (2D) / 26- (3D) connected component of a binary mask."""
    if not mask.any():
        return mask
    return cc3d.largest_k(mask.astype(np.uint8), k=1, connectivity=8 if mask.ndim == 2 else 26) > 0


def _components_by_size(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Keep the largest component plus every component with more than ``min_size`` voxels."""
    cc, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=8 if mask.ndim == 2 else 26,
                                      return_N=True)
    if n <= 1:
        return mask.astype(bool)
    counts = np.bincount(cc.ravel())
    counts[0] = 0
    keep = counts > min_size
    keep[int(np.argmax(counts))] = True
    keep[0] = False
    return keep[cc]


def _neighbour_graph(mask: np.ndarray) -> Tuple[np.ndarray, csr_matrix]:
    """Coordinates of ``mask`` voxels and their symmetric full-connectivity adjacency graph."""
    coords = np.argwhere(mask)
    n = len(coords)
    index = np.full(tuple(s + 2 for s in mask.shape), -1, dtype=np.int64)
    index[tuple(coords.T + 1)] = np.arange(n)
    offsets = np.array(np.meshgrid(*[[-1, 0, 1]] * mask.ndim, indexing="ij")).reshape(mask.ndim, -1).T
    # half of the offsets suffice for a symmetric graph
    offsets = offsets[[tuple(o) > (0,) * mask.ndim for o in offsets]]
    rows, cols = [], []
    for off in offsets:
        nb = index[tuple(coords.T + 1 + off[:, None])]
        ok = nb >= 0
        rows.append(np.flatnonzero(ok))
        cols.append(nb[ok])
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    data = np.ones(2 * len(rows), dtype=np.int8)
    graph = coo_matrix((data, (np.concatenate([rows, cols]), np.concatenate([cols, rows]))), shape=(n, n)).tocsr()
    return coords, graph


def _iterate_slices(label: np.ndarray, axis: int, out: np.ndarray,
                    fn: Callable[[np.ndarray, np.random.Generator], np.ndarray], seed: int) -> np.ndarray:
    """Apply a 2D slice generator along ``axis`` of a 3D volume (or once to a 2D image)."""
    if label.ndim == 2:
        out[...] = fn(label, _slice_rng(seed, 0))
        return out
    lab_view = np.moveaxis(label, axis, 0)
    out_view = np.moveaxis(out, axis, 0)
    for z in range(lab_view.shape[0]):
        out_view[z] = fn(lab_view[z], _slice_rng(seed, z))
    return out


def _class_bboxes(label: np.ndarray, num_classes: int) -> List[Optional[Tuple[slice, ...]]]:
    """Bounding box of every class 0..num_classes-1 (None where absent)."""
    return ndimage.find_objects(label.astype(np.int32) + 1, max_label=num_classes)


# --------------------------------------------------------------------------- skeleton
def _erode_capped(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Erode with a 3x3 square ``iterations`` times, stopping before the mask would vanish."""
    current = mask
    for _ in range(iterations):
        nxt = ndimage.binary_erosion(current, structure=_SQUARE_2D)
        if not nxt.any():
            break
        current = nxt
    return current


def _erosion_iterations(num_classes: int, rng: np.random.Generator) -> int:
    """n = ceil(a + U(b - a)) with (a, b) = (1, C - 1), as in the WSL4MIS generator."""
    a, b = 1, max(1, num_classes - 1)
    return max(a, int(np.ceil(a + rng.random() * (b - a))))


def _branch_free_path(skeleton: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One branch-free path of a skeleton.

    Starts at a random endpoint (pixel with a single neighbour; a random pixel if the
    skeleton has no endpoint, i.e. is a closed loop) and ends at an endpoint drawn
    uniformly among the other endpoints reachable from it (the farthest pixel if there
    is none). The path between both is the hop-count shortest path on the skeleton
    graph, which on a tree-shaped skeleton equals a non-backtracking random walk from
    the start endpoint to a dead end. Simplification of WSL4MIS ``Cutting_branch``.
    """
    coords, graph = _neighbour_graph(skeleton)
    n = len(coords)
    if n <= 2:
        return skeleton.copy()
    degree = np.diff(graph.indptr)
    endpoints = np.flatnonzero(degree == 1)
    start = int(rng.choice(endpoints)) if endpoints.size else int(rng.integers(n))
    order, predecessors = breadth_first_order(graph, start, directed=False, return_predecessors=True)
    reachable_ends = np.intersect1d(endpoints, order)
    reachable_ends = reachable_ends[reachable_ends != start]
    end = int(rng.choice(reachable_ends)) if reachable_ends.size else int(order[-1])
    path = [end]
    while path[-1] != start:
        path.append(int(predecessors[path[-1]]))
    out = np.zeros(skeleton.shape, dtype=bool)
    out[tuple(coords[path].T)] = True
    return out


def _displace(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Translate by U{-6..6}^2 and rotate by U(-15, 15) degrees about the image centre (order 0)."""
    shift = rng.integers(-_SKELETON_MAX_SHIFT, _SKELETON_MAX_SHIFT + 1, size=2)
    theta = np.deg2rad(rng.uniform(-_SKELETON_MAX_ROTATION_DEG, _SKELETON_MAX_ROTATION_DEG))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = (np.array(mask.shape) - 1) / 2.0
    # output x' = R (x - c) + c + t  ->  input x = R^T (x' - c - t) + c
    inv = rot.T
    offset = centre - inv @ (centre + shift)
    moved = ndimage.affine_transform(mask.astype(np.uint8), inv, offset=offset, order=0, mode="constant", cval=0)
    return moved > 0


def _skeleton_class_2d(lab2d: np.ndarray, cls: int, bbox: Tuple[slice, ...], num_classes: int,
                       rng: np.random.Generator) -> Tuple[Tuple[slice, ...], np.ndarray]:
    """Skeleton scribble of one class in one slice; returns (bbox, scribble mask within bbox)."""
    mask = lab2d[bbox] == cls
    area = int(mask.sum())
    work = np.pad(mask, 1)
    if area > _SKELETON_ERODE_MIN_AREA:
        work = _erode_capped(work, _erosion_iterations(num_classes, rng))
    skel = _unpad(skeletonize(work, method="lee") > 0)
    if cls == 0:
        scribble = skel & mask
    elif skel.any():
        path = _branch_free_path(_components_by_size(skel, _SKELETON_MIN_COMPONENT), rng)
        path = ndimage.binary_dilation(path, structure=_SQUARE_2D) & mask
        scribble = path
        if area > _SKELETON_DISPLACE_MIN_AREA:
            full = np.zeros(lab2d.shape, dtype=bool)
            full[bbox] = path
            moved = _displace(full, rng)[bbox] & mask
            scribble = moved if moved.any() else path  # fallback: un-displaced path
    else:
        scribble = skel
    if not scribble.any():
        scribble = _most_interior_pixel(mask)
    return bbox, scribble


def _skeleton_slice(lab2d: np.ndarray, ignore_label: int, dtype: type, rng: np.random.Generator) -> np.ndarray:
    out = np.full(lab2d.shape, ignore_label, dtype=dtype)
    for cls, bbox in enumerate(_class_bboxes(lab2d, ignore_label)):
        if bbox is None:
            continue
        bbox, scribble = _skeleton_class_2d(lab2d, cls, bbox, ignore_label, rng)
        out[bbox][scribble] = cls
    return out


def _skeleton_3d(label: np.ndarray, ignore_label: int, dtype: type, seed: int) -> np.ndarray:
    out = np.full(label.shape, ignore_label, dtype=dtype)
    for cls, bbox in enumerate(_class_bboxes(label, ignore_label)):
        if bbox is None:
            continue
        mask = label[bbox] == cls
        skel = _unpad(skeletonize(np.pad(mask, 1), method="lee") > 0)
        if skel.any():
            skel = _components_by_size(skel, _SKELETON_MIN_COMPONENT)
            scribble = ndimage.binary_dilation(skel, structure=_CROSS_3D) & mask
        else:
            scribble = skel
        if not scribble.any():
            scribble = _most_interior_pixel(mask)
        out[bbox][scribble] = cls
    return out


def _generate(label, ignore_label, axis, seed, generate_3d, generate_slice) -> np.ndarray:
    """Validate the inputs, then draw 3D scribbles (``axis=None``) or slice by slice along ``axis``."""
    label, ignore_label = _validate_label(label, ignore_label)
    dtype = _output_dtype(ignore_label)
    axis = _check_axis(label.ndim, axis, allow_none=True) if label.ndim == 3 else 0
    seed = _check_seed(seed)
    if axis is None:
        return generate_3d(label, ignore_label, dtype, seed)
    out = np.full(label.shape, ignore_label, dtype=dtype)
    return _iterate_slices(label, axis, out, lambda lab2d, rng: generate_slice(lab2d, ignore_label, dtype, rng), seed)


def skeleton_scribbles(label: np.ndarray, ignore_label: int, axis: int | None = 0, seed: int = 0) -> np.ndarray:
    """Skeleton-based scribbles (METHODS §7a; WSL4MIS / WORD / DMSPS generator).

    Per 2D slice along ``axis`` (the whole image for 2D input) and per class present:

    1. masks larger than 900 px are eroded with a 3x3 square ``n = ceil(1 + U (C-2))``
       times (C = ``ignore_label``), stopping early if the mask would vanish;
    2. skeletonisation (``method='lee'``);
    3. foreground classes: keep the largest skeleton component plus components larger
       than 15 px, extract one branch-free path (see :func:`_branch_free_path`), dilate
       it once (3x3); masks larger than 1000 px are translated by U{-6..6}^2 and rotated
       by U(-15, 15) degrees about the slice centre (nearest neighbour); clip to the mask;
    4. background keeps its full undilated skeleton, clipped to the mask.

    If a class would end up without scribble pixels in a slice the un-displaced path is
    used, and finally the most interior pixel of the mask.

    ``axis=None`` (3D input only) draws a genuinely 3D scribble per class: 3D Lee
    skeleton of the class mask, components larger than 15 voxels plus the largest, one
    6-connected dilation, clipped to the class mask (most interior voxel as fallback).
    This mode has no random step, so its result does not depend on ``seed``. Note that
    the Lee thinning keeps medial *sheets* of plate-like objects (e.g. the background of
    a thin slab of slices), which then give sheet-like rather than line-like scribbles.

    Args:
        label: dense integer label map (2D, or 3D as (z, y, x)), values 0..ignore_label-1.
        ignore_label: value of unannotated voxels; also the number of classes C.
        axis: slicing axis for 3D input; None for 3D scribbles. Ignored for 2D input.
        seed: random seed.

    Returns:
        Scribble map, same shape, uint8 (uint16 if ignore_label >= 256).
    """
    return _generate(label, ignore_label, axis, seed, _skeleton_3d, _skeleton_slice)


# --------------------------------------------------------------------------- interior/border
def _segment(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Rasterised segment from p0 to p1 (both included), shape (k, ndim)."""
    return np.stack(line_nd(p0, p1, endpoint=True), axis=1)


def _control_points(mask: np.ndarray, rng: np.random.Generator, num_points: int = _NUM_CONTROL_POINTS) -> np.ndarray:
    """Control points inside ``mask``.

    The first point is a random mask pixel; each further point lies (uniformly) on the
    segment from the previous point towards a random mask pixel, truncated where the
    segment first leaves the mask (the whole segment if it never does).
    """
    coords = np.argwhere(mask)
    points = [coords[rng.integers(len(coords))]]
    while len(points) < num_points:
        target = coords[rng.integers(len(coords))]
        seg = _segment(points[-1], target)
        outside = np.flatnonzero(~mask[tuple(seg.T)])
        if outside.size == 0:
            points.append(target)
        else:
            points.append(seg[rng.integers(outside[0])])  # outside[0] >= 1: start is inside
    return np.asarray(points, dtype=float)


def _smooth_curve(points: np.ndarray, degree: int = 2) -> np.ndarray:
    """Clamped uniform B-spline (degree 2 = ScribbleBench's unit-weight NURBS), sampled ~1 px apart."""
    n = len(points)
    k = min(degree, n - 1)
    knots = np.concatenate([np.zeros(k), np.linspace(0.0, 1.0, n - k + 1), np.ones(k)])
    spline = BSpline(knots, points, k)
    polygon_length = float(np.sum(np.linalg.norm(np.diff(points, axis=0), axis=1)))
    return spline(np.linspace(0.0, 1.0, max(2, int(np.ceil(polygon_length)) + 1)))


def _rasterise_polyline(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Binary mask of a polyline (consecutive points joined by digital lines)."""
    pts = np.clip(np.round(points).astype(np.int64), 0, np.array(shape) - 1)
    out = np.zeros(shape, dtype=bool)
    out[tuple(pts.T)] = True
    for a, b in zip(pts[:-1], pts[1:]):
        if np.abs(a - b).max() > 1:
            out[tuple(_segment(a, b).T)] = True
    return out


def _interior_scribble(comp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth curve through random control points inside the component, clipped to it."""
    curve = _smooth_curve(_control_points(comp, rng))
    return _rasterise_polyline(curve, comp.shape) & comp


def _erode_component(comp: np.ndarray, rng: np.random.Generator, structure_fn: Callable[[int], dict]) -> np.ndarray:
    """Erode with radius r ~ U{2..5}, falling back to smaller radii and finally none."""
    radius = int(rng.integers(_BORDER_RADIUS_RANGE[0], _BORDER_RADIUS_RANGE[1] + 1))
    for r in range(radius, 0, -1):
        eroded = ndimage.binary_erosion(comp, **structure_fn(r))
        if eroded.any():
            return eroded
    return comp


def _contour_curvature(contour: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed |curvature| of a closed contour, scaled to [0, 1], plus epsilon."""
    d1 = (np.roll(contour, -1, axis=0) - np.roll(contour, 1, axis=0)) / 2.0
    d2 = np.roll(contour, -1, axis=0) - 2 * contour + np.roll(contour, 1, axis=0)
    speed = np.maximum(np.sum(d1 ** 2, axis=1), 1e-12) ** 1.5
    curvature = np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / speed
    curvature = ndimage.gaussian_filter1d(curvature, sigma=1.0, mode="wrap")
    span = curvature.max() - curvature.min()
    curvature = (curvature - curvature.min()) / span if span > 0 else np.zeros_like(curvature)
    return curvature + _CURVATURE_EPS


def _border_scribble_2d(comp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Piece of the eroded component's contour (7-15 % of the perimeter), largest piece only.

    ``comp`` must be zero-padded so that every contour is closed.
    """
    eroded = _erode_component(comp, rng, lambda r: {"structure": disk(r)})
    contours = [c[:-1] for c in find_contours(eroded.astype(np.float32), 0.5) if len(c) > 2]
    if not contours:
        return np.zeros_like(comp)
    perimeter = sum(len(c) for c in contours)
    weights = np.concatenate([_contour_curvature(c) for c in contours])
    position = int(rng.choice(perimeter, p=weights / weights.sum()))
    starts = np.cumsum([0] + [len(c) for c in contours])
    which = int(np.searchsorted(starts, position, side="right") - 1)
    contour, centre = contours[which], position - starts[which]
    length = max(2, int(round(rng.uniform(*_BORDER_LENGTH_RANGE) * perimeter)))
    length = min(length, len(contour))
    idx = np.arange(centre - length // 2, centre - length // 2 + length) % len(contour)
    piece = _rasterise_polyline(contour[idx], comp.shape) & comp
    return _largest_component(piece)


def _choose_component(counts: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> int:
    """Pick one component id among ``candidates`` with probability proportional to its size."""
    weights = counts[candidates].astype(float)
    return int(candidates[rng.choice(len(candidates), p=weights / weights.sum())])


def _components_with_class(label: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Multi-label connected components (8-conn in 2D, 26-conn in 3D).

    Returns (component map, class of each component id, voxel count of each id, bboxes).
    Id 0 is unused (every voxel belongs to some class).
    """
    cc = cc3d.connected_components(label.astype(np.uint32) + 1, connectivity=8 if label.ndim == 2 else 26)
    n = int(cc.max())
    comp_class = np.full(n + 1, -1, dtype=np.int64)
    comp_class[cc.ravel()] = label.ravel()
    counts = np.bincount(cc.ravel(), minlength=n + 1)
    return cc, comp_class, counts, ndimage.find_objects(cc)


def _interior_border_slice(lab2d: np.ndarray, ignore_label: int, dtype: type,
                           rng: np.random.Generator) -> np.ndarray:
    out = np.full(lab2d.shape, ignore_label, dtype=dtype)
    cc, comp_class, counts, bboxes = _components_with_class(lab2d)
    for cls in np.unique(comp_class[1:]):
        cid = _choose_component(counts, np.flatnonzero(comp_class == cls), rng)
        bbox = bboxes[cid - 1]
        comp = np.pad(cc[bbox] == cid, 1)
        scribble = _interior_scribble(comp, rng) | _border_scribble_2d(comp, rng)
        scribble = ndimage.binary_dilation(scribble, structure=disk(1)) & comp
        if not scribble.any():
            scribble = _most_interior_pixel(comp)
        out[bbox][_unpad(scribble)] = cls
    return out


def _surface_walk(surface: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Connected, self-avoiding walk of up to ``length`` voxels over ``surface`` (26-neighbours).

    The walk keeps a direction of travel (exponential moving average of its steps) and at
    every step prefers the unvisited neighbour best aligned with it (with Gumbel noise),
    which gives stroke-like rather than blob-like paths. It stops at a dead end.
    """
    coords, graph = _neighbour_graph(surface)
    indptr, indices = graph.indptr, graph.indices
    visited = np.zeros(len(coords), dtype=bool)
    current = int(rng.integers(len(coords)))
    direction = rng.normal(size=coords.shape[1])
    direction /= np.linalg.norm(direction) + 1e-12
    path = [current]
    visited[current] = True
    while len(path) < length:
        nbrs = indices[indptr[current]:indptr[current + 1]]
        nbrs = nbrs[~visited[nbrs]]
        if nbrs.size == 0:
            break
        steps = (coords[nbrs] - coords[current]).astype(float)
        steps /= np.linalg.norm(steps, axis=1, keepdims=True)
        score = 2.0 * steps @ direction + rng.gumbel(size=len(nbrs))
        best = int(np.argmax(score))
        direction = 0.8 * direction + 0.2 * steps[best]
        direction /= np.linalg.norm(direction) + 1e-12
        current = int(nbrs[best])
        visited[current] = True
        path.append(current)
    out = np.zeros(surface.shape, dtype=bool)
    out[tuple(coords[path].T)] = True
    return out


def _border_scribble_3d(comp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Walk over the surface voxels of the eroded component, 7-15 % of their number long."""
    eroded = _erode_component(comp, rng, lambda r: {"structure": _CROSS_3D, "iterations": r})
    surface = eroded & ~ndimage.binary_erosion(eroded, structure=_CROSS_3D)
    num_surface = int(surface.sum())
    if num_surface == 0:
        return np.zeros_like(comp)
    length = max(_BORDER_MIN_LENGTH_3D, int(round(rng.uniform(*_BORDER_LENGTH_RANGE) * num_surface)))
    return _surface_walk(surface, length, rng)


def _interior_border_3d(label: np.ndarray, ignore_label: int, dtype: type, seed: int) -> np.ndarray:
    out = np.full(label.shape, ignore_label, dtype=dtype)
    cc, comp_class, counts, bboxes = _components_with_class(label)
    for cls in np.unique(comp_class[1:]):
        rng = _volume_rng(seed, int(cls))
        cid = _choose_component(counts, np.flatnonzero(comp_class == cls), rng)
        bbox = bboxes[cid - 1]
        comp = np.pad(cc[bbox] == cid, 1)
        scribble = _interior_scribble(comp, rng) | _border_scribble_3d(comp, rng)
        scribble = ndimage.binary_dilation(scribble, structure=_CROSS_3D) & comp
        if not scribble.any():
            scribble = _most_interior_pixel(comp)
        out[bbox][_unpad(scribble)] = cls
    return out


def interior_border_scribbles(label: np.ndarray, ignore_label: int, axis: int | None = 0,
                              seed: int = 0) -> np.ndarray:
    """Interior + border scribbles (METHODS §7c; nnU-Net ignore-label docs / ScribbleBench).

    Per 2D slice along ``axis`` (the whole image for 2D input) and per class present
    (background included, so pure-background slices get background scribbles):

    * one connected component (8-connected) is chosen with probability proportional to
      its area;
    * interior scribble: clamped quadratic B-spline through 4 control points sampled
      inside the component (each next point uniformly on the segment from the previous
      point towards a random component pixel, truncated where it leaves the component),
      rasterised with digital lines;
    * border scribble: the component is eroded with disk(r), r ~ U{2..5} (smaller radii,
      finally no erosion, if the erosion would empty it); a piece of length
      U[7 %, 15 %] of the perimeter of its contours (``find_contours``) is taken, centred
      at a position sampled proportional to the Gaussian-smoothed |curvature| (+ epsilon);
      the largest connected piece is kept;
    * both are dilated with disk(1) and clipped to the component. If nothing is left, the
      most interior pixel of the component is used.

    ``axis=None`` (3D input only): per class one 26-connected component (probability
    proportional to volume); interior = the same spline through 4 control points in 3D;
    border = a connected, direction-persistent, self-avoiding walk over the surface voxels
    of the component eroded r ~ U{2..5} times with the 6-connected cross (an L1 ball of
    radius r), of length U[7 %, 15 %] of the number of surface voxels (at least 5, shorter
    only at a dead end); dilation with the 6-connected cross, clipped to the component.

    Args:
        label: dense integer label map (2D, or 3D as (z, y, x)), values 0..ignore_label-1.
        ignore_label: value of unannotated voxels; also the number of classes C.
        axis: slicing axis for 3D input; None for 3D scribbles. Ignored for 2D input.
        seed: random seed.

    Returns:
        Scribble map, same shape, uint8 (uint16 if ignore_label >= 256).
    """
    return _generate(label, ignore_label, axis, seed, _interior_border_3d, _interior_border_slice)


# --------------------------------------------------------------------------- sparser scribbles
def keep_every_nth_slice(scribble: np.ndarray, ignore_label: int, every_nth: int, axis: int = 0,
                         offset: int = 0) -> np.ndarray:
    """Keep annotations only on slices ``offset, offset + every_nth, offset + 2 every_nth, ...``.

    All other slices along ``axis`` become ``ignore_label``. This reproduces the partial
    scribbles of PS-Seg (``generate_scribble_PerNSclices(label, interNum=N+1)``, which
    annotates axial slices 0, N+1, 2(N+1), ...) and DMSPS (``scribblesPer9``: N = 9):
    ``interNum = N + 1`` corresponds to ``every_nth = N + 1`` (= 10 for DMSPS), offset 0.

    Args:
        scribble: 3D scribble map (values 0..ignore_label).
        ignore_label: value of unannotated voxels.
        every_nth: slice period (>= 1; 1 keeps everything).
        axis: slicing axis.
        offset: index of the first kept slice (>= 0).

    Returns:
        A new array of the same dtype; the input is not modified.
    """
    scribble, ignore_label = _validate_scribble(scribble, ignore_label)
    if isinstance(every_nth, (bool, np.bool_)) or not isinstance(every_nth, (int, np.integer)) or every_nth < 1:
        raise ValueError(f"every_nth must be an integer >= 1, got {every_nth!r}")
    if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be an integer >= 0, got {offset!r}")
    if scribble.ndim != 3:
        raise ValueError(f"keep_every_nth_slice needs a 3D scribble map, got shape {scribble.shape}")
    axis = _check_axis(scribble.ndim, axis, allow_none=False)
    out = scribble.copy()
    view = np.moveaxis(out, axis, 0)
    keep = np.zeros(view.shape[0], dtype=bool)
    keep[offset::every_nth] = True
    view[~keep] = ignore_label
    return out


def _halve_component(comp: np.ndarray) -> np.ndarray:
    """Zero the first half of the bounding box along its longer side, keep the largest remainder.

    ``comp`` is the component cropped to its bounding box. Returns the component
    unchanged if nothing would be left.
    """
    longer = int(np.argmax(comp.shape))
    half = comp.shape[longer] // 2
    cut = comp.copy()
    index = [slice(None)] * comp.ndim
    index[longer] = slice(0, half)
    cut[tuple(index)] = False
    cut = _largest_component(cut)
    return cut if cut.any() else comp


def _shorten_slice(sl: np.ndarray, ignore_label: int) -> np.ndarray:
    """One halving of every scribble component (per class) of a 2D scribble slice."""
    out = np.full_like(sl, ignore_label)
    cc, comp_class, _, bboxes = _components_with_class(sl)
    for cid, bbox in enumerate(bboxes, start=1):
        cls = comp_class[cid]
        if bbox is None or cls == ignore_label:
            continue
        kept = _halve_component(cc[bbox] == cid)
        out[bbox][kept] = cls
    return out


def shorten_scribbles(scribble: np.ndarray, ignore_label: int, halvings: int = 1, axis: int = 0) -> np.ndarray:
    """Shorten scribbles as in DMSPS ``ACDC_scribble_reduce_enhance.py``.

    Per 2D slice along ``axis`` (the whole image for 2D input), per class and per
    8-connected scribble component: zero the first half of the component's bounding box
    along its longer side (the first axis on a tie) and keep the largest remaining
    connected piece. Repeated ``halvings`` times (1 -> 1/2, 2 -> 1/4, ...; DMSPS
    ``scribble_rless2``, ``rlessd4``, ...). A component whose halving would leave nothing
    (e.g. a single pixel) is kept unchanged, so a class that had scribble pixels in a
    slice never vanishes from it.

    Args:
        scribble: scribble map (values 0..ignore_label, ignore_label = unannotated).
        ignore_label: value of unannotated voxels.
        halvings: number of halvings (>= 0).
        axis: slicing axis for 3D input.

    Returns:
        A new array of the same dtype; the input is not modified.
    """
    scribble, ignore_label = _validate_scribble(scribble, ignore_label)
    if isinstance(halvings, (bool, np.bool_)) or not isinstance(halvings, (int, np.integer)) or halvings < 0:
        raise ValueError(f"halvings must be an integer >= 0, got {halvings!r}")
    axis = _check_axis(scribble.ndim, axis, allow_none=False) if scribble.ndim == 3 else 0
    out = scribble.copy()
    slices = [out] if out.ndim == 2 else list(np.moveaxis(out, axis, 0))
    for sl in slices:
        if not (sl != ignore_label).any():
            continue
        for _ in range(halvings):
            sl[...] = _shorten_slice(sl, ignore_label)
    return out


# --------------------------------------------------------------------------- front end
def simulate_scribbles(label: np.ndarray, ignore_label: int, method: str = "interior_border",
                       axis: int | None = 0, seed: int = 0, every_nth: int | None = None,
                       halvings: int = 0) -> np.ndarray:
    """Generate scribbles, then optionally shorten them and keep every n-th slice.

    Args:
        label: dense integer label map (2D, or 3D as (z, y, x)), values 0..ignore_label-1.
        ignore_label: value of unannotated voxels; also the number of classes.
        method: one of :data:`GENERATORS`.
        axis: slicing axis (None: 3D scribbles). Shortening and slice thinning use
            ``axis`` too (axis 0 when ``axis`` is None).
        seed: random seed.
        every_nth: if given, keep annotations only on every n-th slice (3D input only).
        halvings: number of DMSPS halvings (0 = none).

    Returns:
        Scribble map (uint8, or uint16 if ignore_label >= 256).
    """
    if method not in GENERATORS:
        raise ValueError(f"unknown scribble method {method!r}; choose one of {GENERATORS}")
    if every_nth is not None and (isinstance(every_nth, (bool, np.bool_))
                                  or not isinstance(every_nth, (int, np.integer)) or every_nth < 1):
        raise ValueError(f"every_nth must be None or an integer >= 1, got {every_nth!r}")
    if isinstance(halvings, (bool, np.bool_)) or not isinstance(halvings, (int, np.integer)) or halvings < 0:
        raise ValueError(f"halvings must be an integer >= 0, got {halvings!r}")
    label_arr = np.asarray(label)
    if every_nth is not None and label_arr.ndim != 3:
        raise ValueError(f"every_nth needs a 3D label map, got shape {label_arr.shape}")
    generator = skeleton_scribbles if method == "skeleton" else interior_border_scribbles
    scribble = generator(label_arr, ignore_label, axis=axis, seed=seed)
    slice_axis = 0 if axis is None else axis
    if halvings:
        scribble = shorten_scribbles(scribble, ignore_label, halvings=halvings, axis=slice_axis)
    if every_nth is not None:
        scribble = keep_every_nth_slice(scribble, ignore_label, every_nth, axis=slice_axis)
    return scribble


def annotated_fraction(scribble: np.ndarray, ignore_label: int) -> float:
    """Fraction of voxels that carry a scribble (value != ignore_label)."""
    scribble = np.asarray(scribble)
    if scribble.size == 0:
        raise ValueError("scribble is empty (size 0)")
    return float(np.count_nonzero(scribble != ignore_label) / scribble.size)


def _image_suffix(path: str) -> str:
    """File suffix that tells SimpleITK which writer to use (handles .nii.gz)."""
    name = os.path.basename(path)
    for double in (".nii.gz", ".mha.gz"):
        if name.lower().endswith(double):
            return name[-len(double):]
    return os.path.splitext(name)[1]


def simulate_scribble_file(dense_file: str, output_file: str, ignore_label: int, **simulate_kwargs) -> float:
    """Read a dense label image, simulate scribbles, write them with identical geometry.

    Labels stored with a floating-point pixel type are accepted if all values are
    integral (common for NIfTI label files). The output is written to a temporary file
    in the target directory and moved into place with ``os.replace``, so no half-written
    file is ever left at ``output_file``.

    Args:
        dense_file: dense label image readable by SimpleITK.
        output_file: scribble image to write (uint8 / uint16).
        ignore_label: value of unannotated voxels.
        **simulate_kwargs: passed to :func:`simulate_scribbles`.

    Returns:
        The annotated fraction of the written scribble map.
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(str(dense_file))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{dense_file}: expected a scalar label image, got "
                         f"{image.GetNumberOfComponentsPerPixel()} components per pixel")
    label = sitk.GetArrayFromImage(image)
    if np.issubdtype(label.dtype, np.floating):
        if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
            raise ValueError(f"{dense_file}: floating-point label image with non-integral values")
        label = label.astype(np.int64)
    scribble = simulate_scribbles(label, ignore_label, **simulate_kwargs)

    out_image = sitk.GetImageFromArray(scribble)
    out_image.CopyInformation(image)
    output_file = os.path.abspath(str(output_file))
    out_dir = os.path.dirname(output_file)
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp_scribble_", suffix=_image_suffix(output_file))
    os.close(fd)
    try:
        sitk.WriteImage(out_image, tmp, True)
        os.replace(tmp, output_file)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return annotated_fraction(scribble, ignore_label)
