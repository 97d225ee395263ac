"""Transforms base pixel -> frame pixel: their conventions, forms and use.

A transform is a shift or a (2, 3) matrix ``x' = m00 x + m01 y + m02, y' = m10 x + m11 y + m12``;
a row of the offsets table holds either (:data:`MATRIX_COLUMNS`).  Every consumer maps positions with
:func:`base_to_frame` and :func:`frame_to_base`.  Also the header cards in which step p records a
tracked frame's transform (:data:`TRANSFORM_CARDS`; step o checks it instead of searching), and the
share of the base's field a frame covers (:func:`overlap`).
"""

from __future__ import annotations

import math

import numpy as np

CONVENTION = ("offset = position in frame - position in base image, 0-based px; "
              "transform: x' = m00 x + m01 y + m02, y' = m10 x + m11 y + m12 (base -> frame)")
#: offsets-table columns of the transform base pixel -> frame pixel: x' = m00 x + m01 y + m02, y' = m10 x + ...
MATRIX_COLUMNS = ("m00", "m01", "m02", "m10", "m11", "m12")


def _as_xy(xy, name: str) -> np.ndarray:
    """``(x, y)`` pair of 1-D arrays, or an (N, 2) array -> float (N, 2) array."""
    if isinstance(xy, (tuple, list)) and len(xy) == 2 and np.ndim(xy[0]) == 1:
        a = np.column_stack([np.asarray(xy[0], float), np.asarray(xy[1], float)])
    else:
        a = np.asarray(xy, float)
        if a.size == 0:
            return np.zeros((0, 2))
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{name}: expected (x, y) arrays or an (N, 2) array, got shape {a.shape}")
    return a.reshape(-1, 2)


def shift_matrix(dx: float, dy: float) -> np.ndarray:
    """The (2, 3) matrix of a pure shift: ``[[1, 0, dx], [0, 1, dy]]``."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def _get(t, name):
    """``t[name]`` of a table row or mapping, None when it has no such field."""
    names = t.colnames if hasattr(t, "colnames") else t.keys()
    return t[name] if name in names else None


def as_matrix(t) -> np.ndarray:
    """The (2, 3) transform base pixel -> frame pixel of an offsets-table row, a mapping or a matrix.

    Parameters
    ----------
    t : astropy Row, dict, or array of shape (2, 3) or (6,)
        A row (or dict) with ``m00..m12`` (used when all are finite), else ``dx, dy`` (a shift,
        as in tables written before the transform columns existed); a dict may hold ``mat``.

    Returns
    -------
    ndarray (2, 3)
    """
    if isinstance(t, (np.ndarray, list, tuple)):
        return np.asarray(t, float).reshape(2, 3)
    mat = _get(t, "mat")
    if mat is not None:
        return np.asarray(mat, float).reshape(2, 3)
    m = [_get(t, c) for c in MATRIX_COLUMNS]
    if all(v is not None for v in m) and np.all(np.isfinite(np.asarray(m, float))):
        return np.asarray(m, float).reshape(2, 3)
    return shift_matrix(float(t["dx"]), float(t["dy"]))


def base_to_frame(t, xy) -> np.ndarray:
    """Positions in the base image -> positions in a frame.

    Parameters
    ----------
    t : astropy Row, dict or array
        The frame's transform (:func:`as_matrix`): a row of the offsets table, an entry of
        :func:`qlcp.core.catalogue._offset_lookup`, or the (2, 3) matrix.
    xy : (N, 2) array or (x, y) pair of 1-D arrays
        0-based base-image positions.

    Returns
    -------
    ndarray (N, 2)
        0-based frame positions (a shift adds dx, dy exactly).
    """
    m = as_matrix(t)
    a = _as_xy(xy, "xy")
    x, y = a[:, 0], a[:, 1]
    return np.column_stack([m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]])


def frame_to_base(t, xy) -> np.ndarray:
    """Positions in a frame -> positions in the base image (the inverse of :func:`base_to_frame`).

    Parameters
    ----------
    t : astropy Row, dict or array
        The frame's transform (:func:`as_matrix`).
    xy : (N, 2) array or (x, y) pair of 1-D arrays
        0-based frame positions.

    Returns
    -------
    ndarray (N, 2)
        0-based base-image positions (a shift subtracts dx, dy exactly).
    """
    m = as_matrix(t)
    a = _as_xy(xy, "xy")
    x, y = a[:, 0] - m[0, 2], a[:, 1] - m[1, 2]
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    if m[0, 1] == 0.0 and m[1, 0] == 0.0 and m[0, 0] == 1.0 and m[1, 1] == 1.0:
        return np.column_stack([x, y])
    return np.column_stack([(m[1, 1] * x - m[0, 1] * y) / det, (-m[1, 0] * x + m[0, 0] * y) / det])


def rotation_deg(m) -> float:
    """Rotation angle of a (2, 3) similarity, degrees counter-clockwise, in [-90, 270).

    The range keeps a small turn of either sign near 0 and a meridian flip
    near 180 (not jumping between -180 and 180 from frame to frame).
    """
    m = as_matrix(m)
    a = math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))
    return a + 360.0 if a < -90.0 else a


def scale_of(m) -> float:
    """Scale of a (2, 3) similarity (square root of the determinant)."""
    m = as_matrix(m)
    return math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]))


#: catalogue header keywords of a tracked frame's transform reference pixel -> frame pixel (0-based):
#: x' = PHOTM00 x + PHOTM01 y + PHOTM02, y' = PHOTM10 x + PHOTM11 y + PHOTM12
TRANSFORM_CARDS = tuple(f"PHOTM{r}{k}" for r in range(2) for k in range(3))


def transform_cards(m: np.ndarray) -> dict:
    """The header cards (:data:`TRANSFORM_CARDS`) of a transform (2, 3)."""
    return {c: float(v) for c, v in zip(TRANSFORM_CARDS, np.asarray(m, float).ravel())}


def transform_of(header) -> np.ndarray | None:
    """The transform (2, 3) a tracked frame's catalogue header records, or None."""
    try:
        m = np.array([float(header[c]) for c in TRANSFORM_CARDS]).reshape(2, 3)
    except (KeyError, TypeError, ValueError):
        return None
    return m if np.isfinite(m).all() else None


def overlap(t, shape) -> float:
    """Fraction of a frame's field inside the base image's (both ``shape`` (ny, nx)), from its
    transform ``t``: the frame's centre mapped to the base, as a box of the same size (rotation
    ignored); 0 when ``t`` is not finite."""
    ny, nx = shape
    c = frame_to_base(t, [((nx - 1) / 2, (ny - 1) / 2)])[0]
    if not np.all(np.isfinite(c)):
        return 0.0
    return max(0.0, 1 - abs(c[0] - (nx - 1) / 2) / nx) * max(0.0, 1 - abs(c[1] - (ny - 1) / 2) / ny)
