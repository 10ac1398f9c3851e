"""The photo collection of the synthetic proving ground (DESIGN.md): build it once, then read it like real data.

The collection obeys the real-data constraint: many identities, several photos of each (random expression, style
and pose), images as files, web-like captions (style and coarse appearance, coarse expression words at most) and
the five keypoints a face detector would return. Method code (training, IDI) reads only this collection, never the
renderer. The renderer's factors are written to a separate ground-truth file that only evaluation and instrument
training read. Identities with `world.is_held_out(i)` go to their own manifest and to no training file.

Layout under the root:

    collection.json          metadata: sizes, seed, counts per split, field orders, format version
    train.jsonl              {"path", "identity", "caption", "kps"} per photo of a non-held-out identity
    heldout.jsonl            the same fields for held-out identities (evaluation only)
    ground_truth.jsonl       {"path", "identity", "identity_seed", "identity_factors", "expression", "style", "pose"}
                             for every photo (evaluation and instrument training only)
    images/<identity>/<photo:02d>.png
    .build/                  only while building: build config, committed shards, temporary files

Determinism: identity `i` is `Identity.from_seed(i)` (world.py) and photo `j` of it is drawn from
`np.random.default_rng([seed, i, j, 1])` (expression, then style, then pose; the caption's wording from
`[seed, i, j, 2]`), so the files depend on (num_identities, photos_per_identity, size, seed) only: not on the number
of workers, the shard size or on how often a build was interrupted. The last, non-zero word is a stream tag:
numpy's SeedSequence ignores trailing zero words, so `[seed, i, 0]` would give the very stream of
`Identity.from_seed(seed)` (photo 0 of identity 0 would copy identity `seed`'s factors).

Crash safety: identities are built in shards. A shard writes its images (each through a temporary file and
`os.replace`), then its manifest lines to a temporary file that is renamed into `.build/shards/` (the commit). A
restart keeps committed shards and rebuilds the others; the final files are assembled from the shards, each
written whole and renamed into place, `collection.json` last. A SIGKILL at any moment followed by a restart gives
the same bytes as an uninterrupted build.

numpy + Pillow only: importing this module never imports torch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .renderer import (
    EXPRESSION_FIELDS,
    IDENTITY_FIELDS,
    POSE_RANGES,
    STYLE_CHOICES,
    Expression,
    Identity,
    Pose,
    Style,
    render,
)
from .world import DEFAULT_NUM_IDENTITIES, DEFAULT_PHOTOS_PER_IDENTITY, HELD_OUT_MODULUS, identity_name, is_held_out

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KEYPOINT_NAMES",
    "SPLITS",
    "BuildReport",
    "Collection",
    "build_collection",
    "check_build_args",
    "make_caption",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "emojidiff-photo-collection"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "heldout")
KEYPOINT_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth_corner", "right_mouth_corner")
RECORD_FIELDS: tuple[str, ...] = ("path", "identity", "caption", "kps")
GROUND_TRUTH_FIELDS: tuple[str, ...] = (
    "path",
    "identity",
    "identity_seed",
    "identity_factors",
    "expression",
    "style",
    "pose",
)
MAX_IDENTITIES = 100_000  # identity names stay 5 digits wide, so sorting by name sorts by id
MAX_PHOTOS_PER_IDENTITY = 99  # photo file names are 2 digits wide
DEFAULT_SHARD_SIZE = 100

# Stream tags (last SeedSequence word, non-zero: see the module docstring).
_PHOTO_STREAM = 1
_CAPTION_STREAM = 2

_MANIFESTS = {"train": "train.jsonl", "heldout": "heldout.jsonl"}
_GROUND_TRUTH = "ground_truth.jsonl"
_METADATA = "collection.json"
_BUILD_DIR = ".build"
_IDENTITY_RE = re.compile(r"^id(\d{5})$")
_PATH_RE = re.compile(r"^images/(id\d{5})/(\d{2})\.png$")


# ----------------------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------------------

# Coarse words for the renderer's colour ramps (nearest stop of `HAIR_RAMP` / `SKIN_RAMP` in renderer/colors.py).
_HAIR_COLOR_WORDS = ("black", "dark brown", "brown", "red", "blond", "platinum blond", "gray", "blue", "pink")
_SKIN_WORDS = ("yellow", "pale", "light", "medium", "tan", "brown", "dark")
# `{c}` is the hair colour word, or nothing when the rendering hides colour.
_HAIR_PHRASES = {
    "bald": None,
    "buzz": "{c} buzz-cut hair",
    "short": "short {c} hair",
    "side_part": "side-parted {c} hair",
    "bob": "a {c} bob",
    "long": "long {c} hair",
    "spiky": "spiky {c} hair",
    "bun": "{c} hair in a bun",
    "curly": "curly {c} hair",
}
_SUBJECTS = ("a person", "a person", "a face", "someone")
_PORTRAIT_WORDS = ("portrait", "portrait", "avatar", "headshot")
_EXPRESSION_KEEP_PROB = 0.7  # web captions often leave out what a face does
_MAX_EXPRESSION_WORDS = 2


def _ramp_word(words: tuple[str, ...], t: float) -> str:
    return words[int(round(t * (len(words) - 1)))]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# Every word `_expression_words` can give: `--strip_prompt_words` removes them from training captions.
EXPRESSION_WORDS = ("laughing", "smiling", "frowning", "open mouth", "pursed lips", "eyes closed", "winking",
                    "raised eyebrows", "furrowed brows")  # fmt: skip


def _expression_words(expression: Expression) -> list[str]:
    """Coarse words for what is clearly visible; nothing for weak or ambiguous actions."""
    ex = expression
    words = []
    if ex.smile >= 0.6 and ex.jaw_open >= 0.5:
        words.append("laughing")
    elif ex.smile >= 0.5 and ex.frown < 0.3:
        words.append("smiling")
    elif ex.frown >= 0.5 and ex.smile < 0.3:
        words.append("frowning")
    if ex.jaw_open >= 0.6 and "laughing" not in words:
        words.append("open mouth")
    if ex.pucker >= 0.6:
        words.append("pursed lips")
    lo, hi = sorted((ex.eye_close_left, ex.eye_close_right))
    if lo >= 0.85:
        words.append("eyes closed")
    elif hi >= 0.85 and lo <= 0.15:
        words.append("winking")
    if min(ex.brow_raise_left, ex.brow_raise_right) >= 0.6:
        words.append("raised eyebrows")
    elif ex.brow_furrow >= 0.7:
        words.append("furrowed brows")
    return words


def make_caption(identity: Identity, expression: Expression, style: Style, rng: np.random.Generator) -> str:
    """A web-like caption: the style (always), coarse appearance and, sometimes, coarse expression words.

    No factor values leak: colours are named by their nearest ramp stop, expressions only by a small vocabulary
    ("smiling", "winking", ...) when clearly present, and each expression word is left out with probability
    1 - 0.7. E.g. "flat emoji portrait of a person with long brown hair and glasses, pastel palette, blue striped
    background, smiling".
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy Generator, got {type(rng).__name__}.")
    # Colour words only where the rendering shows colour (mono palette and pencil sketch are near gray).
    colorless = style.palette == "mono" or style.rendering == "sketch"
    subject = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
    portrait = _PORTRAIT_WORDS[int(rng.integers(len(_PORTRAIT_WORDS)))]
    mention_skin = rng.uniform() < 0.4
    mention_glasses = rng.uniform() < 0.9
    mention_freckles = rng.uniform() < 0.6

    traits = []
    template = _HAIR_PHRASES[identity.hair_style]
    if template is None:
        subject = "a bald person" if subject in ("a person", "someone") else subject
        if subject == "a face":
            traits.append("a bald head")
    else:
        color = "" if colorless else _ramp_word(_HAIR_COLOR_WORDS, identity.hair_color)
        traits.append(" ".join(template.format(c=color).split()))
    if mention_skin and not colorless:
        traits.append(f"{_ramp_word(_SKIN_WORDS, identity.skin_tone)} skin")
    if identity.freckles >= 0.5 and mention_freckles:
        traits.append("freckles")
    if identity.glasses and mention_glasses:
        traits.append("glasses")

    text = f"{style.rendering} emoji {portrait} of {subject}"
    if traits:
        text += f" with {_join(traits)}"
    text += f", {style.palette} palette, {style.background} {style.pattern} background"
    kept = [w for w in _expression_words(expression) if rng.uniform() < _EXPRESSION_KEEP_PROB]
    if kept:
        text += ", " + ", ".join(kept[:_MAX_EXPRESSION_WORDS])
    return text


