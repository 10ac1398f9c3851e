"""Drawing in the face frame (x right, y down; 1 unit = half the image at pose scale 1): polygon helpers and the
supersampled canvas that fills them, with foreground and face masks."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from .factors import Pose

# Face-frame units per half image at pose scale 1 (the head fills about 80% of the width).
FRAME_SCALE = 1.1


@functools.lru_cache(maxsize=32)
def _unit_circle(n: int) -> np.ndarray:
    th = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    out = np.stack([np.cos(th), np.sin(th)], axis=1)
    out.setflags(write=False)
    return out


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    return _unit_circle(n) * np.array([rx, ry]) + np.array([cx, cy])


def band(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Polygon of the region between two curves y = top(x) <= y = bottom(x)."""
    return np.concatenate([np.stack([xs, top], axis=1), np.stack([xs[::-1], bottom[::-1]], axis=1)])


def stroke(pts: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Polygon of an open polyline thickened to `width` (scalar or per point) along its normals."""
    d = np.empty_like(pts)
    d[1:-1] = pts[2:] - pts[:-2]
    d[0], d[-1] = pts[1] - pts[0], pts[-1] - pts[-2]
    n = d[:, ::-1] * np.array([-1.0, 1.0])
    n /= np.maximum(np.hypot(n[:, 0], n[:, 1]), 1e-9)[:, None]
    off = n * (np.asarray(width, dtype=np.float64).reshape(-1, 1) * 0.5)
    return np.concatenate([pts + off, (pts - off)[::-1]])


def clip_circle(
    xs: np.ndarray, top: np.ndarray, bottom: np.ndarray, cx: float, cy: float, r: float, n: int = 15
) -> np.ndarray | None:
    """Polygon of a disc intersected with the band between `top` and `bottom` (both sampled at `xs`)."""
    x0, x1 = max(cx - r, xs[0]), min(cx + r, xs[-1])
    if x1 <= x0:
        return None
    x = np.linspace(x0, x1, n)
    h = np.sqrt(np.maximum(r * r - (x - cx) ** 2, 0.0))
    t = np.maximum(np.interp(x, xs, top), cy - h)
    b = np.minimum(np.interp(x, xs, bottom), cy + h)
    if not np.any(b > t):
        return None
    b = np.maximum(b, t)
    return band(x, t, b)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class Canvas:
    """A supersampled RGB canvas plus foreground and face masks, drawn with face-frame polygons."""

    def __init__(self, background: Image.Image, size: int, ss: int, pose: Pose) -> None:
        self.size, self.ss = size, ss
        self.img = background
        self.draw = ImageDraw.Draw(self.img)
        self.draw_alpha = ImageDraw.Draw(self.img, "RGBA")
        self.fg = Image.new("L", self.img.size, 0)
        self.fg_draw = ImageDraw.Draw(self.fg)
        self.face = Image.new("L", self.img.size, 0)
        self.face_draw = ImageDraw.Draw(self.face)
        th = math.radians(pose.tilt)
        c, s = math.cos(th), math.sin(th)
        k = 0.5 * size * pose.scale * FRAME_SCALE
        # face frame -> continuous output coordinates (pixel i spans [i, i + 1))
        self.A = np.array([[c, -s], [s, c]]) * k
        self.t = np.array([0.5 * size + pose.shift_x * size, 0.5 * size + pose.shift_y * size])
        self.px = 2.0 / (size * pose.scale * FRAME_SCALE)  # face-frame units per output pixel

    def to_pixels(self, pts: np.ndarray) -> np.ndarray:
        """Face frame -> output pixel-index coordinates (pixel centres at integers)."""
        return np.asarray(pts, dtype=np.float64) @ self.A.T + self.t - 0.5

    def _xy(self, pts: np.ndarray) -> list[float]:
        return ((pts @ self.A.T + self.t) * self.ss - 0.5).ravel().tolist()

    def poly(self, pts: np.ndarray | None, fill: tuple[int, ...], fg: bool = False, face: bool = False) -> None:
        if pts is None or len(pts) < 3:
            return
        xy = self._xy(pts)
        if len(fill) == 4:
            if fill[3] == 0:
                return
            self.draw_alpha.polygon(xy, fill=fill)
        else:
            self.draw.polygon(xy, fill=fill)
        if fg:
            self.fg_draw.polygon(xy, fill=255)
        if face:
            self.face_draw.polygon(xy, fill=255)

    def outlined(
        self,
        pts: np.ndarray,
        fill: tuple[int, ...],
        ink: tuple[int, ...] | None,
        width: float,
        fg: bool = False,
        face: bool = False,
    ) -> None:
        """Fill a polygon with an ink outline of `width` face-frame units drawn inside its edge."""
        if ink is None or width <= 0.0:
            self.poly(pts, fill, fg=fg, face=face)
            return
        xy = self._xy(pts)
        w = max(1, int(round(width / self.px * self.ss)))
        self.draw.polygon(xy, fill=fill, outline=ink, width=w)
        if fg:
            self.fg_draw.polygon(xy, fill=255)
        if face:
            self.face_draw.polygon(xy, fill=255)


def ring(cx: float, cy: float, rx: float, ry: float, width: float, n: int = 28) -> np.ndarray:
    """Polygon of an elliptic ring (outer loop, then the inner loop reversed: the hole stays unfilled)."""
    outer = ellipse(cx, cy, rx + 0.5 * width, ry + 0.5 * width, n)
    inner = ellipse(cx, cy, rx - 0.5 * width, ry - 0.5 * width, n)[::-1]
    return np.concatenate([outer, outer[:1], inner, inner[:1]])


def frame_grid(cv: Canvas, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Face-frame coordinates of every output pixel centre, each (size, size)."""
    idx = np.arange(size, dtype=np.float64) + 0.5
    x, y = np.meshgrid(idx, idx)
    inv = np.linalg.inv(cv.A)
    px, py = x - cv.t[0], y - cv.t[1]
    return inv[0, 0] * px + inv[0, 1] * py, inv[1, 0] * px + inv[1, 1] * py
