"""The "eyes_nose" expression crop: aligned on expression-invariant points, keeps brows and an open jaw."""

import numpy as np
import pytest

from emojidiff_pipeline import EmojiDiffAdapter
from emojidiff_pipeline.face_geometry import (
    EXPRESSION_CROPS,
    align_expression_face,
    expression_crop_matrix,
    expression_mask,
    expression_template,
)
from emojidiff_synthetic.renderer import Expression, Identity, Pose, Style, render

# hand-marked 5 points of skimage's astronaut photo (512 x 512): eyes, nose tip, mouth corners
ASTRONAUT_KPS = np.array([[203, 101], [248, 102], [226.5, 125], [205.5, 141.5], [253, 140]], np.float32)


def kept_change(neutral: Expression, changed: Expression, geometry: str) -> float:
    """Share of the pixel change between two expressions that survives the crop and its mask."""
    identity, style = Identity.from_seed(5), Style()
    a, b = (render(identity, e, style, Pose(), size=128) for e in (neutral, changed))
    full = np.abs(a.image.astype(np.float32) - b.image.astype(np.float32)).sum()
    crops = [align_expression_face(r.image, a.keypoints, 224, geometry).astype(np.float32) for r in (a, b)]
    mask = expression_mask(224, geometry)[..., None]
    area = abs(np.linalg.det(expression_crop_matrix(a.keypoints, 224, geometry)[:, :2]))  # crop px per image px
    kept = (np.abs(crops[0] - crops[1]) * mask).sum() / area
    return float(kept / full)


@pytest.mark.parametrize(
    "changed",
    [
        Expression(brow_raise_left=1.0, brow_raise_right=1.0),
        Expression(jaw_open=1.0),
        Expression(eye_close_left=1.0, eye_close_right=1.0),
    ],
)
def test_eyes_nose_crop_keeps_brows_eyes_and_open_jaw(changed):
    kept = kept_change(Expression(), changed, "eyes_nose")
    assert kept >= 0.85, kept
    assert kept > kept_change(Expression(), changed, "arcface")


def test_crop_ignores_mouth_corners():
    image = render(Identity.from_seed(2), Expression(), Style(), Pose(), size=128)
    moved = image.keypoints.copy()
    moved[3:] += np.array([[-3.0, -2.0], [3.0, -2.0]])  # a smile moves the mouth corners out and up
    same = [align_expression_face(image.image, k, 224, "eyes_nose") for k in (image.keypoints, moved)]
    assert np.array_equal(same[0], same[1])
    other = [align_expression_face(image.image, k, 224, "arcface") for k in (image.keypoints, moved)]
    assert not np.array_equal(other[0], other[1])  # the 5-point ArcFace crop shifts with the smile


def test_eyes_and_nose_land_on_the_template():
    matrix = expression_crop_matrix(ASTRONAUT_KPS, 224)
    mapped = ASTRONAUT_KPS[:3] @ matrix[:, :2].T + matrix[:, 2]
    # three points, four similarity parameters: least squares, within a couple of pixels on a real face
    assert np.abs(mapped - expression_template(224)).max() < 3.0


def test_real_photo_crop_is_sane_and_mirror_symmetric():
    from skimage.data import astronaut

    photo = astronaut()
    crop = align_expression_face(photo, ASTRONAUT_KPS, 224)
    mask = expression_mask(224)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert crop[mask > 0.5].mean() > 60  # the face fills the mask, not the black border
    mirrored = photo[:, ::-1]
    kps = ASTRONAUT_KPS.copy()
    kps[:, 0] = photo.shape[1] - 1 - kps[:, 0]
    kps = kps[[1, 0, 2, 4, 3]]  # left and right swap under a mirror
    flipped = align_expression_face(mirrored, kps, 224)[:, ::-1]
    diff = np.abs(flipped.astype(np.float32) - crop.astype(np.float32))[mask > 0.5].mean()
    assert diff < 10.0, diff  # half-pixel resampling and the template's slight asymmetry


def test_geometry_is_checked_and_recorded():
    with pytest.raises(ValueError, match="`geometry` must be one of"):
        expression_mask(224, "mouth")
    assert EXPRESSION_CROPS == ("arcface", "eyes_nose")
    with pytest.raises(ValueError, match="`template_crop`"):
        EmojiDiffAdapter(
            cross_attention_dim=8, identity_layers={"a.processor": 8}, expression_layers={}, template_crop="square"
        )