# ----------------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------------


def check_build_args(
    num_identities: int, photos_per_identity: int, size: int, seed: int, workers: int, shard_size: int
) -> None:
    """Raise a ValueError that names the argument for any invalid build setting."""

    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(num_identities) or not HELD_OUT_MODULUS <= num_identities <= MAX_IDENTITIES:
        raise ValueError(
            f"`num_identities` must be an int in [{HELD_OUT_MODULUS}, {MAX_IDENTITIES}] (at least "
            f"{HELD_OUT_MODULUS} so that the held-out split is not empty), got {num_identities!r}."
        )
    if not is_int(photos_per_identity) or not 2 <= photos_per_identity <= MAX_PHOTOS_PER_IDENTITY:
        raise ValueError(
            f"`photos_per_identity` must be an int in [2, {MAX_PHOTOS_PER_IDENTITY}] (same-identity pairs need at "
            f"least 2), got {photos_per_identity!r}."
        )
    if not is_int(size) or not 16 <= size <= 512:
        raise ValueError(f"`size` must be an int in [16, 512] (the renderer's range), got {size!r}.")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
    if not is_int(workers) or workers < 1:
        raise ValueError(f"`workers` must be an int >= 1, got {workers!r}.")
    if not is_int(shard_size) or shard_size < 1:
        raise ValueError(f"`shard_size` must be an int >= 1, got {shard_size!r}.")


