"""The portrait: `render(identity, expression, style, pose)` lays out the face from its factors, then draws it in
named steps (shadow and back hair, ears and face, cheeks, nose, eyes, brows, mouth, hair, glasses) and resolves
the supersampled canvas to the output image, its keypoints and its face mask."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .background import draw_background
from .canvas import Canvas, band, clip_circle, ellipse, frame_grid, ring, smoothstep, stroke
from .colors import (
    BLUSH,
    EYE_WHITE,
    HAIR_RAMP,
    INK,
    IRIS_RAMP,
    LIP,
    MOUTH_DARK,
    SKIN_RAMP,
    TEETH,
    TONGUE,
    apply_palette,
    mix,
    ramp,
    rgb,
)
from .factors import Expression, Identity, Pose, RenderResult, Style
from .sketch import pencil

# Fixed freckle layout on the cheeks: (x, y) offsets in units of the cheek ellipse, and per-freckle size jitter.
_FRECKLES = np.random.default_rng(20241202).uniform(-1.0, 1.0, size=(14, 3))


@dataclass(frozen=True)
class _Paint:
    """The colours and line widths of one portrait (face-frame units), from the identity and the style."""

    palette: str
    rendering: str
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    brow: np.ndarray
    skin_dark: np.ndarray
    heavy: bool  # the "outline" rendering: thick ink
    sil_w: float  # silhouette outline width
    feat_w: float  # feature line width
    skin_ink: tuple[int, ...]
    hair_ink: tuple[int, ...]

    def col(self, c: Any) -> np.ndarray:
        return apply_palette(c, self.palette)


def _paint(idn: Identity, style: Style) -> _Paint:
    pal = style.palette
    rendering = style.rendering

    def col(c: Any) -> np.ndarray:
        return apply_palette(c, pal)

    skin = col(ramp(SKIN_RAMP, idn.skin_tone))
    hair = col(ramp(HAIR_RAMP, idn.hair_color))
    iris = col(ramp(IRIS_RAMP, idn.iris_color))
    heavy = rendering == "outline"
    inked = heavy or rendering == "sketch"
    return _Paint(
        palette=pal,
        rendering=rendering,
        skin=skin,
        hair=hair,
        iris=iris,
        brow=mix(hair, (26, 18, 16), 0.55),
        skin_dark=mix(skin, (40, 20, 20), 0.22),
        heavy=heavy,
        sil_w=0.07 if heavy else 0.04,
        feat_w=0.045 if heavy else 0.03,
        skin_ink=rgb(INK) if inked else rgb(mix(skin, (30, 15, 15), 0.5)),
        hair_ink=rgb(INK) if inked else rgb(mix(hair, (0, 0, 0), 0.45)),
    )


@dataclass(frozen=True)
class _Layout:
    """Where the features sit, in face-frame coordinates (x right, y down)."""

    cx: float
    cy: float
    a: float  # face half-width
    b: float  # face half-height above the centre
    b_low: float  # ... and below it (the jaw opens downwards)
    ey: float  # eye line
    dx: float  # eye centre offset from the face's middle
    ew: float  # eye half-width
    eh: float  # eye half-height
    ir: float  # iris radius
    bt: float  # brow thickness
    brow_rest: float
    brow_clear: float  # the hairline may not come lower than this
    my: float  # mouth line
    mw: float  # mouth half-width
    corner: float  # mouth-corner height relative to the mouth centre (up < 0)
    ny: float  # nose
    eye_centres: tuple[tuple[float, float], tuple[float, float]]  # image-left, image-right


def _layout(idn: Identity, ex: Expression) -> _Layout:
    cx, cy = 0.0, 0.06
    a = 0.47 + 0.14 * idn.face_width
    b = 0.56 + 0.13 * idn.face_height
    ey = cy - 0.02
    dx = 0.18 + 0.09 * idn.eye_spacing
    ew = 0.105 + 0.05 * idn.eye_size
    eh = ew * (0.9 - 0.35 * idn.eye_shape)
    bt = 0.028 + 0.034 * idn.brow_thickness
    brow_rest = ey - eh - 0.065
    my = cy + 0.42 * b
    mw = (0.13 + 0.07 * idn.mouth_width) * (1.0 + 0.3 * ex.smile - 0.12 * ex.frown) * (1.0 - 0.5 * ex.pucker)
    return _Layout(
        cx=cx,
        cy=cy,
        a=a,
        b=b,
        b_low=b + 0.08 * ex.jaw_open,
        ey=ey,
        dx=dx,
        ew=ew,
        eh=eh,
        ir=min(0.8 * eh, 0.62 * ew),
        bt=bt,
        brow_rest=brow_rest,
        brow_clear=brow_rest - 0.09 - 0.045 - bt - 0.03,
        my=my,
        mw=mw,
        corner=-0.11 * ex.smile + 0.1 * ex.frown,
        ny=(ey + eh + my) * 0.5 + 0.01,
        eye_centres=((cx + -1.0 * dx, ey), (cx + 1.0 * dx, ey)),
    )


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
    line = line + (side_y - line) * smoothstep(side_from * a, max(side_from, 0.8) * a + 0.12 * a, np.abs(xs))
    lower = np.maximum(np.minimum(line, outer_bottom), outer_top)
    return band(xs + cx, outer_top, lower)


def _draw_shadow_and_back_hair(cv: Canvas, idn: Identity, lay: _Layout, paint: _Paint) -> None:
    cx, cy, a, b = lay.cx, lay.cy, lay.a, lay.b
    if paint.rendering == "shaded":
        cv.poly(ellipse(cx + 0.07, cy + 0.08, a * 1.12, b * 1.12, 32), (0, 0, 0, 40))
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
            back = band(xs + cx, top_curve, bot_curve)
        cv.outlined(back, rgb(mix(paint.hair, (0, 0, 0), 0.12)), paint.hair_ink, paint.sil_w, fg=True)


def _draw_ears_and_face(cv: Canvas, idn: Identity, lay: _Layout, paint: _Paint) -> None:
    cx, cy, a, ey = lay.cx, lay.cy, lay.a, lay.ey
    skin, skin_ink, sil_w = paint.skin, paint.skin_ink, paint.sil_w
    erx, ery = 0.05 + 0.045 * idn.ear_size, 0.085 + 0.055 * idn.ear_size
    for side in (-1.0, 1.0):
        ex_ = cx + side * (a + erx * 0.35)
        cv.outlined(ellipse(ex_, ey + 0.05, erx, ery, 20), rgb(skin), skin_ink, sil_w * 0.8, fg=True)
        cv.poly(ellipse(ex_ + side * 0.01, ey + 0.05, erx * 0.5, ery * 0.6, 14), rgb(paint.skin_dark))
    contour = _face_contour(cx, cy, a, lay.b, lay.b_low, idn.jaw)
    cv.outlined(contour, rgb(skin), skin_ink, sil_w, fg=True, face=True)
    if paint.rendering == "shaded":
        cv.poly(ellipse(cx - 0.35 * a, cy - 0.55 * lay.b, 0.17 * a, 0.1 * lay.b, 20), (255, 255, 255, 90))


def _draw_cheeks(cv: Canvas, idn: Identity, ex: Expression, lay: _Layout, paint: _Paint) -> None:
    """Blush (smile) and freckles."""
    cx, ey, eh, dx, skin = lay.cx, lay.ey, lay.eh, lay.dx, paint.skin
    cheek_y = ey + eh + 0.1 - 0.035 * ex.smile
    for side in (-1.0, 1.0):
        if ex.smile > 0.0:
            cv.poly(
                ellipse(cx + side * (dx + 0.03), cheek_y, 0.085, 0.05, 20),
                rgb(mix(skin, paint.col(BLUSH), 0.55 * ex.smile)),
            )
        if idn.freckles > 0.0:
            count = int(math.ceil(idn.freckles * len(_FRECKLES)))
            fc = rgb(mix(skin, mix(skin, (90, 45, 25), 0.55), 0.45 + 0.45 * idn.freckles))
            for fx, fy, fs in _FRECKLES[:count]:
                r = 0.016 + 0.005 * fs
                cv.poly(ellipse(cx + side * (dx + 0.02) + 0.09 * fx, ey + eh + 0.075 + 0.04 * fy, r, r, 8), fc)


def _draw_nose(cv: Canvas, idn: Identity, lay: _Layout, paint: _Paint) -> None:
    cx, ny, skin = lay.cx, lay.ny, paint.skin
    rn = 0.028 + 0.03 * idn.nose_size
    cv.poly(ellipse(cx, ny, rn, rn * 0.75, 18), rgb(mix(skin, (60, 25, 20), 0.3)))
    cv.poly(ellipse(cx - rn * 0.3, ny - rn * 0.3, rn * 0.3, rn * 0.22, 10), rgb(mix(skin, (255, 255, 255), 0.45)))


def _draw_eyes(cv: Canvas, ex: Expression, lay: _Layout, paint: _Paint) -> None:
    """Whites, iris, pupil and highlight between the lid and the lower rim; lashes on the lid line."""
    cx, ey, dx, ew, eh, ir, heavy = lay.cx, lay.ey, lay.dx, lay.ew, lay.eh, lay.ir, paint.heavy
    gx = (ex.gaze_x - 0.5) * 2.0 * (ew - 0.7 * ir)
    gy = (ex.gaze_y - 0.5) * 1.5 * eh
    xs_e = np.linspace(-ew, ew, 23)
    sq = np.sqrt(np.maximum(1.0 - (xs_e / ew) ** 2, 0.0))
    lash_w = (0.032 if not heavy else 0.045) * (0.8 + 0.4 * np.abs(xs_e / ew))
    for side, close in zip((-1.0, 1.0), (ex.eye_close_left, ex.eye_close_right)):
        ecx = cx + side * dx
        xs = xs_e + ecx
        bottom = ey + eh * sq
        lid = ey + eh * (2.0 * close - 1.0) * sq
        if heavy:
            cv.poly(band(xs, ey - eh * sq - 0.02, bottom + 0.02), rgb(INK))
        if close < 1.0:
            cv.poly(band(xs, lid, bottom), rgb(EYE_WHITE))
            icx, icy = ecx + gx, ey + gy
            cv.poly(clip_circle(xs, lid, bottom, icx, icy, ir), rgb(paint.iris))
            cv.poly(clip_circle(xs, lid, bottom, icx, icy, ir * 0.5, 11), rgb((22, 18, 24)))
            cv.poly(clip_circle(xs, lid, bottom, icx - 0.35 * ir, icy - 0.35 * ir, ir * 0.28, 9), rgb(EYE_WHITE))
            cv.poly(stroke(np.stack([xs, bottom], axis=1), paint.feat_w * 0.45), rgb(mix(paint.skin, INK, 0.45)))
        cv.poly(stroke(np.stack([xs, lid], axis=1), lash_w), rgb(INK))


def _draw_brows(cv: Canvas, ex: Expression, lay: _Layout, paint: _Paint) -> None:
    """Brows (raised, arched, furrowed) and the furrow crease between them."""
    cx, dx, brow_rest, skin = lay.cx, lay.dx, lay.brow_rest, paint.skin
    u = np.linspace(0.0, 1.0, 15)  # 0 = inner end, 1 = outer end
    bl = lay.ew * 1.15
    for side, rise in zip((-1.0, 1.0), (ex.brow_raise_left, ex.brow_raise_right)):
        bx = cx + side * (dx - 0.035 * ex.brow_furrow)
        by = brow_rest - 0.09 * rise
        arch = 0.012 + 0.03 * rise
        xs = bx + side * bl * (2.0 * u - 1.0)
        ys = by - arch * (1.0 - (2.0 * u - 1.0) ** 2) + (0.075 * ex.brow_furrow - 0.02 * rise) * (1.0 - u)
        ys = ys - 0.03 * ex.brow_furrow * u
        cv.poly(stroke(np.stack([xs, ys], axis=1), lay.bt * (1.1 - 0.45 * u)), rgb(paint.brow))
    if ex.brow_furrow > 0.0:
        crease = rgb(mix(skin, mix(skin, (60, 25, 20), 0.55), 0.9 * ex.brow_furrow))
        for side in (-1.0, 1.0):
            pts = np.stack([np.full(6, cx + side * 0.025), np.linspace(brow_rest - 0.02, brow_rest + 0.06, 6)], 1)
            cv.poly(stroke(pts, 0.022), crease)


def _draw_mouth(cv: Canvas, ex: Expression, lay: _Layout, paint: _Paint) -> None:
    """Lips, the opening, teeth and tongue, and the chin crease of a frown."""
    cx, my, mw, corner, skin = lay.cx, lay.my, lay.mw, lay.corner, paint.skin
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
    lip = mix(skin, paint.col(LIP), 0.35 + 0.55 * ex.pucker)
    cv.poly(band((xs - cx) * (mw + lt) / mw + cx, top - lt * rim, bottom + lt * rim), rgb(lip))
    if paint.heavy:
        sx = (mw + 0.03) / mw
        cv.poly(band(xs * sx, top - 0.025, bottom + 0.025), rgb(INK))
    cv.poly(band(xs, top, bottom), rgb(paint.col(MOUTH_DARK)))
    if ex.frown > 0.0:  # chin crease under a frowning mouth
        xc = np.linspace(-0.45 * mw, 0.45 * mw, 9)
        yc = my + half_line + hl + 0.07 - 0.02 * (1.0 - (xc / (0.45 * mw)) ** 2)
        crease = rgb(mix(skin, (60, 25, 20), 0.45 * ex.frown))
        cv.poly(stroke(np.stack([xc + cx, yc], axis=1), 0.022), crease)
    opening = hu + hl - 0.024
    if opening > 0.015:
        th_teeth = (0.012 + 0.045 * ex.smile) * min(opening / 0.08, 1.0)
        cv.poly(band(xs, top, np.minimum(top + th_teeth * prof, bottom)), rgb(TEETH))
    if ex.jaw_open > 0.1:
        tongue_y = my + corner * 0.3 + half_line + hl * 0.95
        r_tongue = 0.55 * mw * min(ex.jaw_open / 0.4, 1.0)
        cv.poly(clip_circle(xs, top, bottom, cx, tongue_y, r_tongue, 15), rgb(paint.col(TONGUE)))


def _hair_params(hs: str, lay: _Layout, hl_y: float) -> dict[str, float]:
    """The hair cap of each style (see `_hair_cap`)."""
    cy, b, ey, brow_clear = lay.cy, lay.b, lay.ey, lay.brow_clear
    return {
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
        "curly": dict(vol_x=0.12, vol_y=0.14, hairline=hl_y, sag=0.04, side_y=ey - 0.03, side_from=0.88, bumps=0.05),
    }[hs]


def _draw_hair(cv: Canvas, idn: Identity, lay: _Layout, paint: _Paint) -> None:
    """Hair on top of the head (spikes and bun behind the cap; the side part's line on it)."""
    hs = idn.hair_style
    if hs == "bald":
        return
    cx, cy, a, b = lay.cx, lay.cy, lay.a, lay.b
    hair, hair_ink, sil_w = paint.hair, paint.hair_ink, paint.sil_w
    hair_fill = rgb(hair if hs != "buzz" else mix(hair, paint.skin, 0.3))
    hl_y = min(cy - 0.66 * b, lay.brow_clear)
    params = _hair_params(hs, lay, hl_y)
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
        cv.outlined(ellipse(cx, cy - b * 1.05 - 0.07, 0.15, 0.12, 24), hair_fill, hair_ink, sil_w, fg=True)
    cv.outlined(_hair_cap(cx, cy, a, b, **params), hair_fill, hair_ink, sil_w * 0.7, fg=True)
    if hs == "side_part":
        pts = np.stack([np.full(6, cx - 0.3 * a), np.linspace(cy - b * 1.1, hl_y - 0.04, 6)], axis=1)
        cv.poly(stroke(pts, 0.025), rgb(mix(hair, (0, 0, 0), 0.4)))


def _draw_glasses(cv: Canvas, idn: Identity, lay: _Layout, paint: _Paint) -> None:
    if not idn.glasses:
        return
    cx, a, ey, eye_centres = lay.cx, lay.a, lay.ey, lay.eye_centres
    rim = rgb(INK) if paint.palette != "pastel" else rgb((96, 84, 120))
    rr = lay.ew * 1.32
    rim_w = 0.03 if not paint.heavy else 0.045
    for ecx, ecy in eye_centres:
        cv.poly(ellipse(ecx, ecy, rr, rr * 0.86, 28), (210, 235, 255, 50))
        cv.poly(ring(ecx, ecy, rr, rr * 0.86, rim_w), rim)
    (lx, _), (rx, _) = eye_centres
    bridge = np.stack([np.linspace(lx + rr, rx - rr, 5), ey - 0.2 * rr - 0.015 * np.sin(np.linspace(0, np.pi, 5))], 1)
    cv.poly(stroke(bridge, rim_w), rim)
    for ecx, side in ((lx, -1.0), (rx, 1.0)):
        arm = np.stack([np.linspace(ecx + side * rr, cx + side * (a + 0.01), 5), np.full(5, ey - 0.25 * rr)], 1)
        cv.poly(stroke(arm, rim_w), rim)


def _resolve(cv: Canvas, lay: _Layout, rendering: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-downsample the canvas to `size` and apply the renderings that act on pixels (shading, pencil).
    Returns the uint8 image (size, size, 3) and the face mask (size, size)."""
    ss = cv.ss
    image = np.asarray(cv.img.reduce(ss), dtype=np.float32)  # (size, size, 3)
    fg = np.asarray(cv.fg.reduce(ss), dtype=np.float32) / 255.0  # (size, size)
    face_mask = np.asarray(cv.face.reduce(ss), dtype=np.float32) / 255.0
    if rendering == "shaded":
        gx_, gy_ = frame_grid(cv, size)
        u_, v_ = (gx_ - lay.cx) / lay.a, (gy_ - lay.cy) / lay.b
        shade = np.clip(1.08 - 0.22 * (u_**2 + v_**2) - 0.08 * u_ - 0.1 * v_, 0.6, 1.15)
        image = image * (1.0 + (shade - 1.0) * fg)[..., None]
    elif rendering == "sketch":
        image = pencil(image, fg, size)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), face_mask


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

    cv = Canvas(draw_background(style.background, style.pattern, size, ss).copy(), size, ss, pose)
    paint = _paint(identity, style)
    lay = _layout(identity, expression)
    # back to front
    _draw_shadow_and_back_hair(cv, identity, lay, paint)
    _draw_ears_and_face(cv, identity, lay, paint)
    _draw_cheeks(cv, identity, expression, lay, paint)
    _draw_nose(cv, identity, lay, paint)
    _draw_eyes(cv, expression, lay, paint)
    _draw_brows(cv, expression, lay, paint)
    _draw_mouth(cv, expression, lay, paint)
    _draw_hair(cv, identity, lay, paint)
    _draw_glasses(cv, identity, lay, paint)
    image, face_mask = _resolve(cv, lay, style.rendering, size)

    mouth_l, mouth_r = (lay.cx - lay.mw, lay.my + lay.corner), (lay.cx + lay.mw, lay.my + lay.corner)
    keypoints = cv.to_pixels(np.array([*lay.eye_centres, (lay.cx, lay.ny), mouth_l, mouth_r]))
    return RenderResult(image=image, keypoints=keypoints.astype(np.float32), face_mask=face_mask)
