"""Train, evaluate and export the synthetic world's instruments (identity encoders, expression estimators, style).

    python synthetic/scripts/train_instruments.py \
        [--which identity_train,identity_eval,expression_train,expression_eval,style] [--out <asset folder>] \
        [--work_dir runs/instruments] [--docs_dir docs] [--identity_steps N] ...

With no options it rebuilds the shipped set: each instrument's recipe (architecture, seed, training identities,
steps, mirroring) is in ``emojidiff_synthetic.instruments.recipes.INSTRUMENTS``; options such as ``--identities``
or ``--expression_steps`` override it for every selected instrument. The code is in
``emojidiff_synthetic.instruments`` (``run``, ``training``, ``export``, ``evaluation``, ``report``).

Each instrument trains on renders of its side's identities (train side: ``Identity.from_seed(TRAIN_SIDE_SEED_BASE +
k)``, eval side: ``EVAL_SIDE_SEED_BASE + k``; the style classifier uses the eval side's renders), is evaluated on the
collection's held-out identities (``world.is_held_out(i)``, ``i < --num_collection_identities``) with random
expression, style and pose, and is exported to ``--out`` (safetensors, fp16; the identity encoders also as
insightface-loadable ONNX). The reports go to ``<docs_dir>/instruments.json`` and ``instruments.md`` (entries of
instruments not named in ``--which`` are kept).

Resumable: every ``--checkpoint_minutes`` (and at the end) each instrument writes ``<work_dir>/<name>/checkpoint.*``
(safetensors: model, training heads and optimizer tensors; JSON: step, wall-clock, optimizer hyperparameters). A
rerun with the same arguments continues from the saved step; rendered data sets are cached in ``<work_dir>/data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from pathlib import Path

from emojidiff_synthetic.instruments.files import ASSET_DIR
from emojidiff_synthetic.instruments.recipes import INSTRUMENTS, RunConfig
from emojidiff_synthetic.instruments.render_sets import held_out_identity_ids
from emojidiff_synthetic.instruments.run import rewrite_report, run_instruments

REPO_ROOT = Path(__file__).resolve().parents[2]


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--which", default=",".join(INSTRUMENTS), help=f"comma-separated subset of {list(INSTRUMENTS)}")
    p.add_argument("--out", default=str(ASSET_DIR), help="folder for the exported instruments")
    p.add_argument("--work_dir", default=str(REPO_ROOT / "runs" / "instruments"), help="checkpoints and data cache")
    p.add_argument("--docs_dir", default=str(REPO_ROOT / "docs"), help="where instruments.md/.json are written")
    p.add_argument("--identities", type=int, default=None, help="training identities (default: per instrument)")
    p.add_argument("--photos_per_identity", type=int, default=8, help="training renders per identity")
    p.add_argument("--num_collection_identities", type=int, default=2000, help="held-out ids are taken below this")
    p.add_argument("--eval_photos_per_identity", type=int, default=10)
    p.add_argument("--identity_steps", type=int, default=None, help="default: per instrument (INSTRUMENTS)")
    p.add_argument("--expression_steps", type=int, default=None, help="default: per instrument")
    p.add_argument("--style_steps", type=int, default=None, help="default: per instrument")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=3e-3)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--warmup_steps", type=int, default=50)
    p.add_argument("--margin", type=float, default=0.3, help="CosFace margin of the identity loss")
    p.add_argument("--scale", type=float, default=30.0, help="CosFace scale of the identity loss")
    p.add_argument("--aux_weight", type=float, default=1.0, help="weight of the identity-factor regression loss")
    p.add_argument(
        "--identity_hflip", type=float, default=None, help="probability of mirroring an identity training crop"
    )
    p.add_argument(
        "--gaze_weight", type=float, default=3.0, help="expression loss weight of gaze where an iris is visible"
    )
    p.add_argument("--keypoint_jitter", type=float, default=0.3, help="px std on keypoints of training crops")
    p.add_argument("--checkpoint_minutes", type=float, default=3.0, help="0: checkpoint after every step")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--report_only", action="store_true", help="only rewrite instruments.md from instruments.json")
    args = p.parse_args(input_args)
    args.argv = list(sys.argv[1:] if input_args is None else input_args)
    args.which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = [w for w in args.which if w not in INSTRUMENTS]
    if unknown or not args.which:
        p.error(f"--which: unknown instrument(s) {unknown}; choose from {list(INSTRUMENTS)}")
    for name in (
        "identities",
        "photos_per_identity",
        "eval_photos_per_identity",
        "batch_size",
        "threads",
        "identity_steps",
        "expression_steps",
        "style_steps",
        "num_collection_identities",
    ):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.photos_per_identity < 2 or args.eval_photos_per_identity < 2:
        p.error("--photos_per_identity and --eval_photos_per_identity must be >= 2 (genuine pairs need two photos)")
    if not held_out_identity_ids(args.num_collection_identities):
        p.error(f"--num_collection_identities {args.num_collection_identities} has no held-out identity")
    return args


def main(args: argparse.Namespace) -> dict:
    if args.report_only:
        return rewrite_report(args.docs_dir)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    command = " ".join(["python synthetic/scripts/train_instruments.py", *(shlex.quote(a) for a in args.argv)])
    return run_instruments(config, command, root=REPO_ROOT)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(parse_args())