@dataclass
class BuildReport:
    """What `build_collection` did.

    Attributes:
        root: the collection folder.
        metadata: the contents of `collection.json` (sizes, seed, counts per split, ...).
        shards_total: number of shards of the build.
        shards_built: shards rendered by this call.
        shards_resumed: shards committed by an earlier, interrupted call and kept.
        wall_clock_s: seconds this call took.
        already_complete: True when the folder already held this exact collection and nothing was done.
    """

    root: Path
    metadata: dict[str, Any]
    shards_total: int
    shards_built: int
    shards_resumed: int
    wall_clock_s: float
    already_complete: bool = False


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, allow_nan=False)


def _atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write `data` to a temporary file in `tmp_dir` (same filesystem), fsync it and rename it onto `path`."""
    tmp = tmp_dir / f"{os.getpid()}-{path.name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _photo_entries(seed: int, identity_id: int, identity: Identity, photo_index: int, size: int):
    """Render photo `photo_index` of identity `identity_id`: (png bytes, manifest record, ground-truth entry)."""
    rng = np.random.default_rng([seed, identity_id, photo_index, _PHOTO_STREAM])
    expression = Expression.random(rng)
    style = Style.random(rng)
    pose = Pose.random(rng)
    result = render(identity, expression, style, pose, size=size)
    caption_rng = np.random.default_rng([seed, identity_id, photo_index, _CAPTION_STREAM])
    caption = make_caption(identity, expression, style, caption_rng)
    name = identity_name(identity_id)
    rel = f"images/{name}/{photo_index:02d}.png"
    buf = io.BytesIO()
    Image.fromarray(result.image, "RGB").save(buf, format="PNG")
    record = {
        "path": rel,
        "identity": name,
        "caption": caption,
        "kps": [[round(float(x), 3), round(float(y), 3)] for x, y in result.keypoints],
    }
    truth = {
        "path": rel,
        "identity": name,
        "identity_seed": identity_id,
        "identity_factors": dataclasses.asdict(identity),
        "expression": [getattr(expression, n) for n in EXPRESSION_FIELDS],
        "style": dataclasses.asdict(style),
        "pose": dataclasses.asdict(pose),
    }
    return buf.getvalue(), record, truth


@dataclass(frozen=True)
class _ShardTask:
    root: str
    shard_index: int
    start: int
    stop: int
    photos_per_identity: int
    size: int
    seed: int
    identity_delay_s: float
    parent_pid: int | None  # set in pool workers: a worker whose parent died stops instead of writing on


def _shard_path(root: Path, k: int) -> Path:
    return root / _BUILD_DIR / "shards" / f"shard_{k:05d}.jsonl"


def _build_shard(task: _ShardTask) -> int:
    """Render one shard's images, then commit its manifest lines with one atomic rename. Returns the shard index."""
    root = Path(task.root)
    tmp_dir = root / _BUILD_DIR / "tmp"
    lines = []
    for i in range(task.start, task.stop):
        if task.parent_pid is not None and os.getppid() != task.parent_pid:
            os._exit(1)  # orphaned pool worker (the build was killed): leave the shard uncommitted
        identity = Identity.from_seed(i)
        folder = root / "images" / identity_name(i)
        folder.mkdir(parents=True, exist_ok=True)
        split = "heldout" if is_held_out(i) else "train"
        for j in range(task.photos_per_identity):
            png, record, truth = _photo_entries(task.seed, i, identity, j, task.size)
            _atomic_write_bytes(root / record["path"], png, tmp_dir)
            lines.append(_dumps({"split": split, "record": record, "ground_truth": truth}))
        if task.identity_delay_s > 0:
            time.sleep(task.identity_delay_s)
    _atomic_write_bytes(_shard_path(root, task.shard_index), ("\n".join(lines) + "\n").encode(), tmp_dir)
    return task.shard_index


