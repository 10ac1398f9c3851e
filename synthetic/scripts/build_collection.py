"""Build the synthetic photo collection (identities x photos, captions, keypoints, held-out split, ground truth).

    PYTHONPATH=src:synthetic/src python synthetic/scripts/build_collection.py --out data/collection \
        [--num_identities 2000] [--photos_per_identity 8] [--size 64] [--seed 0] [--workers 2]

Resumable: run the same command again after an interruption and it finishes the build (same bytes as an
uninterrupted build). Writes a summary with the command and the wall-clock to docs/collection.md (`--doc`).
The layout and the reader live in `emojidiff_synthetic.collection`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
from collections import Counter
from pathlib import Path

from emojidiff_synthetic.collection import (
    DEFAULT_SHARD_SIZE,
    SPLITS,
    BuildReport,
    Collection,
    build_collection,
    check_build_args,
)
from emojidiff_synthetic.world import DEFAULT_NUM_IDENTITIES, DEFAULT_PHOTOS_PER_IDENTITY

logger = logging.getLogger("build_collection")

_DEFAULT_DOC = Path(__file__).resolve().parents[2] / "docs" / "collection.md"
_EXPRESSION_WORDS = (
    "smiling",
    "laughing",
    "frowning",
    "open mouth",
    "pursed lips",
    "winking",
    "eyes closed",
    "raised eyebrows",
    "furrowed brows",
)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty, or an unfinished build)")
    p.add_argument("--num_identities", type=int, default=DEFAULT_NUM_IDENTITIES, help="at least 10")
    p.add_argument("--photos_per_identity", type=int, default=DEFAULT_PHOTOS_PER_IDENTITY, help="2 to 99")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (64 or 128 in this project)")
    p.add_argument("--seed", type=int, default=0, help="seed of expressions, styles, poses and caption wording")
    p.add_argument("--workers", type=int, default=2, help="rendering processes (1 = this process)")
    p.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_SIZE, help="identities per crash-safe shard")
    p.add_argument("--doc", default=str(_DEFAULT_DOC), help="markdown summary to write ('' for none)")
    p.add_argument("--identity_delay_s", type=float, default=0.0, help=argparse.SUPPRESS)  # crash-recovery tests
    args = p.parse_args(input_args)
    try:
        check_build_args(
            args.num_identities, args.photos_per_identity, args.size, args.seed, args.workers, args.shard_size
        )
    except ValueError as e:
        msg = str(e)
        for name in ("num_identities", "photos_per_identity", "size", "seed", "workers", "shard_size"):
            msg = msg.replace(f"`{name}`", f"--{name}")  # name the flag as typed
        p.error(msg)
    if args.identity_delay_s < 0:
        p.error(f"--identity_delay_s must be >= 0, got {args.identity_delay_s}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {str(args.out)!r} exists and is not a folder")
    return args


def _command() -> str:
    return " ".join(["python", *(shlex.quote(a) for a in sys.argv)])


def _spread(items: list, n: int) -> list:
    """`n` items spread over the list, each at a different offset (so not all photo 00)."""
    step = max(1, len(items) // n)
    return [items[min(k * step + k, len(items) - 1)] for k in range(min(n, len(items)))]


def write_doc(report: BuildReport, collection: Collection, path: Path, command: str, workers: int) -> None:
    """Summary of a finished build: counts, settings, caption statistics, the command and its wall-clock."""
    meta = report.metadata
    counts = meta["counts"]
    records = {split: collection.records(split) for split in SPLITS}
    captions = [r["caption"] for split in SPLITS for r in records[split]]
    with_expression = sum(any(w in c for w in _EXPRESSION_WORDS) for c in captions)
    word_counts = Counter(w for c in captions for w in _EXPRESSION_WORDS if w in c)
    image_bytes = sum((collection.root / r["path"]).stat().st_size for split in SPLITS for r in records[split])
    resumed = (
        f" This run resumed an interrupted build: {report.shards_resumed} of {report.shards_total} shards were "
        "already committed, so the wall-clock covers the remaining shards only."
        if report.shards_resumed
        else ""
    )
    lines = [
        "# Photo collection",
        "",
        "The synthetic proving ground's stand-in for a web photo collection (DESIGN.md): written by "
        "`synthetic/scripts/build_collection.py`, read with `emojidiff_synthetic.collection.Collection`. "
        "Method code reads `train.jsonl` and the images only; `ground_truth.jsonl` is for evaluation and instrument "
        "training, `heldout.jsonl` for evaluation.",
        "",
        f"Command: `{command}`",
        "",
        f"Wall-clock: {report.wall_clock_s:.1f} s ({report.shards_built} shards built in this run with "
        f"{workers} worker(s)).{resumed} Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs (shared with other jobs).",
        "",
        "| split | identities | photos | who reads it |",
        "|---|---:|---:|---|",
        f"| train (`train.jsonl`) | {counts['train']['identities']} | {counts['train']['photos']} | method code |",
        f"| heldout (`heldout.jsonl`) | {counts['heldout']['identities']} | {counts['heldout']['photos']} "
        "| evaluation only |",
        f"| all (`ground_truth.jsonl`) | {meta['num_identities']} | "
        f"{meta['num_identities'] * meta['photos_per_identity']} | evaluation and instrument training only |",
        "",
        f"Settings: {meta['photos_per_identity']} photos per identity, {meta['size']}x{meta['size']} RGB PNG, "
        f"seed {meta['seed']}; held out: {meta['held_out_rule']}. Images: {image_bytes / 2**20:.1f} MiB.",
        "",
        f"Captions: {len(captions)}, mean {sum(len(c.split()) for c in captions) / len(captions):.1f} words; "
        f"{100.0 * with_expression / len(captions):.1f}% carry a coarse expression word "
        f"({', '.join(f'{w} {n}' for w, n in word_counts.most_common())}).",
        "",
        "Examples (train):",
        "",
        *(f"- `{r['path']}`: {r['caption']}" for r in _spread(records["train"], 5)),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(args: argparse.Namespace) -> BuildReport:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = build_collection(
        args.out,
        num_identities=args.num_identities,
        photos_per_identity=args.photos_per_identity,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        shard_size=args.shard_size,
        identity_delay_s=args.identity_delay_s,
    )
    collection = Collection(args.out)  # reads back and validates every manifest line
    if report.already_complete:
        logger.info("Nothing built; %s left as it is.", args.doc or "the summary")
    elif args.doc:
        write_doc(report, collection, Path(args.doc), _command(), args.workers)
        logger.info("Summary written to %s", args.doc)
    done = "already complete" if report.already_complete else f"built in {report.wall_clock_s:.1f} s"
    print(f"{collection!r} {done}")
    return report


if __name__ == "__main__":
    main(parse_args())
