"""Procedural cartoon ("emoji") portraits whose identity, expression, style and pose factors are known exactly.

The proving ground of DESIGN.md: `render(identity, expression, style, pose)` draws a deterministic RGB portrait,
its five insightface-order keypoints and a face-region mask. Shapes are polygons built in a face frame, posed with
one similarity transform, filled by Pillow on a 4x supersampled canvas and box-downsampled (anti-aliasing).
numpy + Pillow only: importing this module never imports torch.

Conventions:
- "left" / "right" always mean image left / image right (keypoint 0 is the image-left eye, and `eye_close_left`
  closes that same eye).
- Keypoints are in output pixel-index coordinates: the centre of pixel `image[i, j]` is `(x=j, y=i)`, as in
  insightface / OpenCV.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUND_COLORS",
    "EXPRESSION_FIELDS",
    "EXPRESSION_PRESETS",
    "HAIR_STYLES",
    "IDENTITY_FIELDS",
    "POSE_RANGES",
    "STYLE_CHOICES",
    "Expression",
    "Identity",
    "Pose",
    "RenderResult",
    "Style",
    "render",
]

# ----------------------------------------------------------------------------------------------------------------
# Factor vocabularies
# ----------------------------------------------------------------------------------------------------------------

HAIR_STYLES: tuple[str, ...] = ("bald", "buzz", "short", "side_part", "bob", "long", "spiky", "bun", "curly")

# Named background colours (RGB). Their names are the words used in `Style.caption()`.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (244, 244, 242),
    "cream": (246, 233, 200),
    "yellow": (250, 218, 95),
    "orange": (246, 160, 80),
    "pink": (242, 160, 192),
    "purple": (170, 140, 222),
    "blue": (110, 165, 235),
    "teal": (80, 186, 176),
    "green": (130, 200, 110),
    "gray": (160, 162, 168),
}

STYLE_CHOICES: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUND_COLORS),
    "pattern": ("plain", "striped", "dotted", "gradient", "checkered"),
    "rendering": ("flat", "shaded", "outline", "sketch"),
    "palette": ("natural", "pastel", "vivid", "mono"),
}

# Continuous colour ramps indexed by a factor in [0, 1] (linear interpolation between stops).
_SKIN_RAMP = np.array(
    [(255, 204, 77), (255, 226, 196), (243, 198, 160), (224, 168, 122), (190, 128, 88), (140, 88, 58), (92, 58, 40)],
    dtype=np.float64,
)
_HAIR_RAMP = np.array(
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
_IRIS_RAMP = np.array(
    [(70, 42, 26), (118, 74, 40), (140, 118, 60), (74, 132, 76), (70, 126, 200), (120, 134, 150)], dtype=np.float64
)

_INK = (34, 28, 36)
_MOUTH_DARK = (96, 28, 38)
_TEETH = (252, 250, 244)
_TONGUE = (226, 96, 110)
_LIP = (214, 84, 104)
_BLUSH = (240, 100, 120)
_EYE_WHITE = (252, 252, 250)

# Face-frame units per half image at pose scale 1 (the head fills about 80% of the width).
_FRAME_SCALE = 1.1

# Fixed freckle layout on the cheeks: (x, y) offsets in units of the cheek ellipse, and per-freckle size jitter.
_FRECKLES = np.random.default_rng(20241202).uniform(-1.0, 1.0, size=(14, 3))


def _check_unit(name: str, value: Any) -> float:
    """Return `value` as a float in [0, 1] or raise a ValueError that names the field."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a number in [0, 1], got {value!r} of type {type(value).__name__}."
        ) from None
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise ValueError(f"`{name}` must be in [0, 1], got {value!r}.")
    return v


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return np.random.default_rng(rng)