def _read_shard(path: Path) -> list[dict[str, Any]]:
    """A shard's entries; a broken line is a ValueError naming file:line (the library's JSONL reader)."""
    from emojidiff_pipeline.train.triplets import read_jsonl

    return read_jsonl(path, ("split", "record", "ground_truth"), "collection shard")


def _shard_is_complete(root: Path, task: _ShardTask) -> bool:
    """A committed shard with the expected lines whose images all exist (guards against lost image writes)."""
    path = _shard_path(root, task.shard_index)
    if not path.is_file():
        return False
    try:
        entries = _read_shard(path)
    except (OSError, ValueError):
        return False
    expected = [
        f"images/{identity_name(i)}/{j:02d}.png"
        for i in range(task.start, task.stop)
        for j in range(task.photos_per_identity)
    ]
    if [e.get("record", {}).get("path") for e in entries] != expected:
        return False
    return all((root / p).is_file() and (root / p).stat().st_size > 0 for p in expected)


def _collection_config(num_identities: int, photos_per_identity: int, size: int, seed: int) -> dict[str, int]:
    return {
        "num_identities": int(num_identities),
        "photos_per_identity": int(photos_per_identity),
        "size": int(size),
        "seed": int(seed),
    }


def _metadata(config: dict[str, int]) -> dict[str, Any]:
    n, p = config["num_identities"], config["photos_per_identity"]
    held = sum(1 for i in range(n) if is_held_out(i))
    counts = {
        "train": {"identities": n - held, "photos": (n - held) * p},
        "heldout": {"identities": held, "photos": held * p},
    }
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        **config,
        "image_mode": "RGB",
        "counts": counts,
        "files": {
            "train": _MANIFESTS["train"],
            "heldout": _MANIFESTS["heldout"],
            "ground_truth": _GROUND_TRUTH,
        },
        "held_out_rule": "identity id % 10 == 9 (world.is_held_out)",
        "identity_rule": "identity i = Identity.from_seed(i); name world.identity_name(i)",
        "photo_rule": "rng = np.random.default_rng([seed, i, j, 1]); Expression.random, Style.random, Pose.random",
        "record_fields": list(RECORD_FIELDS),
        "ground_truth_fields": list(GROUND_TRUTH_FIELDS),
        "keypoint_order": list(KEYPOINT_NAMES),
        "expression_fields": list(EXPRESSION_FIELDS),
        "identity_fields": list(IDENTITY_FIELDS),
        "style_fields": list(STYLE_CHOICES),
        "pose_fields": list(POSE_RANGES),
    }


