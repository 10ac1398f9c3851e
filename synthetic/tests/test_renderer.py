"""Tests of the synthetic emoji renderer (numpy + Pillow only, a few dozen renders in all)."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from emojidiff_synthetic import (
    EXPRESSION_FIELDS,
    EXPRESSION_PRESETS,
    HAIR_STYLES,
    STYLE_CHOICES,
    Expression,
    Identity,
    Pose,
    RenderResult,
    Style,
    render,
)

PLAIN = Style(background="white", pattern="plain", rendering="flat", palette="natural")
LUMA = np.array([0.299, 0.587, 0.114])
POSE_FIELDS = ("shift_x", "shift_y", "scale", "tilt")


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ LUMA


def _at(array: np.ndarray, xy: np.ndarray):
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    return array[y, x]


def _mask_width(mask: np.ndarray) -> int:
    return int((mask > 0.5).any(axis=0).sum())


# ---------------------------------------------------------------------------------------------------------------
# Outputs and determinism
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128])
def test_output_types_and_shapes(size):
    res = render(Identity.from_seed(0), EXPRESSION_PRESETS["grin"], Style.random(0), Pose.random(0), size=size)
    assert isinstance(res, RenderResult)
    assert res.image.shape == (size, size, 3) and res.image.dtype == np.uint8
    assert res.keypoints.shape == (5, 2) and res.keypoints.dtype == np.float32
    assert res.face_mask.shape == (size, size) and res.face_mask.dtype == np.float32
    assert 0.0 <= res.face_mask.min() and res.face_mask.max() <= 1.0
    assert np.all((res.keypoints >= 0) & (res.keypoints <= size - 1))


def test_same_inputs_same_bytes():
    rng = np.random.default_rng(123)
    args = (Identity.random(rng), Expression.random(rng), Style.random(rng), Pose.random(rng))
    a, b = render(*args), render(*args)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.keypoints.tobytes() == b.keypoints.tobytes()
    assert a.face_mask.tobytes() == b.face_mask.tobytes()
    # the factor samplers are deterministic too
    assert Identity.from_seed(7) == Identity.from_seed(7)
    assert Expression.random(np.random.default_rng(3)) == Expression.random(np.random.default_rng(3))
    assert Style.random(5) == Style.random(5) and Pose.random(5) == Pose.random(5)


def test_different_seeds_give_different_identities():
    identities = [Identity.from_seed(s) for s in range(20)]
    assert len(set(identities)) == 20
    images = [render(identities[s], Expression(), PLAIN).image for s in range(3)]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])


def test_random_factors_cover_the_vocabulary():
    rng = np.random.default_rng(0)
    identities = [Identity.random(rng) for _ in range(300)]
    assert {i.hair_style for i in identities} == set(HAIR_STYLES)
    assert any(i.glasses for i in identities) and not all(i.glasses for i in identities)
    styles = [Style.random(rng) for _ in range(300)]
    for field, choices in STYLE_CHOICES.items():
        assert {getattr(s, field) for s in styles} == set(choices)
    vectors = np.stack([Expression.random(rng).to_vector() for _ in range(500)])
    assert vectors.min() >= 0.0 and vectors.max() <= 1.0
    # every factor is exercised, and most samples are sparse (few active factors)
    rest = np.array([0.5 if f.startswith("gaze") else 0.0 for f in EXPRESSION_FIELDS], dtype=np.float32)
    active = np.abs(vectors - rest) > 0.05
    assert active.any(axis=0).all()
    assert np.median(active.sum(axis=1)) <= 3
    for field in POSE_FIELDS:
        values = [getattr(Pose.random(rng), field) for _ in range(50)]
        assert np.ptp(values) > 0


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: Expression(smile=1.5), "smile"),
        (lambda: Expression(gaze_x=-0.1), "gaze_x"),
        (lambda: Expression(brow_furrow=float("nan")), "brow_furrow"),
        (lambda: Expression(jaw_open="wide"), "jaw_open"),
        (lambda: Identity(face_width=1.2), "face_width"),
        (lambda: Identity(skin_tone=-0.01), "skin_tone"),
        (lambda: Identity(hair_style="mullet"), "hair_style"),
        (lambda: Identity(glasses="yes"), "glasses"),
        (lambda: Style(background="magenta"), "background"),
        (lambda: Style(pattern="plaid"), "pattern"),
        (lambda: Style(rendering="oil"), "rendering"),
        (lambda: Style(palette="neon"), "palette"),
        (lambda: Pose(tilt=40.0), "tilt"),
        (lambda: Pose(scale=2.0), "scale"),
    ],
)
def test_invalid_factor_names_the_field(make, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        make()


def test_invalid_value_is_echoed():
    with pytest.raises(ValueError, match="1.5"):
        Expression(smile=1.5)
    with pytest.raises(ValueError, match="magenta"):
        Style(background="magenta")


def test_expression_vector_round_trip():
    expr = EXPRESSION_PRESETS["skeptical"]
    v = expr.to_vector()
    assert v.dtype == np.float32 and v.shape == (len(EXPRESSION_FIELDS),)
    assert Expression.from_vector(v) == Expression(**{f: float(x) for f, x in zip(EXPRESSION_FIELDS, v)})
    assert v[EXPRESSION_FIELDS.index("brow_raise_left")] == 1.0
    with pytest.raises(ValueError, match="`vector`"):
        Expression.from_vector(v[:-1])


def test_presets_include_the_emoji_set():
    required = {"neutral", "smile", "grin", "wink", "surprise", "anger", "sadness", "kiss", "sleepy", "skeptical"}
    assert required <= set(EXPRESSION_PRESETS)
    assert EXPRESSION_PRESETS["neutral"] == Expression()


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`size`"):
        render(Identity(), Expression(), PLAIN, size=8)
    with pytest.raises(TypeError, match="`style`"):
        render(Identity(), Expression(), "flat")


def test_captions_name_the_style():
    for style in [PLAIN, *(Style.random(s) for s in range(8))]:
        caption = style.caption()
        for field in STYLE_CHOICES:
            assert getattr(style, field) in caption
    assert (
        Style("blue", "striped", "flat", "pastel").caption() == "flat emoji, pastel palette, blue striped background"
    )


# ---------------------------------------------------------------------------------------------------------------
# Factors change the picture
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", EXPRESSION_FIELDS)
def test_every_expression_factor_changes_the_image(field):
    identity = Identity(hair_style="side_part", glasses=False)
    lo = render(identity, Expression(**{field: 0.0}), PLAIN).image.astype(np.int32)
    hi = render(identity, Expression(**{field: 1.0}), PLAIN).image.astype(np.int32)
    changed = np.abs(lo - hi).max(axis=-1) > 40
    assert changed.sum() >= 25, f"{field} changes only {changed.sum()} pixels"


def test_expression_effects_are_monotone():
    identity = Identity(glasses=False, hair_style="bald")
    levels = (0.0, 0.5, 1.0)

    # jaw_open: more open mouth (dark interior) pixels
    dark = [(_luma(render(identity, Expression(jaw_open=v), PLAIN).image) < 110).sum() for v in levels]
    assert dark[0] < dark[1] < dark[2]
    # eye closure: less eye white in the image-left half
    blue = dataclasses.replace(PLAIN, background="blue")
    white = []
    for v in levels:
        image = render(identity, Expression(eye_close_left=v), blue).image[:, :32].astype(np.float64)
        white.append(np.clip(image.min(axis=-1) - 200.0, 0.0, None).sum())
    assert white[0] > white[1] > white[2]
    # brow raise: the image-left brow's darkest row moves up
    rows = []
    for v in levels:
        res = render(identity, Expression(brow_raise_left=v), PLAIN)
        x0, y0 = (int(round(float(c))) for c in res.keypoints[0])
        band = _luma(res.image)[y0 - 14 : y0 - 3, x0 - 3 : x0 + 4]  # forehead above the image-left eye
        rows.append(int(np.argmin(band.mean(axis=1))))
    assert rows[0] > rows[1] > rows[2]
    # gaze_x: the iris/pupil (dark) mass inside the eyes moves right
    res = [render(identity, Expression(gaze_x=v), PLAIN) for v in levels]
    xs = []
    for r in res:
        kp = r.keypoints[0]
        x0, y0 = int(round(kp[0])), int(round(kp[1]))
        patch = _luma(r.image)[y0 - 3 : y0 + 4, x0 - 6 : x0 + 7]
        w = np.clip(200.0 - patch, 0.0, None)
        xs.append((w.sum(axis=0) * np.arange(patch.shape[1])).sum() / w.sum())
    assert xs[0] < xs[1] < xs[2]


def test_identity_changes_contour_geometry():
    narrow = render(Identity(face_width=0.0, hair_style="bald"), Expression(), PLAIN)
    wide = render(Identity(face_width=1.0, hair_style="bald"), Expression(), PLAIN)
    assert _mask_width(wide.face_mask) >= _mask_width(narrow.face_mask) + 4
    square = render(Identity(jaw=0.0, hair_style="bald"), Expression(), PLAIN).face_mask
    pointed = render(Identity(jaw=1.0, hair_style="bald"), Expression(), PLAIN).face_mask
    assert square.sum() > pointed.sum() + 20
    # the face contour is also acted on by expression: an open jaw lengthens the face
    opened = render(Identity(hair_style="bald"), Expression(jaw_open=1.0), PLAIN).face_mask
    closed = render(Identity(hair_style="bald"), Expression(), PLAIN).face_mask
    assert (opened > 0.5).any(axis=1).sum() > (closed > 0.5).any(axis=1).sum()


def test_identity_changes_shared_geometry():
    close = render(Identity(eye_spacing=0.0), Expression(), PLAIN).keypoints
    apart = render(Identity(eye_spacing=1.0), Expression(), PLAIN).keypoints
    assert (apart[1, 0] - apart[0, 0]) - (close[1, 0] - close[0, 0]) > 4.0
    small = render(Identity(mouth_width=0.0), Expression(), PLAIN).keypoints
    big = render(Identity(mouth_width=1.0), Expression(), PLAIN).keypoints
    assert (big[4, 0] - big[3, 0]) - (small[4, 0] - small[3, 0]) > 3.0


@pytest.mark.parametrize("palette", STYLE_CHOICES["palette"])
def test_palette_changes_the_figure_not_the_background(palette):
    ident = Identity(skin_tone=0.3, hair_style="short", hair_color=0.3)
    base = render(ident, Expression(), PLAIN)
    res = render(ident, Expression(), dataclasses.replace(PLAIN, palette=palette))
    assert np.array_equal(res.image[0, 0], base.image[0, 0])
    if palette != "natural":
        assert not np.array_equal(res.image, base.image)


@pytest.mark.parametrize("rendering", ["shaded", "outline", "sketch"])
def test_renderings_differ_from_flat(rendering):
    flat = render(Identity(), Expression(), PLAIN).image.astype(np.int32)
    other = render(Identity(), Expression(), dataclasses.replace(PLAIN, rendering=rendering)).image.astype(np.int32)
    assert np.abs(flat - other).mean() > 2.0
    if rendering == "sketch":  # pencil: the figure is nearly gray
        face = render(Identity(), Expression(), PLAIN).face_mask > 0.9
        sat = other.max(axis=-1) - other.min(axis=-1)
        assert np.median(sat[face]) < 60


# ---------------------------------------------------------------------------------------------------------------
# Keypoints and masks
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_keypoints_land_on_features(seed):
    identity = dataclasses.replace(Identity.from_seed(seed), glasses=False, freckles=0.0)
    res = render(identity, Expression(), PLAIN)
    luma = _luma(res.image)
    kp = res.keypoints
    # skin: halfway between the nose and the middle of the eyes, on the face
    skin_xy = 0.5 * (kp[2] + 0.5 * (kp[0] + kp[1]))
    skin_xy[0] += 0.25 * (kp[1, 0] - kp[0, 0])
    skin = _at(luma, skin_xy)
    for i in (0, 1):  # the pupil sits at the eye centre when the gaze is straight
        assert _at(luma, kp[i]) < skin - 40
    # the nose is below the eyes and above the mouth, on the mid-line
    assert kp[0, 1] < kp[2, 1] < kp[3, 1] and kp[0, 0] < kp[2, 0] < kp[1, 0]
    # mouth corners: the mouth (dark) is within one pixel of each corner
    for i in (3, 4):
        x, y = int(round(float(kp[i, 0]))), int(round(float(kp[i, 1])))
        assert luma[y - 1 : y + 2, x - 1 : x + 2].min() < 0.75 * skin


@pytest.mark.parametrize("seed", range(6))
def test_face_mask_covers_keypoints(seed):
    rng = np.random.default_rng(seed)
    res = render(Identity.random(rng), Expression.random(rng), Style.random(rng), Pose.random(rng))
    for xy in res.keypoints:
        assert _at(res.face_mask, xy) > 0.5
    assert 0.15 < res.face_mask.mean() < 0.6


def test_keypoints_follow_pose():
    ident, expr = Identity.from_seed(4), EXPRESSION_PRESETS["smile"]
    base = render(ident, expr, PLAIN).keypoints
    shifted = render(ident, expr, PLAIN, Pose(shift_x=0.1, shift_y=-0.05)).keypoints
    np.testing.assert_allclose(shifted - base, np.tile([[6.4, -3.2]], (5, 1)), atol=1e-4)
    # the image content moves with them
    img0 = render(ident, expr, PLAIN).image
    img1 = render(ident, expr, PLAIN, Pose(shift_x=0.0625)).image  # 4 pixels
    assert np.abs(img1[:, 4:].astype(int) - img0[:, :-4].astype(int)).mean() < 1.0
    # tilt rotates the eye line; scale spreads the keypoints about the image centre
    tilted = render(ident, expr, PLAIN, Pose(tilt=10.0)).keypoints
    angle = np.degrees(np.arctan2(*(tilted[1] - tilted[0])[::-1]))
    assert angle == pytest.approx(10.0, abs=1e-3)
    scaled = render(ident, expr, PLAIN, Pose(scale=1.1)).keypoints
    np.testing.assert_allclose(scaled - 31.5, (base - 31.5) * 1.1, atol=1e-4)


def test_sizes_64_and_128_agree():
    ident, expr, style, pose = Identity.from_seed(9), EXPRESSION_PRESETS["wink"], Style.random(9), Pose.random(9)
    small = render(ident, expr, style, pose, size=64)
    big = render(ident, expr, style, pose, size=128)
    # same continuous geometry: index coordinates map as x128 = 2 * (x64 + 0.5) - 0.5
    np.testing.assert_allclose(big.keypoints, 2.0 * (small.keypoints + 0.5) - 0.5, atol=1e-4)
    down = big.image.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(down - small.image).mean() < 8.0
    assert abs(big.face_mask.mean() - small.face_mask.mean()) < 0.01


def test_renderer_module_imports_without_torch():
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'diffusers', 'transformers'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import emojidiff_synthetic.renderer as mod\n"
        "r = mod.render(mod.Identity(), mod.Expression(), mod.Style())\n"
        "assert r.image.shape == (64, 64, 3)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