# ----------------------------------------------------------------------------------------------------------------
# Factor dataclasses
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who is drawn. Continuous fields are in [0, 1]; they change face geometry that expressions also act on
    (contour, eye spacing, mouth width) as well as colours and accessories.

    Args:
        face_width: half-width of the face contour (0 = narrow, 1 = wide).
        face_height: height of the face contour (0 = short, 1 = long).
        jaw: lower contour shape (0 = square, 0.5 = round, 1 = pointed chin).
        skin_tone: position on a skin ramp (0 = emoji yellow, then light to dark).
        hair_style: one of `HAIR_STYLES`.
        hair_color: position on a hair ramp (black, browns, auburn, blond, platinum, gray, blue, pink).
        eye_shape: 0 = round eyes, 1 = narrow almond eyes.
        eye_size: eye width.
        eye_spacing: distance between the eyes.
        iris_color: position on an iris ramp (dark brown, brown, hazel, green, blue, gray).
        nose_size: nose size.
        ear_size: ear size.
        brow_thickness: eyebrow thickness.
        mouth_width: resting mouth width.
        freckles: amount of cheek freckles (0 = none).
        glasses: round glasses.
    """

    face_width: float = 0.5
    face_height: float = 0.5
    jaw: float = 0.5
    skin_tone: float = 0.0
    hair_style: str = "short"
    hair_color: float = 0.15
    eye_shape: float = 0.5
    eye_size: float = 0.5
    eye_spacing: float = 0.5
    iris_color: float = 0.2
    nose_size: float = 0.5
    ear_size: float = 0.5
    brow_thickness: float = 0.5
    mouth_width: float = 0.5
    freckles: float = 0.0
    glasses: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name in ("hair_style", "glasses"):
                continue
            object.__setattr__(self, f.name, _check_unit(f.name, getattr(self, f.name)))
        if self.hair_style not in HAIR_STYLES:
            raise ValueError(f"`hair_style` must be one of {HAIR_STYLES}, got {self.hair_style!r}.")
        if not isinstance(self.glasses, (bool, np.bool_)):
            raise ValueError(f"`glasses` must be a bool, got {self.glasses!r} of type {type(self.glasses).__name__}.")
        object.__setattr__(self, "glasses", bool(self.glasses))

    @classmethod
    def random(cls, rng: np.random.Generator | int | None = None) -> Identity:
        """Sample an identity: continuous factors uniform, freckles on 40% and glasses on 20% of identities."""
        rng = _as_rng(rng)
        values = {name: float(rng.uniform()) for name in _IDENTITY_CONTINUOUS}
        values["hair_style"] = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
        values["freckles"] = float(rng.uniform(0.3, 1.0)) if rng.uniform() < 0.4 else 0.0
        values["glasses"] = bool(rng.uniform() < 0.2)
        return cls(**values)

    @classmethod
    def from_seed(cls, seed: int) -> Identity:
        """The identity of `seed`: `Identity.random(np.random.default_rng(seed))`."""
        return cls.random(np.random.default_rng(seed))


IDENTITY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Identity))
_IDENTITY_CONTINUOUS: tuple[str, ...] = tuple(
    n for n in IDENTITY_FIELDS if n not in ("hair_style", "freckles", "glasses")
)


EXPRESSION_FIELDS: tuple[str, ...] = (
    "smile",
    "frown",
    "jaw_open",
    "pucker",
    "eye_close_left",
    "eye_close_right",
    "brow_raise_left",
    "brow_raise_right",
    "brow_furrow",
    "gaze_x",
    "gaze_y",
)


@dataclass(frozen=True)
class Expression:
    """What the face does. Every field is in [0, 1]; 0 is rest except the gaze (0.5 = looking straight ahead).

    Args:
        smile: mouth corners up, mouth wider, cheeks blush.
        frown: mouth corners down, mouth slightly narrower.
        jaw_open: lower lip and chin drop (the mouth opens vertically).
        pucker: mouth narrows and rounds, lips show.
        eye_close_left: upper lid of the image-left eye lowers (1 = closed).
        eye_close_right: upper lid of the image-right eye lowers (1 = closed).
        brow_raise_left: image-left brow rises and arches.
        brow_raise_right: image-right brow rises and arches.
        brow_furrow: both brows angle down and inward, a crease appears between them.
        gaze_x: irises move left (0) to right (1).
        gaze_y: irises move up (0) to down (1).
    """

    smile: float = 0.0
    frown: float = 0.0
    jaw_open: float = 0.0
    pucker: float = 0.0
    eye_close_left: float = 0.0
    eye_close_right: float = 0.0
    brow_raise_left: float = 0.0
    brow_raise_right: float = 0.0
    brow_furrow: float = 0.0
    gaze_x: float = 0.5
    gaze_y: float = 0.5

    def __post_init__(self) -> None:
        for name in EXPRESSION_FIELDS:
            object.__setattr__(self, name, _check_unit(name, getattr(self, name)))

    def to_vector(self) -> np.ndarray:
        """The factors as a float32 array of shape (len(EXPRESSION_FIELDS),), in `EXPRESSION_FIELDS` order."""
        return np.array([getattr(self, n) for n in EXPRESSION_FIELDS], dtype=np.float32)

    @classmethod
    def from_vector(cls, vector: Any) -> Expression:
        """Inverse of `to_vector`."""
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (len(EXPRESSION_FIELDS),):
            raise ValueError(
                f"`vector` must have shape ({len(EXPRESSION_FIELDS)},) in EXPRESSION_FIELDS order, got {v.shape}."
            )
        return cls(**{n: float(x) for n, x in zip(EXPRESSION_FIELDS, v)})

    @classmethod
    def random(cls, rng: np.random.Generator | int | None = None, preset_prob: float = 0.25) -> Expression:
        """Sample a realistic expression: a jittered preset with probability `preset_prob`, otherwise a sparse
        combination (one mouth action, maybe eye closure, maybe a brow action, maybe a gaze shift) whose active
        factors are uniform in [0, 1]."""
        rng = _as_rng(rng)
        if rng.uniform() < preset_prob:
            names = sorted(EXPRESSION_PRESETS)
            base = EXPRESSION_PRESETS[names[int(rng.integers(len(names)))]].to_vector().astype(np.float64)
            rest = np.array([0.5 if n.startswith("gaze") else 0.0 for n in EXPRESSION_FIELDS])
            jitter = rng.normal(0.0, 0.06, size=base.shape) * (base != rest)
            return cls.from_vector(np.clip(base + jitter, 0.0, 1.0))
        v = {n: 0.0 for n in EXPRESSION_FIELDS}
        v["gaze_x"] = v["gaze_y"] = 0.5
        u = rng.uniform()
        if u < 0.25:
            v["smile"] = rng.uniform()
            if rng.uniform() < 0.4:
                v["jaw_open"] = rng.uniform()
        elif u < 0.45:
            v["frown"] = rng.uniform()
            if rng.uniform() < 0.2:
                v["jaw_open"] = rng.uniform()
        elif u < 0.6:
            v["pucker"] = rng.uniform()
        elif u < 0.75:
            v["jaw_open"] = rng.uniform()
        if rng.uniform() < 0.35:
            w = rng.uniform()
            if w < 0.45:
                v["eye_close_left"] = v["eye_close_right"] = rng.uniform()
            elif w < 0.9:
                v["eye_close_left" if w < 0.675 else "eye_close_right"] = rng.uniform()
            else:
                v["eye_close_left"], v["eye_close_right"] = rng.uniform(), rng.uniform()
        if rng.uniform() < 0.45:
            w = rng.uniform()
            if w < 0.35:
                v["brow_raise_left"] = v["brow_raise_right"] = rng.uniform()
            elif w < 0.7:
                v["brow_raise_left" if w < 0.525 else "brow_raise_right"] = rng.uniform()
            else:
                v["brow_furrow"] = rng.uniform()
        if rng.uniform() < 0.4:
            v["gaze_x"] = rng.uniform()
            v["gaze_y"] = rng.uniform() if rng.uniform() < 0.5 else 0.5
        return cls(**{k: float(x) for k, x in v.items()})


EXPRESSION_PRESETS: dict[str, Expression] = {
    "neutral": Expression(),
    "smile": Expression(smile=0.8),
    "grin": Expression(smile=1.0, jaw_open=0.45),
    "laugh": Expression(
        smile=1.0, jaw_open=0.85, eye_close_left=0.75, eye_close_right=0.75, brow_raise_left=0.3, brow_raise_right=0.3
    ),
    "wink": Expression(smile=0.7, eye_close_left=1.0, brow_raise_right=0.2),
    "surprise": Expression(jaw_open=0.9, pucker=0.25, brow_raise_left=1.0, brow_raise_right=1.0),
    "anger": Expression(frown=0.9, brow_furrow=1.0, eye_close_left=0.25, eye_close_right=0.25),
    "sadness": Expression(
        frown=0.8, brow_raise_left=0.45, brow_raise_right=0.45, eye_close_left=0.3, eye_close_right=0.3, gaze_y=0.85
    ),
    "kiss": Expression(pucker=1.0, eye_close_left=0.9, eye_close_right=0.9),
    "pucker": Expression(pucker=0.9, gaze_x=0.8),
    "sleepy": Expression(eye_close_left=0.8, eye_close_right=0.8, jaw_open=0.2, gaze_y=0.8),
    "skeptical": Expression(frown=0.35, brow_raise_left=1.0, brow_furrow=0.2, gaze_x=0.15),
    "side_eye": Expression(smile=0.25, eye_close_left=0.35, eye_close_right=0.35, gaze_x=1.0),
    "shout": Expression(frown=0.6, jaw_open=1.0, brow_furrow=0.9),
}


@dataclass(frozen=True)
class Style:
    """How the portrait is drawn; every value is a name from `STYLE_CHOICES`.

    Args:
        background: background colour (a key of `BACKGROUND_COLORS`).
        pattern: background pattern (plain, striped, dotted, gradient, checkered).
        rendering: flat fills with a thin outline, shaded (lit gradient, highlight, drop shadow), outline (heavy
            ink outlines), or sketch (grayscale-ish pencil hatching).
        palette: colour treatment of the figure (natural, pastel, vivid, mono); the background keeps its colour.
    """

    background: str = "blue"
    pattern: str = "plain"
    rendering: str = "flat"
    palette: str = "natural"

    def __post_init__(self) -> None:
        for name, choices in STYLE_CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")

    def caption(self) -> str:
        """Words for a prompt, e.g. "flat emoji, pastel palette, blue striped background"."""
        return f"{self.rendering} emoji, {self.palette} palette, {self.background} {self.pattern} background"

    @classmethod
    def random(cls, rng: np.random.Generator | int | None = None) -> Style:
        """Sample every style field uniformly from `STYLE_CHOICES`."""
        rng = _as_rng(rng)
        return cls(**{k: v[int(rng.integers(len(v)))] for k, v in STYLE_CHOICES.items()})


# Valid ranges of each pose field (inclusive); `Pose.random` samples a narrower, centred part of them.
POSE_RANGES: dict[str, tuple[float, float]] = {
    "shift_x": (-0.1, 0.1),
    "shift_y": (-0.1, 0.1),
    "scale": (0.85, 1.15),
    "tilt": (-15.0, 15.0),
}


@dataclass(frozen=True)
class Pose:
    """Small similarity jitter of the whole head.

    Args:
        shift_x: horizontal shift as a fraction of the image size (positive = right).
        shift_y: vertical shift as a fraction of the image size (positive = down).
        scale: head scale (1 = default framing).
        tilt: in-plane rotation in degrees (positive = clockwise on screen).
    """

    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    tilt: float = 0.0

    def __post_init__(self) -> None:
        for name, (lo, hi) in POSE_RANGES.items():
            value = getattr(self, name)
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"`{name}` must be a number in [{lo}, {hi}], got {value!r}.") from None
            if not lo <= v <= hi:
                raise ValueError(f"`{name}` must be in [{lo}, {hi}], got {value!r}.")
            object.__setattr__(self, name, v)

    @classmethod
    def random(cls, rng: np.random.Generator | int | None = None) -> Pose:
        """Sample shift in +-0.06, scale in [0.92, 1.08] and tilt in +-10 degrees, uniformly."""
        rng = _as_rng(rng)
        return cls(
            shift_x=float(rng.uniform(-0.06, 0.06)),
            shift_y=float(rng.uniform(-0.06, 0.06)),
            scale=float(rng.uniform(0.92, 1.08)),
            tilt=float(rng.uniform(-10.0, 10.0)),
        )


@dataclass
class RenderResult:
    """Output of `render`.

    Attributes:
        image: (size, size, 3) uint8 RGB.
        keypoints: (5, 2) float32 (x, y) pixel-index coordinates in insightface order: image-left eye centre,
            image-right eye centre, nose tip, image-left mouth corner, image-right mouth corner.
        face_mask: (size, size) float32 in [0, 1], coverage of the face contour (skin region, ears and hair
            excluded, hair over the forehead included).
    """

    image: np.ndarray
    keypoints: np.ndarray
    face_mask: np.ndarray


# ----------------------------------------------------------------------------------------------------------------
# Colour helpers
# ----------------------------------------------------------------------------------------------------------------


def _ramp(stops: np.ndarray, t: float) -> np.ndarray:
    x = t * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    f = x - i
    return stops[i] * (1.0 - f) + stops[i + 1] * f


def _mix(c0: Any, c1: Any, f: float) -> np.ndarray:
    return np.asarray(c0, dtype=np.float64) * (1.0 - f) + np.asarray(c1, dtype=np.float64) * f


def _apply_palette(c: Any, palette: str) -> np.ndarray:
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


def _rgb(c: Any, alpha: float | None = None) -> tuple[int, ...]:
    out = np.clip(np.rint(np.asarray(c, dtype=np.float64)[:3]), 0.0, 255.0).astype(np.int64).tolist()
    if alpha is not None:
        out.append(int(round(255.0 * min(max(alpha, 0.0), 1.0))))
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Geometry helpers (face-frame coordinates: x right, y down; 1 unit = half the image at pose scale 1)
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _unit_circle(n: int) -> np.ndarray:
    th = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    out = np.stack([np.cos(th), np.sin(th)], axis=1)
    out.setflags(write=False)
    return out


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    return _unit_circle(n) * np.array([rx, ry]) + np.array([cx, cy])


def _band(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Polygon of the region between two curves y = top(x) <= y = bottom(x)."""
    return np.concatenate([np.stack([xs, top], axis=1), np.stack([xs[::-1], bottom[::-1]], axis=1)])


