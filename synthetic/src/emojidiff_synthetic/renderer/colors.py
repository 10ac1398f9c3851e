"""Colours of the portrait: the skin, hair and iris ramps, fixed feature colours, and the palette transforms."""

from __future__ import annotations

from typing import Any

import numpy as np

# Continuous colour ramps indexed by a factor in [0, 1] (linear interpolation between stops).
SKIN_RAMP = np.array(
    [(255, 204, 77), (255, 226, 196), (243, 198, 160), (224, 168, 122), (190, 128, 88), (140, 88, 58), (92, 58, 40)],
    dtype=np.float64,
)
HAIR_RAMP = np.array(
    [
        (32, 28, 30),
        (78, 50, 34),
        (128, 82, 48),
        (170, 72, 38),
        (222, 186, 104),
        (236, 226, 198),
        (150, 150, 158),
        (70, 110, 205),
        (226, 104, 164),
    ],
    dtype=np.float64,
)
IRIS_RAMP = np.array(
    [(70, 42, 26), (118, 74, 40), (140, 118, 60), (74, 132, 76), (70, 126, 200), (120, 134, 150)], dtype=np.float64
)

INK = (34, 28, 36)
MOUTH_DARK = (96, 28, 38)
TEETH = (252, 250, 244)
TONGUE = (226, 96, 110)
LIP = (214, 84, 104)
BLUSH = (240, 100, 120)
EYE_WHITE = (252, 252, 250)


def ramp(stops: np.ndarray, t: float) -> np.ndarray:
    x = t * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    f = x - i
    return stops[i] * (1.0 - f) + stops[i + 1] * f


def mix(c0: Any, c1: Any, f: float) -> np.ndarray:
    return np.asarray(c0, dtype=np.float64) * (1.0 - f) + np.asarray(c1, dtype=np.float64) * f


def apply_palette(c: Any, palette: str) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if palette == "pastel":
        return c * 0.55 + 255.0 * 0.45
    if palette == "vivid":
        mean = c.mean()
        return np.clip(mean + (c - mean) * 1.6, 0.0, 255.0)
    if palette == "mono":
        lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
        return np.array([lum, lum, lum])
    return c


def rgb(c: Any, alpha: float | None = None) -> tuple[int, ...]:
    out = np.clip(np.rint(np.asarray(c, dtype=np.float64)[:3]), 0.0, 255.0).astype(np.int64).tolist()
    if alpha is not None:
        out.append(int(round(255.0 * min(max(alpha, 0.0), 1.0))))
    return tuple(out)
