"""The renderings that act on the drawn image: the sketch rendering's pencil and paper."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def _pencil_textures(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed hatching and paper-grain textures for the sketch rendering, each (size, size), read-only."""
    idx = np.arange(size, dtype=np.float64)
    x, y = np.meshgrid(idx, idx)
    period = max(3.0, size / 16.0)
    width = max(1.0, size / 64.0)
    hatch = (np.mod(x + y, period) < width).astype(np.float32)
    cross = (np.mod(x - y, period) < width).astype(np.float32)
    grain = np.random.default_rng(7).uniform(-1.0, 1.0, size=(size, size)).astype(np.float32)
    for arr in (hatch, cross, grain):
        arr.setflags(write=False)
    return hatch, cross, grain


def pencil(image: np.ndarray, fg: np.ndarray, size: int) -> np.ndarray:
    """Pencil sketch: the figure's luminance drawn as graphite tone plus diagonal (and, in dark areas, cross)
    hatching on warm paper with a fifth of its colour; the background becomes a light colour wash on the paper."""
    hatch, cross, grain = _pencil_textures(size)
    lum = (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0
    dark = 1.0 - lum
    ink = dark > 0.8  # outlines, lashes, pupils stay solid graphite
    tone = 1.0 - 0.2 * dark - fg * (0.35 * dark * hatch + 0.3 * np.clip(2.0 * dark - 1.1, 0.0, 1.0) * cross)
    tone = np.where(ink & (fg > 0.0), 1.0 - 0.85 * dark, tone)
    tone = np.clip(tone - 0.035 * grain, 0.0, 1.0)
    paper = np.array([250.0, 246.0, 236.0], dtype=np.float32)
    tint = (0.2 * fg + 0.45 * (1.0 - fg))[..., None]
    return tone[..., None] * ((1.0 - tint) * paper + tint * image)
