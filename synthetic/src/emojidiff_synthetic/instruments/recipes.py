"""The shipped instruments' recipe (architecture, seed, training identities, steps, mirroring per instrument), their
targets, and the typed settings of a rebuild (:class:`RunConfig`, what ``synthetic/scripts/train_instruments.py``
maps its flags onto)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .files import ASSET_DIR

# name -> what it is, which side's identities it trains on, its architecture and seed, and its recipe defaults
# (training identities, steps, mirroring probability), which --identities / --<kind>_steps / --identity_hflip override.
INSTRUMENTS: dict[str, dict] = {
    "identity_train": {
        "kind": "identity",
        "side": "train",
        "model": {"arch": "resnet", "widths": [32, 64, 96], "depths": [1, 2, 2]},
        "seed": 101,
        "identities": 3000,
        "steps": 1600,
        "hflip": 0.5,
    },
    "identity_eval": {
        "kind": "identity",
        "side": "eval",
        "model": {"arch": "vgg", "widths": [48, 80, 160], "depths": [1, 2, 2]},
        "seed": 202,
        "identities": 2000,
        "steps": 1200,
        "hflip": 0.0,
    },
    "expression_train": {
        "kind": "expression",
        "side": "train",
        "model": {
            "arch": "resnet",
            "widths": [24, 48, 64],
            "depths": [1, 2, 2],
            "hidden": 128,
            "eye_widths": [16, 24, 40],
            "eye_depths": [1, 1, 1],
        },
        "seed": 303,
        "identities": 2000,
        "steps": 1200,
    },
    "expression_eval": {
        "kind": "expression",
        "side": "eval",
        "model": {
            "arch": "vgg",
            "widths": [32, 48, 64],
            "depths": [1, 2, 2],
            "hidden": 96,
            "eye_widths": [24, 32, 48],
            "eye_depths": [1, 1, 1],
        },
        "seed": 404,
        "identities": 2000,
        "steps": 1200,
    },
    "style": {
        "kind": "style",
        "side": "eval",
        "model": {"widths": [32, 64, 96], "depths": [1, 1, 1]},
        "seed": 505,
        "identities": 2000,
        "steps": 1200,
    },
}
TARGETS = {
    "identity": ("tar@far=0.001", ">=", 0.95),
    "expression": ("max_mae", "<=", 0.03),
    "style": ("min_acc", ">=", 0.98),
}
DATA_SEEDS = {"train": 11, "eval": 22, "heldout": 33}
EYES_OPEN_MAX_CLOSE = 0.5  # gaze is judged on renders whose two eyes are both less than half closed

DESCRIPTIONS = {
    "identity": "Identity encoder: aligned 112x112 crop, (x - 127.5) / 127.5 RGB -> 512-d embedding; CosFace over the "
    "training identities + auxiliary regression of the identity factors; exported as an insightface ArcFace ONNX.",
    "expression": "Expression estimator: aligned 112x112 crop -> the 11 EXPRESSION_FIELDS in [0, 1]; L1 + soft-target "
    "BCE loss.",
    "style": "Style classifier: full 64x64 render -> rendering, palette, background, pattern heads; cross-entropy.",
}


@dataclass
class RunConfig:
    """Settings of one rebuild of the instruments (the recipe's values in ``INSTRUMENTS`` apply where an override
    here is None).

    Args:
        which: the instruments to rebuild, names of ``INSTRUMENTS``.
        out: folder of the exported instruments.
        work_dir: checkpoints (``<work_dir>/<name>/``) and the rendered data cache (``<work_dir>/data``).
        docs_dir: where ``instruments.json`` and ``instruments.md`` are written.
        identities: training identities (None: per instrument).
        photos_per_identity: training renders per identity.
        num_collection_identities: the held-out evaluation identities are taken below this.
        eval_photos_per_identity: evaluation renders per held-out identity.
        identity_steps, expression_steps, style_steps: training steps per kind (None: per instrument).
        batch_size, learning_rate, weight_decay, warmup_steps: AdamW with linear warm-up, then cosine decay.
        margin, scale: CosFace margin and scale of the identity loss.
        aux_weight: weight of the identity-factor regression loss.
        identity_hflip: probability of mirroring an identity training crop (None: per instrument).
        gaze_weight: expression loss weight of gaze where an iris is visible.
        keypoint_jitter: pixel std of the noise on the keypoints of training crops.
        checkpoint_minutes: a checkpoint every this many minutes of training (0: after every step) and at the end.
        threads: torch CPU threads.
    """

    which: list[str] = field(default_factory=lambda: list(INSTRUMENTS))
    out: Path = ASSET_DIR
    work_dir: Path = Path("runs/instruments")
    docs_dir: Path = Path("docs")
    identities: int | None = None
    photos_per_identity: int = 8
    num_collection_identities: int = 2000
    eval_photos_per_identity: int = 10
    identity_steps: int | None = None
    expression_steps: int | None = None
    style_steps: int | None = None
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 50
    margin: float = 0.3
    scale: float = 30.0
    aux_weight: float = 1.0
    identity_hflip: float | None = None
    gaze_weight: float = 3.0
    keypoint_jitter: float = 0.3
    checkpoint_minutes: float = 3.0
    threads: int = 1

    def __post_init__(self) -> None:
        unknown = [w for w in self.which if w not in INSTRUMENTS]
        if unknown or not self.which:
            raise ValueError(f"`which`: unknown instrument(s) {unknown}; choose from {list(INSTRUMENTS)}.")


def setting(config: RunConfig, name: str, key: str):
    """A recipe value of instrument `name`: the command-line override if given, else its INSTRUMENTS default."""
    spec = INSTRUMENTS[name]
    option = {"identities": "identities", "steps": f"{spec['kind']}_steps", "hflip": "identity_hflip"}[key]
    value = getattr(config, option)
    return spec.get(key, 0.0) if value is None else value