def _stroke(pts: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Polygon of an open polyline thickened to `width` (scalar or per point) along its normals."""
    d = np.empty_like(pts)
    d[1:-1] = pts[2:] - pts[:-2]
    d[0], d[-1] = pts[1] - pts[0], pts[-1] - pts[-2]
    n = d[:, ::-1] * np.array([-1.0, 1.0])
    n /= np.maximum(np.hypot(n[:, 0], n[:, 1]), 1e-9)[:, None]
    off = n * (np.asarray(width, dtype=np.float64).reshape(-1, 1) * 0.5)
    return np.concatenate([pts + off, (pts - off)[::-1]])


def _clip_circle(
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
    return _band(x, t, b)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class _Canvas:
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
        k = 0.5 * size * pose.scale * _FRAME_SCALE
        # face frame -> continuous output coordinates (pixel i spans [i, i + 1))
        self.A = np.array([[c, -s], [s, c]]) * k
        self.t = np.array([0.5 * size + pose.shift_x * size, 0.5 * size + pose.shift_y * size])
        self.px = 2.0 / (size * pose.scale * _FRAME_SCALE)  # face-frame units per output pixel

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


# ----------------------------------------------------------------------------------------------------------------
# Background
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _background(color: str, pattern: str, size: int, ss: int) -> Image.Image:
    """The supersampled background image (cached; callers must copy before drawing on it)."""
    base = np.array(BACKGROUND_COLORS[color], dtype=np.float64)
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    second = _mix(base, (255, 255, 255), 0.5) if lum < 200 else _mix(base, (150, 150, 160), 0.3)
    n = size * ss
    img = Image.new("RGB", (n, n), _rgb(base))
    draw = ImageDraw.Draw(img)
    if pattern == "striped":
        period = n / 6.0
        w = period * 0.45
        for i in range(-7, 14):
            x0 = i * period
            draw.polygon([(x0, 0), (x0 + w, 0), (x0 + w - n, n), (x0 - n, n)], fill=_rgb(second))
    elif pattern == "dotted":
        period = n / 5.0
        r = period * 0.2
        for i in range(6):
            for j in range(6):
                cx = (i + 0.5 * (j % 2)) * period
                cy = (j + 0.25) * period
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_rgb(second))
    elif pattern == "checkered":
        period = n / 4.0
        for i in range(4):
            for j in range(4):
                if (i + j) % 2:
                    draw.rectangle(
                        (i * period, j * period, (i + 1) * period - 1, (j + 1) * period - 1), fill=_rgb(second)
                    )
    elif pattern == "gradient":
        t = np.linspace(0.0, 1.0, n)[:, None, None]
        top = _mix(base, (255, 255, 255), 0.65)
        bottom = _mix(base, (0, 0, 0), 0.25)
        arr = top * (1.0 - t) + bottom * t
        img = Image.fromarray(np.repeat(np.round(arr).astype(np.uint8), n, axis=1), "RGB")
    return img


# ----------------------------------------------------------------------------------------------------------------
# The portrait
# ----------------------------------------------------------------------------------------------------------------


def _face_contour(cx: float, cy: float, a: float, b_top: float, b_low: float, jaw: float, n: int = 56) -> np.ndarray:
    """Closed face contour: an upper half-ellipse and a lower half whose half-width at depth t in [0, 1] is
    a * (1 - t^p)^(1/q) (square jaw: large p, q; round: p = q = 2; pointed chin: p, q near 1)."""
    p = float(np.interp(jaw, (0.0, 0.5, 1.0), (3.2, 2.0, 1.35)))
    q = float(np.interp(jaw, (0.0, 0.5, 1.0), (3.0, 2.0, 1.15)))
    th = np.linspace(0.0, np.pi, n // 2, endpoint=False)
    upper = np.stack([cx + a * np.cos(th), cy - b_top * np.sin(th)], axis=1)
    u = np.linspace(0.0, 1.0, n // 4 + 1)
    t = np.sin(u * np.pi / 2.0)
    w = a * np.power(np.maximum(1.0 - np.power(t, p), 0.0), 1.0 / q)
    left = np.stack([cx - w, cy + b_low * t], axis=1)
    right = np.stack([cx + w[::-1], cy + b_low * t[::-1]], axis=1)
    return np.concatenate([upper, left, right[1:-1]])


def _hair_cap(
    cx: float,
    cy: float,
    a: float,
    b: float,
    vol_x: float,
    vol_y: float,
    hairline: float,
    sag: float,
    side_y: float,
    side_from: float,
    tilt: float = 0.0,
    bumps: float = 0.0,
    n: int = 41,
) -> np.ndarray:
    """Polygon of hair on top of the head: between the outer arc of an enlarged head ellipse and a hairline that
    sags by `sag` towards the temples and drops to `side_y` beyond |x| > side_from * a."""
    A, B = a * (1.0 + vol_x), b * (1.0 + vol_y)
    xs = np.linspace(-A, A, n)
    s = np.sqrt(np.maximum(1.0 - (xs / A) ** 2, 0.0))
    outer_top = cy - B * s
    if bumps > 0.0:
        outer_top = outer_top - bumps * np.abs(np.sin(xs / A * 4.5 * np.pi)) * s
    outer_bottom = cy + B * s
    line = hairline + sag * (xs / a) ** 2 + tilt * xs / a
    line = line + (side_y - line) * _smoothstep(side_from * a, max(side_from, 0.8) * a + 0.12 * a, np.abs(xs))
    lower = np.maximum(np.minimum(line, outer_bottom), outer_top)
    return _band(xs + cx, outer_top, lower)


def render(
    identity: Identity, expression: Expression, style: Style, pose: Pose | None = None, size: int = 64
) -> RenderResult:
    """Draw one portrait. Same inputs give identical bytes.

    Args:
        identity: who (see `Identity`).
        expression: what the face does (see `Expression`).
        style: background, rendering and palette (see `Style`).
        pose: head shift / scale / tilt jitter; `None` means `Pose()` (centred, upright).
        size: output side in pixels (16 to 512; 64 and 128 are the sizes the project uses).

    Returns:
        A `RenderResult` with the uint8 image, the five keypoints and the face mask.
    """
    if not isinstance(identity, Identity):
        raise TypeError(f"`identity` must be an Identity, got {type(identity).__name__}.")
    if not isinstance(expression, Expression):
        raise TypeError(f"`expression` must be an Expression, got {type(expression).__name__}.")
    if not isinstance(style, Style):
        raise TypeError(f"`style` must be a Style, got {type(style).__name__}.")
    if pose is None:
        pose = Pose()
    elif not isinstance(pose, Pose):
        raise TypeError(f"`pose` must be a Pose or None, got {type(pose).__name__}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 512:
        raise ValueError(f"`size` must be an int in [16, 512], got {size!r}.")
    size = int(size)
    ss = 4 if size <= 128 else 2

    idn, ex = identity, expression
    pal = style.palette
    rendering = style.rendering
    cv = _Canvas(_background(style.background, style.pattern, size, ss).copy(), size, ss, pose)

    def col(c: Any) -> np.ndarray:
        return _apply_palette(c, pal)

    skin = col(_ramp(_SKIN_RAMP, idn.skin_tone))
    hair = col(_ramp(_HAIR_RAMP, idn.hair_color))
    iris = col(_ramp(_IRIS_RAMP, idn.iris_color))
    brow_col = _mix(hair, (26, 18, 16), 0.55)
    skin_dark = _mix(skin, (40, 20, 20), 0.22)

    heavy = rendering == "outline"
    sil_w = 0.07 if heavy else 0.04  # silhouette outline width (face-frame units)
    feat_w = 0.045 if heavy else 0.03  # feature line width
    inked = heavy or rendering == "sketch"
    skin_ink = _rgb(_INK) if inked else _rgb(_mix(skin, (30, 15, 15), 0.5))
    hair_ink = _rgb(_INK) if inked else _rgb(_mix(hair, (0, 0, 0), 0.45))

    # ---- 1. layout -------------------------------------------------------------------------------------------
    cx, cy = 0.0, 0.06
    a = 0.47 + 0.14 * idn.face_width
    b = 0.56 + 0.13 * idn.face_height
    b_low = b + 0.08 * ex.jaw_open

    ey = cy - 0.02
    dx = 0.18 + 0.09 * idn.eye_spacing
    ew = 0.105 + 0.05 * idn.eye_size
    eh = ew * (0.9 - 0.35 * idn.eye_shape)
    ir = min(0.8 * eh, 0.62 * ew)  # iris radius
    closes = (ex.eye_close_left, ex.eye_close_right)
    raises = (ex.brow_raise_left, ex.brow_raise_right)

    bt = 0.028 + 0.034 * idn.brow_thickness
    brow_rest = ey - eh - 0.065
    brow_clear = brow_rest - 0.09 - 0.045 - bt - 0.03  # hairline may not come lower than this

    my = cy + 0.42 * b
    mw = (0.13 + 0.07 * idn.mouth_width) * (1.0 + 0.3 * ex.smile - 0.12 * ex.frown) * (1.0 - 0.5 * ex.pucker)
    corner = -0.11 * ex.smile + 0.1 * ex.frown  # corner height relative to the mouth centre (up < 0)
    ny = (ey + eh + my) * 0.5 + 0.01

    # ---- 2. shadow and back hair -----------------------------------------------------------------------------
    if rendering == "shaded":
        cv.poly(_ellipse(cx + 0.07, cy + 0.08, a * 1.12, b * 1.12, 32), (0, 0, 0, 40))
    hs = idn.hair_style
    if hs in ("bob", "long", "curly"):
        if hs == "curly":
            th = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
            r = 1.0 + 0.07 * np.abs(np.sin(th * 7.0))
            back = np.stack([cx + a * 1.32 * r * np.cos(th), cy - 0.12 + b * 1.12 * r * np.sin(th)], axis=1)
        else:
            bottom = cy + (0.5 * b if hs == "bob" else b + 0.35)
            w = a * (1.2 if hs == "bob" else 1.16)
            top = cy - b * 1.1
            xs = np.linspace(-w, w, 25)
            top_curve = cy - b * 1.1 * np.sqrt(np.maximum(1.0 - (xs / w) ** 2, 0.0)) * 0.6 + (top - cy) * 0.4
            bot_curve = bottom - 0.06 * (1.0 - (xs / w) ** 2) * (-1.0 if hs == "bob" else 1.0)
            back = _band(xs + cx, top_curve, bot_curve)
        cv.outlined(back, _rgb(_mix(hair, (0, 0, 0), 0.12)), hair_ink, sil_w, fg=True)

    # ---- 3. ears and face ------------------------------------------------------------------------------------
    erx, ery = 0.05 + 0.045 * idn.ear_size, 0.085 + 0.055 * idn.ear_size
    for side in (-1.0, 1.0):
        ex_ = cx + side * (a + erx * 0.35)
        cv.outlined(_ellipse(ex_, ey + 0.05, erx, ery, 20), _rgb(skin), skin_ink, sil_w * 0.8, fg=True)
        cv.poly(_ellipse(ex_ + side * 0.01, ey + 0.05, erx * 0.5, ery * 0.6, 14), _rgb(skin_dark))
    contour = _face_contour(cx, cy, a, b, b_low, idn.jaw)
    cv.outlined(contour, _rgb(skin), skin_ink, sil_w, fg=True, face=True)
    if rendering == "shaded":
        cv.poly(_ellipse(cx - 0.35 * a, cy - 0.55 * b, 0.17 * a, 0.1 * b, 20), (255, 255, 255, 90))

    # ---- 4. cheeks: blush (smile) and freckles ---------------------------------------------------------------
    cheek_y = ey + eh + 0.1 - 0.035 * ex.smile
    for side in (-1.0, 1.0):
        if ex.smile > 0.0:
            cv.poly(
                _ellipse(cx + side * (dx + 0.03), cheek_y, 0.085, 0.05, 20),
                _rgb(_mix(skin, col(_BLUSH), 0.55 * ex.smile)),
            )
        if idn.freckles > 0.0:
            count = int(math.ceil(idn.freckles * len(_FRECKLES)))
            fc = _rgb(_mix(skin, _mix(skin, (90, 45, 25), 0.55), 0.45 + 0.45 * idn.freckles))
            for fx, fy, fs in _FRECKLES[:count]:
                r = 0.016 + 0.005 * fs
                cv.poly(_ellipse(cx + side * (dx + 0.02) + 0.09 * fx, ey + eh + 0.075 + 0.04 * fy, r, r, 8), fc)

    # ---- 5. nose ---------------------------------------------------------------------------------------------
    rn = 0.028 + 0.03 * idn.nose_size
    cv.poly(_ellipse(cx, ny, rn, rn * 0.75, 18), _rgb(_mix(skin, (60, 25, 20), 0.3)))
    cv.poly(_ellipse(cx - rn * 0.3, ny - rn * 0.3, rn * 0.3, rn * 0.22, 10), _rgb(_mix(skin, (255, 255, 255), 0.45)))

    # ---- 6. eyes ---------------------------------------------------------------------------------------------
    gx = (ex.gaze_x - 0.5) * 2.0 * (ew - 0.7 * ir)
    gy = (ex.gaze_y - 0.5) * 1.5 * eh
    xs_e = np.linspace(-ew, ew, 23)
    sq = np.sqrt(np.maximum(1.0 - (xs_e / ew) ** 2, 0.0))
    lash_w = (0.032 if not heavy else 0.045) * (0.8 + 0.4 * np.abs(xs_e / ew))
    eye_centres = []
    for side, close in zip((-1.0, 1.0), closes):
        ecx = cx + side * dx
        eye_centres.append((ecx, ey))
        xs = xs_e + ecx
        bottom = ey + eh * sq
        lid = ey + eh * (2.0 * close - 1.0) * sq
        if heavy:
            cv.poly(_band(xs, ey - eh * sq - 0.02, bottom + 0.02), _rgb(_INK))
        if close < 1.0:
            cv.poly(_band(xs, lid, bottom), _rgb(_EYE_WHITE))
            icx, icy = ecx + gx, ey + gy
            cv.poly(_clip_circle(xs, lid, bottom, icx, icy, ir), _rgb(iris))
            cv.poly(_clip_circle(xs, lid, bottom, icx, icy, ir * 0.5, 11), _rgb((22, 18, 24)))
            cv.poly(_clip_circle(xs, lid, bottom, icx - 0.35 * ir, icy - 0.35 * ir, ir * 0.28, 9), _rgb(_EYE_WHITE))
            cv.poly(_stroke(np.stack([xs, bottom], axis=1), feat_w * 0.45), _rgb(_mix(skin, _INK, 0.45)))
        cv.poly(_stroke(np.stack([xs, lid], axis=1), lash_w), _rgb(_INK))

    # ---- 7. brows and furrow crease --------------------------------------------------------------------------
    u = np.linspace(0.0, 1.0, 15)  # 0 = inner end, 1 = outer end
    bl = ew * 1.15
    for side, rise in zip((-1.0, 1.0), raises):
        bx = cx + side * (dx - 0.035 * ex.brow_furrow)
        by = brow_rest - 0.09 * rise
        arch = 0.012 + 0.03 * rise
        xs = bx + side * bl * (2.0 * u - 1.0)
        ys = by - arch * (1.0 - (2.0 * u - 1.0) ** 2) + (0.075 * ex.brow_furrow - 0.02 * rise) * (1.0 - u)
        ys = ys - 0.03 * ex.brow_furrow * u
        cv.poly(_stroke(np.stack([xs, ys], axis=1), bt * (1.1 - 0.45 * u)), _rgb(brow_col))
    if ex.brow_furrow > 0.0:
        crease = _rgb(_mix(skin, _mix(skin, (60, 25, 20), 0.55), 0.9 * ex.brow_furrow))
        for side in (-1.0, 1.0):
            pts = np.stack([np.full(6, cx + side * 0.025), np.linspace(brow_rest - 0.02, brow_rest + 0.06, 6)], 1)
            cv.poly(_stroke(pts, 0.022), crease)

    # ---- 8. mouth --------------------------------------------------------------------------------------------
    xs_m = np.linspace(-mw, mw, 31)
    tm = xs_m / mw
    prof = np.power(np.maximum(1.0 - tm**2, 0.0), 1.0 - 0.5 * ex.pucker)
    mid = my + corner * tm**2
    hu = 0.012 + 0.03 * ex.jaw_open + 0.032 * ex.pucker
    hl = 0.012 + 0.2 * ex.jaw_open + 0.02 * ex.smile + 0.032 * ex.pucker
    half_line = 0.016
    top = mid - half_line - hu * prof
    bottom = mid + half_line + hl * prof
    xs = xs_m + cx
    lt = 0.016 + 0.035 * ex.pucker  # lips: a thin rim that thickens and reddens with pucker
    rim = np.sqrt(prof)
    lip = _mix(skin, col(_LIP), 0.35 + 0.55 * ex.pucker)
    cv.poly(_band((xs - cx) * (mw + lt) / mw + cx, top - lt * rim, bottom + lt * rim), _rgb(lip))
    if heavy:
        sx = (mw + 0.03) / mw
        cv.poly(_band(xs * sx, top - 0.025, bottom + 0.025), _rgb(_INK))
    cv.poly(_band(xs, top, bottom), _rgb(col(_MOUTH_DARK)))
    if ex.frown > 0.0:  # chin crease under a frowning mouth
        xc = np.linspace(-0.45 * mw, 0.45 * mw, 9)
        yc = my + half_line + hl + 0.07 - 0.02 * (1.0 - (xc / (0.45 * mw)) ** 2)
        crease = _rgb(_mix(skin, (60, 25, 20), 0.45 * ex.frown))
        cv.poly(_stroke(np.stack([xc + cx, yc], axis=1), 0.022), crease)
    opening = hu + hl - 0.024
    if opening > 0.015:
        th_teeth = (0.012 + 0.045 * ex.smile) * min(opening / 0.08, 1.0)
        cv.poly(_band(xs, top, np.minimum(top + th_teeth * prof, bottom)), _rgb(_TEETH))
    if ex.jaw_open > 0.1:
        tongue_y = my + corner * 0.3 + half_line + hl * 0.95
        r_tongue = 0.55 * mw * min(ex.jaw_open / 0.4, 1.0)
        cv.poly(_clip_circle(xs, top, bottom, cx, tongue_y, r_tongue, 15), _rgb(col(_TONGUE)))

    # ---- 9. hair on top --------------------------------------------------------------------------------------
    if hs != "bald":
        hair_fill = _rgb(hair if hs != "buzz" else _mix(hair, skin, 0.3))
        hl_y = min(cy - 0.66 * b, brow_clear)
        params = {
            "buzz": dict(vol_x=0.03, vol_y=0.035, hairline=hl_y, sag=0.05, side_y=ey - 0.12, side_from=0.85),
            "short": dict(vol_x=0.07, vol_y=0.12, hairline=hl_y, sag=0.06, side_y=ey - 0.04, side_from=0.88),
            "side_part": dict(
                vol_x=0.08, vol_y=0.13, hairline=hl_y - 0.02, sag=0.03, side_y=ey - 0.02, side_from=0.88, tilt=-0.04
            ),
            "bob": dict(
                vol_x=0.12,
                vol_y=0.12,
                hairline=min(hl_y + 0.04, brow_clear),
                sag=0.0,
                side_y=cy + 0.5 * b,
                side_from=0.9,
            ),
            "long": dict(vol_x=0.1, vol_y=0.1, hairline=hl_y - 0.03, sag=0.1, side_y=ey + 0.05, side_from=0.9),
            "spiky": dict(vol_x=0.06, vol_y=0.08, hairline=hl_y, sag=0.04, side_y=ey - 0.08, side_from=0.88),
            "bun": dict(vol_x=0.04, vol_y=0.05, hairline=hl_y - 0.02, sag=0.06, side_y=ey - 0.1, side_from=0.86),
            "curly": dict(
                vol_x=0.12, vol_y=0.14, hairline=hl_y, sag=0.04, side_y=ey - 0.03, side_from=0.88, bumps=0.05
            ),
        }[hs]
        if hs == "spiky":
            n_sp = 7
            for i in range(n_sp):
                ang = np.pi * (0.12 + 0.76 * i / (n_sp - 1))
                base_x, base_y = cx - a * 1.02 * math.cos(ang), cy - b * 1.02 * math.sin(ang)
                nx, nyy = -math.cos(ang), -math.sin(ang)
                tx, ty = -nyy, nx
                tri = np.array(
                    [
                        [base_x - tx * 0.1, base_y - ty * 0.1],
                        [base_x + nx * 0.2, base_y + nyy * 0.2 * 1.1],
                        [base_x + tx * 0.1, base_y + ty * 0.1],
                    ]
                )
                cv.outlined(tri, hair_fill, hair_ink, sil_w * 0.8, fg=True)
        if hs == "bun":
            cv.outlined(_ellipse(cx, cy - b * 1.05 - 0.07, 0.15, 0.12, 24), hair_fill, hair_ink, sil_w, fg=True)
        cv.outlined(_hair_cap(cx, cy, a, b, **params), hair_fill, hair_ink, sil_w * 0.7, fg=True)
        if hs == "side_part":
            pts = np.stack([np.full(6, cx - 0.3 * a), np.linspace(cy - b * 1.1, hl_y - 0.04, 6)], axis=1)
            cv.poly(_stroke(pts, 0.025), _rgb(_mix(hair, (0, 0, 0), 0.4)))

    # ---- 10. glasses -----------------------------------------------------------------------------------------
    if idn.glasses:
        rim = _rgb(_INK) if pal != "pastel" else _rgb((96, 84, 120))
        rr = ew * 1.32
        rim_w = 0.03 if not heavy else 0.045
        for ecx, ecy in eye_centres:
            cv.poly(_ellipse(ecx, ecy, rr, rr * 0.86, 28), (210, 235, 255, 50))
            cv.poly(_ring(ecx, ecy, rr, rr * 0.86, rim_w), rim)
        (lx, _), (rx, _) = eye_centres
        bridge = np.stack(
            [np.linspace(lx + rr, rx - rr, 5), ey - 0.2 * rr - 0.015 * np.sin(np.linspace(0, np.pi, 5))], 1
        )
        cv.poly(_stroke(bridge, rim_w), rim)
        for ecx, side in ((lx, -1.0), (rx, 1.0)):
            arm = np.stack([np.linspace(ecx + side * rr, cx + side * (a + 0.01), 5), np.full(5, ey - 0.25 * rr)], 1)
            cv.poly(_stroke(arm, rim_w), rim)

    # ---- 11. resolve to output resolution --------------------------------------------------------------------
    image = np.asarray(cv.img.reduce(ss), dtype=np.float32)  # (size, size, 3)
    fg = np.asarray(cv.fg.reduce(ss), dtype=np.float32) / 255.0  # (size, size)
    face_mask = np.asarray(cv.face.reduce(ss), dtype=np.float32) / 255.0
    if rendering == "shaded":
        gx_, gy_ = _frame_grid(cv, size)
        u_, v_ = (gx_ - cx) / a, (gy_ - cy) / b
        shade = np.clip(1.08 - 0.22 * (u_**2 + v_**2) - 0.08 * u_ - 0.1 * v_, 0.6, 1.15)
        image = image * (1.0 + (shade - 1.0) * fg)[..., None]
    elif rendering == "sketch":
        image = _pencil(image, fg, size)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    mouth_l, mouth_r = (cx - mw, my + corner), (cx + mw, my + corner)
    keypoints = cv.to_pixels(np.array([eye_centres[0], eye_centres[1], (cx, ny), mouth_l, mouth_r]))
    return RenderResult(image=image, keypoints=keypoints.astype(np.float32), face_mask=face_mask)


def _ring(cx: float, cy: float, rx: float, ry: float, width: float, n: int = 28) -> np.ndarray:
    """Polygon of an elliptic ring (outer loop, then the inner loop reversed: the hole stays unfilled)."""
    outer = _ellipse(cx, cy, rx + 0.5 * width, ry + 0.5 * width, n)
    inner = _ellipse(cx, cy, rx - 0.5 * width, ry - 0.5 * width, n)[::-1]
    return np.concatenate([outer, outer[:1], inner, inner[:1]])


def _frame_grid(cv: _Canvas, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Face-frame coordinates of every output pixel centre, each (size, size)."""
    idx = np.arange(size, dtype=np.float64) + 0.5
    x, y = np.meshgrid(idx, idx)
    inv = np.linalg.inv(cv.A)
    px, py = x - cv.t[0], y - cv.t[1]
    return inv[0, 0] * px + inv[0, 1] * py, inv[1, 0] * px + inv[1, 1] * py


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


def _pencil(image: np.ndarray, fg: np.ndarray, size: int) -> np.ndarray:
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
