"""The backgrounds: a named colour with a pattern (plain, striped, dotted, checkered, gradient)."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

from .colors import mix, rgb
from .factors import BACKGROUND_COLORS


@functools.lru_cache(maxsize=64)
def draw_background(color: str, pattern: str, size: int, ss: int) -> Image.Image:
    """The supersampled background image (cached; callers must copy before drawing on it)."""
    base = np.array(BACKGROUND_COLORS[color], dtype=np.float64)
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    second = mix(base, (255, 255, 255), 0.5) if lum < 200 else mix(base, (150, 150, 160), 0.3)
    n = size * ss
    img = Image.new("RGB", (n, n), rgb(base))
    draw = ImageDraw.Draw(img)
    if pattern == "striped":
        period = n / 6.0
        w = period * 0.45
        for i in range(-7, 14):
            x0 = i * period
            draw.polygon([(x0, 0), (x0 + w, 0), (x0 + w - n, n), (x0 - n, n)], fill=rgb(second))
    elif pattern == "dotted":
        period = n / 5.0
        r = period * 0.2
        for i in range(6):
            for j in range(6):
                cx = (i + 0.5 * (j % 2)) * period
                cy = (j + 0.25) * period
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb(second))
    elif pattern == "checkered":
        period = n / 4.0
        for i in range(4):
            for j in range(4):
                if (i + j) % 2:
                    draw.rectangle(
                        (i * period, j * period, (i + 1) * period - 1, (j + 1) * period - 1), fill=rgb(second)
                    )
    elif pattern == "gradient":
        t = np.linspace(0.0, 1.0, n)[:, None, None]
        top = mix(base, (255, 255, 255), 0.65)
        bottom = mix(base, (0, 0, 0), 0.25)
        arr = top * (1.0 - t) + bottom * t
        img = Image.fromarray(np.repeat(np.round(arr).astype(np.uint8), n, axis=1), "RGB")
    return img
