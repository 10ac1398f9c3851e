"""Building the collection: shards rendered (in parallel if asked) and committed atomically, then assembled into
the final files; an interrupted build resumes to the same bytes."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..renderer import (
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
from ..world import DEFAULT_NUM_IDENTITIES, DEFAULT_PHOTOS_PER_IDENTITY, HELD_OUT_MODULUS, identity_name, is_held_out
from .captions import make_caption
from .layout import (
    BUILD_DIR,
    CAPTION_STREAM,
    DEFAULT_SHARD_SIZE,
    FORMAT_NAME,
    FORMAT_VERSION,
    GROUND_TRUTH,
    GROUND_TRUTH_FIELDS,
    KEYPOINT_NAMES,
    MANIFESTS,
    MAX_IDENTITIES,
    MAX_PHOTOS_PER_IDENTITY,
    METADATA,
    PHOTO_STREAM,
    RECORD_FIELDS,
    SPLITS,
)

logger = logging.getLogger(__name__)


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
    rng = np.random.default_rng([seed, identity_id, photo_index, PHOTO_STREAM])
    expression = Expression.random(rng)
    style = Style.random(rng)
    pose = Pose.random(rng)
    result = render(identity, expression, style, pose, size=size)
    caption_rng = np.random.default_rng([seed, identity_id, photo_index, CAPTION_STREAM])
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
    return root / BUILD_DIR / "shards" / f"shard_{k:05d}.jsonl"


def _build_shard(task: _ShardTask) -> int:
    """Render one shard's images, then commit its manifest lines with one atomic rename. Returns the shard index."""
    root = Path(task.root)
    tmp_dir = root / BUILD_DIR / "tmp"
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
            "train": MANIFESTS["train"],
            "heldout": MANIFESTS["heldout"],
            "ground_truth": GROUND_TRUTH,
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
    build_dir = root / BUILD_DIR

    # 1. a finished collection: nothing to do if it is this one
    meta_path = root / METADATA
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
        if root.exists() and any(p.name != BUILD_DIR for p in root.iterdir()):
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
            k,
            done,
            len(todo),
            resumed + done,
            num_shards,
            elapsed,
            elapsed / done * (len(todo) - done),
        )

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
    for key, name in (*MANIFESTS.items(), ("ground_truth", GROUND_TRUTH)):
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