def build_collection(
    root: str | os.PathLike,
    num_identities: int = DEFAULT_NUM_IDENTITIES,
    photos_per_identity: int = DEFAULT_PHOTOS_PER_IDENTITY,
    size: int = 64,
    seed: int = 0,
    workers: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    identity_delay_s: float = 0.0,
) -> BuildReport:
    """Build (or finish building) the photo collection under `root`.

    Args:
        root: output folder; must be empty, hold an unfinished build with the same settings (it is resumed), or
            hold the finished collection with the same settings (nothing is done).
        num_identities: identities 0 .. num_identities - 1 (at least 10, so that identity 9 is held out).
        photos_per_identity: photos per identity (2 to 99).
        size: image side in pixels (16 to 512).
        seed: global seed of the photos' expression, style, pose and caption wording (identities do not depend on it).
        workers: processes rendering shards in parallel (1 = in this process).
        shard_size: identities per shard (the unit of crash recovery); the output does not depend on it, but a
            resumed build must use the value it started with.
        identity_delay_s: sleep after each identity; only for testing crash recovery.

    Returns:
        A `BuildReport`.
    """
    check_build_args(num_identities, photos_per_identity, size, seed, workers, shard_size)
    if not isinstance(identity_delay_s, (int, float)) or not identity_delay_s >= 0:
        raise ValueError(f"`identity_delay_s` must be a number >= 0, got {identity_delay_s!r}.")
    t0 = time.perf_counter()
    root = Path(root)
    config = _collection_config(num_identities, photos_per_identity, size, seed)
    build_config = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **config, "shard_size": int(shard_size)}
    num_shards = math.ceil(num_identities / shard_size)
    build_dir = root / _BUILD_DIR

    # 1. a finished collection: nothing to do if it is this one
    meta_path = root / _METADATA
    if meta_path.is_file():
        existing = json.loads(meta_path.read_text())
        found = {k: existing.get(k) for k in config}
        if found != config:
            raise ValueError(
                f"`root` {str(root)!r} already holds a finished collection built with {found}, not the requested "
                f"{config}; choose another output folder or delete it."
            )
        shutil.rmtree(build_dir, ignore_errors=True)  # a build killed while removing its scratch space
        logger.info("%s already holds this collection; nothing to do.", root)
        return BuildReport(root, existing, num_shards, 0, 0, time.perf_counter() - t0, already_complete=True)

    # 2. a new build, or resume an unfinished one with the same settings
    cfg_path = build_dir / "config.json"
    if cfg_path.is_file():
        stored = json.loads(cfg_path.read_text())
        if stored != build_config:
            diff = {k: (stored.get(k), v) for k, v in build_config.items() if stored.get(k) != v}
            raise ValueError(
                f"`root` {str(root)!r} holds an unfinished build with other settings (stored, requested): {diff}; "
                "resume it with its own settings, or delete the folder."
            )
        logger.info("Resuming the unfinished build in %s.", root)
    else:
        if root.exists() and not root.is_dir():
            raise ValueError(f"`root` {str(root)!r} exists and is not a folder.")
        if root.exists() and any(p.name != _BUILD_DIR for p in root.iterdir()):
            raise ValueError(
                f"`root` {str(root)!r} is not empty and holds no collection build; choose an empty or new folder."
            )
        (build_dir / "tmp").mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(cfg_path, (_dumps(build_config) + "\n").encode(), build_dir / "tmp")
    (build_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (build_dir / "shards").mkdir(parents=True, exist_ok=True)

    # 3. render the shards that are not committed yet
    tasks = [
        _ShardTask(
            root=str(root),
            shard_index=k,
            start=k * shard_size,
            stop=min((k + 1) * shard_size, num_identities),
            photos_per_identity=photos_per_identity,
            size=size,
            seed=seed,
            identity_delay_s=float(identity_delay_s),
            parent_pid=None,
        )
        for k in range(num_shards)
    ]
    todo = [t for t in tasks if not _shard_is_complete(root, t)]
    resumed = num_shards - len(todo)
    if resumed:
        logger.info("%d of %d shards were committed by an earlier run; building %d.", resumed, num_shards, len(todo))
    for done, k in enumerate(_run_tasks(todo, workers), start=1):
        elapsed = time.perf_counter() - t0
        logger.info(
            "shard %d committed (%d/%d of this run, %d/%d overall), %.1f s elapsed, ~%.0f s left",
            k, done, len(todo), resumed + done, num_shards, elapsed, elapsed / done * (len(todo) - done),
        )  # fmt: skip

    # 4. assemble the final files from the shards, each written whole and renamed into place; metadata last
    out: dict[str, list[str]] = {"train": [], "heldout": [], "ground_truth": []}
    for t in tasks:
        for entry in _read_shard(_shard_path(root, t.shard_index)):
            out[entry["split"]].append(_dumps(entry["record"]))
            out["ground_truth"].append(_dumps(entry["ground_truth"]))
    metadata = _metadata(config)
    for split in SPLITS:
        if len(out[split]) != metadata["counts"][split]["photos"]:  # internal invariant, not a user error
            raise RuntimeError(f"assembled {len(out[split])} {split} records, expected {metadata['counts'][split]}.")
    tmp_dir = build_dir / "tmp"
    for key, name in (*_MANIFESTS.items(), ("ground_truth", _GROUND_TRUTH)):
        _atomic_write_bytes(root / name, ("\n".join(out[key]) + "\n").encode(), tmp_dir)
    _atomic_write_bytes(meta_path, (json.dumps(metadata, indent=2) + "\n").encode(), tmp_dir)
    shutil.rmtree(build_dir)
    wall = time.perf_counter() - t0
    logger.info("Collection written to %s in %.1f s.", root, wall)
    return BuildReport(root, metadata, num_shards, len(todo), resumed, wall)


def _run_tasks(tasks: list[_ShardTask], workers: int) -> Iterator[int]:
    """Build shards in this process (workers == 1) or in a spawn pool; yield shard indices as they commit."""
    if workers == 1 or len(tasks) <= 1:
        for t in tasks:
            yield _build_shard(t)
        return
    tasks = [dataclasses.replace(t, parent_pid=os.getpid()) for t in tasks]
    # spawn, not fork: the caller may have torch or threads loaded
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(_build_shard, tasks)


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Collection:
    """Read a finished photo collection (the only way method code sees the synthetic world).

    Args:
        root: the folder written by `build_collection` / `synthetic/scripts/build_collection.py`.

    Every manifest line is validated on reading; a bad line raises a ValueError naming the file, the line number
    and what is wrong.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        meta_path = self.root / _METADATA
        if not meta_path.is_file():
            hint = (
                " (an unfinished build: run the builder again to finish it)"
                if (self.root / _BUILD_DIR).exists()
                else ""
            )
            raise FileNotFoundError(
                f"{meta_path} not found: {str(self.root)!r} is not a finished photo collection{hint}. Build one with "
                "`python synthetic/scripts/build_collection.py --out <folder>`."
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e}).") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{meta_path}: not a photo collection (`format` is not {FORMAT_NAME!r}).")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: collection format version {meta.get('version')!r}; this reader reads version "
                f"{FORMAT_VERSION}. Rebuild the collection."
            )
        for key in ("num_identities", "photos_per_identity", "size", "seed", "counts"):
            if key not in meta:
                raise ValueError(f"{meta_path}: missing `{key}`.")
        self.metadata: dict[str, Any] = meta

    @property
    def num_identities(self) -> int:
        return int(self.metadata["num_identities"])

    @property
    def photos_per_identity(self) -> int:
        return int(self.metadata["photos_per_identity"])

    @property
    def size(self) -> int:
        return int(self.metadata["size"])

    def __repr__(self) -> str:
        c = self.metadata["counts"]
        return (
            f"Collection({str(self.root)!r}, train={c['train']['photos']} photos of {c['train']['identities']} "
            f"identities, heldout={c['heldout']['photos']} photos of {c['heldout']['identities']} identities, "
            f"size={self.size})"
        )

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        return split

    def _lines(self, name: str) -> Iterator[tuple[Path, int, Any]]:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the collection at {str(self.root)!r} is incomplete.")
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    raise ValueError(f"{path}: line {lineno}: empty line.")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}.")
                yield path, lineno, obj

    def _check_path_identity(self, obj: dict[str, Any], split: str | None) -> str | None:
        """Return what is wrong with the "path" / "identity" pair of a line, or None."""
        name, rel = obj["identity"], obj["path"]
        if not isinstance(name, str) or not _IDENTITY_RE.match(name):
            return f"`identity` must be a name like 'id00012', got {name!r}"
        if not isinstance(rel, str) or not (m := _PATH_RE.match(rel)):
            return f"`path` must be 'images/<identity>/<photo:02d>.png', got {rel!r}"
        if m.group(1) != name:
            return f"`path` {rel!r} is not in the folder of identity {name!r}"
        if int(m.group(2)) >= self.photos_per_identity:
            return f"`path` {rel!r}: photo index >= photos_per_identity ({self.photos_per_identity})"
        i = int(name[2:])
        if i >= self.num_identities:
            return f"identity {name!r} is not below num_identities ({self.num_identities})"
        if split is not None and is_held_out(i) != (split == "heldout"):
            what = "a held-out identity" if is_held_out(i) else "a training identity"
            return f"identity {name!r} is {what} and may not appear in the {split!r} manifest"
        return None

    def records(self, split: str = "train") -> list[dict[str, Any]]:
        """The manifest of `split` ("train" for method code; "heldout" for evaluation only) as a list of
        {"path", "identity", "caption", "kps"} dicts, in identity then photo order. Paths are relative to the root."""
        name = _MANIFESTS[self._check_split(split)]
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for path, lineno, obj in self._lines(name):
            problem = None
            if sorted(obj) != sorted(RECORD_FIELDS):
                missing = [k for k in RECORD_FIELDS if k not in obj]
                extra = sorted(k for k in obj if k not in RECORD_FIELDS)
                problem = f"fields must be {list(RECORD_FIELDS)} (missing {missing}, unexpected {extra})"
            else:
                problem = self._check_path_identity(obj, split)
            if problem is None:
                caption, kps = obj["caption"], obj["kps"]
                if not isinstance(caption, str) or not caption.strip():
                    problem = f"`caption` must be a non-empty string, got {caption!r}"
                elif (
                    not isinstance(kps, list)
                    or len(kps) != len(KEYPOINT_NAMES)
                    or not all(isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in kps)
                ):
                    problem = f"`kps` must be {len(KEYPOINT_NAMES)} [x, y] pairs of finite numbers, got {kps!r}"
                elif obj["path"] in seen:
                    problem = f"duplicate `path` {obj['path']!r}"
            if problem is not None:
                raise ValueError(f"{path}: line {lineno}: {problem}.")
            seen.add(obj["path"])
            out.append(obj)
        self._check_count(name, len(out), self.metadata["counts"][split]["photos"])
        return out

    def _check_count(self, name: str, found: int, expected: int) -> None:
        if found != expected:
            raise ValueError(
                f"{self.root / name}: {found} lines, but {_METADATA} says {expected} (truncated or edited file?)."
            )

    def identities(self, split: str = "train") -> list[str]:
        """Sorted identity names of `split`."""
        return sorted({r["identity"] for r in self.records(split)})

    def ground_truth(self) -> list[dict[str, Any]]:
        """The renderer's factors of every photo (both splits). EVALUATION AND INSTRUMENT TRAINING ONLY: method code
        (training, IDI) must not read this.

        Each entry: {"path", "identity", "identity_seed", "identity_factors": {IDENTITY_FIELDS...},
        "expression": [floats in EXPRESSION_FIELDS order], "style": {...}, "pose": {...}}; see `factors_of`.
        """
        out: list[dict[str, Any]] = []
        for path, lineno, obj in self._lines(_GROUND_TRUTH):
            problem = None
            if sorted(obj) != sorted(GROUND_TRUTH_FIELDS):
                missing = [k for k in GROUND_TRUTH_FIELDS if k not in obj]
                extra = sorted(k for k in obj if k not in GROUND_TRUTH_FIELDS)
                problem = f"fields must be {list(GROUND_TRUTH_FIELDS)} (missing {missing}, unexpected {extra})"
            else:
                problem = self._check_path_identity(obj, None)
            if problem is None:
                if obj["identity_seed"] != int(obj["identity"][2:]):
                    problem = f"`identity_seed` {obj['identity_seed']!r} does not match identity {obj['identity']!r}"
                else:
                    try:
                        self.factors_of(obj)
                    except (TypeError, ValueError) as e:
                        problem = f"invalid factors ({e})"
            if problem is not None:
                raise ValueError(f"{path}: line {lineno}: {problem}.")
            out.append(obj)
        self._check_count(_GROUND_TRUTH, len(out), self.num_identities * self.photos_per_identity)
        return out

    @staticmethod
    def factors_of(entry: dict[str, Any]) -> tuple[Identity, Expression, Style, Pose]:
        """The renderer dataclasses of one `ground_truth()` entry (evaluation and instrument training only)."""
        if not isinstance(entry.get("identity_factors"), dict):
            raise ValueError("`identity_factors` must be an object")
        if not isinstance(entry.get("style"), dict) or not isinstance(entry.get("pose"), dict):
            raise ValueError("`style` and `pose` must be objects")
        expression = entry.get("expression")
        if not isinstance(expression, list) or not all(_is_number(v) for v in expression):
            raise ValueError(f"`expression` must be a list of {len(EXPRESSION_FIELDS)} numbers")
        return (
            Identity(**entry["identity_factors"]),
            Expression.from_vector(expression),
            Style(**entry["style"]),
            Pose(**entry["pose"]),
        )

    def image_path(self, record: dict[str, Any]) -> Path:
        """Absolute path of a record's image (the record's `path` is checked to be a collection image path)."""
        rel = record.get("path") if isinstance(record, dict) else None
        if not isinstance(rel, str) or not _PATH_RE.match(rel):
            raise ValueError(f"`record['path']` must be 'images/<identity>/<photo:02d>.png', got {rel!r}.")
        return self.root / rel

    def load_image(self, record: dict[str, Any]) -> np.ndarray:
        """The record's image as np.uint8 of shape (size, size, 3)."""
        path = self.image_path(record)
        with Image.open(path) as im:
            if im.mode != "RGB" or im.size != (self.size, self.size):
                raise ValueError(f"{path}: expected a {self.size}x{self.size} RGB image, got {im.size} {im.mode}.")
            return np.asarray(im, dtype=np.uint8).copy()
