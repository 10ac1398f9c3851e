"""The renderer's factors: identity, expression, style and pose (each a frozen dataclass with validation and a
seeded `random`), their vocabularies, and the `RenderResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

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
