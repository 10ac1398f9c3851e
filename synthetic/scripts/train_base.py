"""Train the synthetic world's tiny SDXL-shaped base model from scratch on the photo collection.

    PYTHONPATH=src:synthetic/src python synthetic/scripts/train_base.py --collection data/collection --out runs/base \
        --stage all [--resume]

Stages (each resumable with `--resume`, each reads the collection only, never the renderer):
  vae            AutoencoderKL, 64x64 RGB -> 16x16x8 latents; then the latents of the collection are cached once.
  unet           the two CLIP text encoders + the UNet on the cached latents (caption dropout for CFG, EMA).
  image_encoder  the CLIP vision encoder of the expression branch, by instance contrast on collection photos.
  export         assemble a StableDiffusionXLPipeline folder (fp16 weights) at --export_dir.
  all            the three stages, then export.
The shared code lives in `emojidiff_synthetic.base_model`; see docs/base_model.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from emojidiff_pipeline.train.checkpoints import list_checkpoints
from emojidiff_synthetic import base_model as bm

logger = logging.getLogger("train_base")

# per-stage defaults: (max_steps, batch_size, learning_rate, lr_warmup_steps)
STAGE_DEFAULTS = {
    "vae": (3000, 16, 8e-4, 100),
    "unet": (3000, 64, 5e-4, 200),
    "image_encoder": (600, 64, 5e-4, 60),
}


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--collection", type=Path, required=True, help="photo collection folder (train split is read)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, caches, logs, samples)")
    p.add_argument("--stage", default="all", choices=[*bm.STAGES, "export", "all"])
    p.add_argument("--size", default="default", choices=sorted(bm.PRESETS), help="model size preset")
    p.add_argument("--resume", action="store_true", help="continue each stage from its latest checkpoint")
    p.add_argument("--max_steps", type=int, default=None, help="steps of the selected stage (not with --stage all)")
    p.add_argument("--batch_size", type=int, default=None, help="batch of the selected stage (not with --stage all)")
    p.add_argument("--learning_rate", type=float, default=None, help="peak LR of the selected stage")
    for stage, (steps, batch, _, _) in STAGE_DEFAULTS.items():
        p.add_argument(f"--{stage}_steps", type=int, default=steps)
        p.add_argument(f"--{stage}_batch_size", type=int, default=batch)
    p.add_argument("--checkpointing_steps", type=int, default=100)
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument(
        "--validation_steps", type=int, default=500, help="UNet sample grids every N steps and at the end (0: none)"
    )
    p.add_argument(
        "--init_from",
        type=Path,
        default=None,
        help="UNet stage only: start from a trained base (a pipeline folder, or a UNet stage's final/) whose UNet may "
        "lack the new layout's extra attention blocks (they start as no-ops)",
    )
    p.add_argument("--ema_decay", type=float, default=0.999, help="UNet/text-encoder EMA (0 disables)")
    p.add_argument("--caption_dropout", type=float, default=0.1)
    p.add_argument("--snr_gamma", type=float, default=5.0, help="Min-SNR weighting (0 disables)")
    p.add_argument("--vae_face_weight", type=float, default=4.0, help="extra VAE loss weight near the keypoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training photos (debugging)")
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument(
        "--export_dir", type=Path, default=bm.ASSET_DIR, help="where --stage export/all writes the pipeline"
    )
    p.add_argument("--export_dtype", default="float16", choices=["float16", "float32"])
    p.add_argument(
        "--num_threads",
        default="auto",
        help="torch CPU threads, or 'auto' (all cores when the machine is idle, 1 while other jobs load it; "
        "exact resume needs a fixed number)",
    )
    args = p.parse_args(input_args)

    # sanity checks
    if args.stage == "all" and any(v is not None for v in (args.max_steps, args.batch_size, args.learning_rate)):
        raise ValueError(
            "`--max_steps`, `--batch_size` and `--learning_rate` apply to one stage; with `--stage all` use "
            "`--vae_steps`, `--unet_steps`, `--image_encoder_steps` and the matching `--<stage>_batch_size`."
        )
    if args.stage == "export" and any(v is not None for v in (args.max_steps, args.batch_size, args.learning_rate)):
        raise ValueError("`--stage export` trains nothing: drop `--max_steps`, `--batch_size`, `--learning_rate`.")
    for name in (
        "max_steps",
        "batch_size",
        "limit",
        *(f"{s}_steps" for s in bm.STAGES),
        *(f"{s}_batch_size" for s in bm.STAGES),
    ):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {v}.")
    for name in ("checkpointing_steps", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    if args.validation_steps < 0:
        raise ValueError(f"`--validation_steps` must be >= 0, got {args.validation_steps}.")
    if args.init_from is not None and args.stage != "unet":
        raise ValueError(f"`--init_from` starts the UNet stage only: use it with `--stage unet`, got {args.stage!r}.")
    if args.init_from is not None and not (args.init_from / "unet").is_dir():
        raise FileNotFoundError(f"`--init_from` {str(args.init_from)!r} has no unet folder.")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise ValueError(f"`--learning_rate` must be > 0, got {args.learning_rate}.")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"`--ema_decay` must be in [0, 1), got {args.ema_decay}.")
    if args.vae_face_weight < 0:
        raise ValueError(f"`--vae_face_weight` must be >= 0, got {args.vae_face_weight}.")
    if not 0.0 <= args.caption_dropout < 1.0:
        raise ValueError(f"`--caption_dropout` must be in [0, 1), got {args.caption_dropout}.")
    if args.num_threads != "auto":
        try:
            args.num_threads = int(args.num_threads)
        except ValueError:
            raise ValueError(f"`--num_threads` must be 'auto' or a positive int, got {args.num_threads!r}.") from None
        if args.num_threads < 1:
            raise ValueError(f"`--num_threads` must be 'auto' or a positive int, got {args.num_threads}.")
    if args.stage != "export" and not (args.collection / "collection.json").is_file():
        raise FileNotFoundError(
            f"`--collection` {str(args.collection)!r} is not a finished photo collection (no collection.json); build "
            "it with `python synthetic/scripts/build_collection.py --out data/collection`."
        )
    return args


def stage_config(args: argparse.Namespace, stage: str) -> bm.StageConfig:
    steps, batch, lr, warmup = STAGE_DEFAULTS[stage]
    single = args.stage == stage
    max_steps = args.max_steps if single and args.max_steps is not None else getattr(args, f"{stage}_steps")
    return bm.StageConfig(
        max_steps=max_steps,
        batch_size=args.batch_size if single and args.batch_size is not None else getattr(args, f"{stage}_batch_size"),
        learning_rate=args.learning_rate if single and args.learning_rate is not None else lr,
        lr_warmup_steps=min(warmup, max(1, max_steps // 10)),
        seed=args.seed,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        log_every=args.log_every,
        ema_decay=args.ema_decay if stage == "unet" else 0.0,
        caption_dropout=args.caption_dropout,
        snr_gamma=args.snr_gamma,
        face_weight=args.vae_face_weight if stage == "vae" else 0.0,
        validation_steps=args.validation_steps,
    )


class AutoThreads:
    """A step callback: all cores while the machine is otherwise idle, one thread while other jobs load it
    (oversubscribed OpenMP threads spin at barriers and run several times slower than one thread). Checked every
    30 s; ``torch.set_num_threads`` acts on the calling thread, so this runs in the training loop's thread."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s, self.last = interval_s, 0.0
        self.cores = os.cpu_count() or 1

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval_s:
            return
        self.last = now
        mine = torch.get_num_threads()
        others = os.getloadavg()[0] - mine
        want = self.cores if others < 0.5 else 1
        if want != mine:
            torch.set_num_threads(want)
            logger.info("load %.1f: now %d torch threads", os.getloadavg()[0], want)


def _record_time(run_dir: Path, stage: str, seconds: float, steps_done: int) -> None:
    path = run_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    entry = timings.setdefault(stage, {"wall_clock_s": 0.0, "sessions": 0})
    entry["wall_clock_s"] = round(entry["wall_clock_s"] + seconds, 1)
    entry["sessions"] += 1
    entry["steps_this_session"] = steps_done
    path.write_text(json.dumps(timings, indent=1))


def _run_stage(
    args: argparse.Namespace, stage: str, config: bm.BaseModelConfig, data_holder: dict, callback: AutoThreads | None
) -> None:
    stage_dir = args.out / stage
    cfg = stage_config(args, stage)
    if (stage_dir / "final").is_dir():
        if not args.resume:
            raise FileExistsError(
                f"Stage {stage} already finished in {stage_dir}; pass `--resume` to skip it (or to extend it with "
                "more steps), or choose a new `--out`."
            )
        found = list_checkpoints(stage_dir)
        if not found or int(found[-1].name.split("-")[1]) >= cfg.max_steps:
            logger.info("Stage %s already finished (%s): skipped.", stage, stage_dir / "final")
            return
        logger.info("Stage %s: extending %s to %d steps.", stage, found[-1].name, cfg.max_steps)
    if "data" not in data_holder:
        t0 = time.time()
        data_holder["data"] = bm.load_collection_split(args.collection, "train", limit=args.limit)
        logger.info("Read %d training photos in %.1f s.", len(data_holder["data"]), time.time() - t0)
    data = data_holder["data"]
    logger.info("Stage %s: %s", stage, dataclasses.asdict(cfg))
    t0 = time.time()
    if stage == "vae":
        losses = bm.train_vae(data, config, cfg, stage_dir, resume=args.resume, step_callback=callback)
    elif stage == "unet":
        vae_dir = args.out / "vae" / "final"
        if not vae_dir.is_dir():
            raise FileNotFoundError(f"The UNet stage needs a trained VAE at {vae_dir}: run `--stage vae` first.")
        latents = bm.load_or_encode_latents(vae_dir, data, args.out / "cache")
        losses = bm.train_unet(
            data,
            latents,
            vae_dir,
            config,
            cfg,
            stage_dir,
            resume=args.resume,
            step_callback=callback,
            init_from=args.init_from,
        )
    else:
        losses = bm.train_image_encoder(data, config, cfg, stage_dir, resume=args.resume, step_callback=callback)
    _record_time(args.out, stage, time.time() - t0, len(losses))


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    threads_before = torch.get_num_threads()
    callback = None
    if args.num_threads == "auto":
        callback = AutoThreads()
    else:
        torch.set_num_threads(args.num_threads)
    try:
        config = bm.PRESETS[args.size]
        args.out.mkdir(parents=True, exist_ok=True)
        if args.stage != "export":
            bm.save_base_config(args.out, config)
        with open(args.out / "commands.txt", "a") as f:
            command = "PYTHONPATH=src:synthetic/src python synthetic/scripts/train_base.py " + shlex.join(sys.argv[1:])
            f.write(command + "\n")
        stages = bm.STAGES if args.stage == "all" else (() if args.stage == "export" else (args.stage,))
        data_holder: dict = {}
        for stage in stages:
            _run_stage(args, stage, config, data_holder, callback)
        if args.stage in ("all", "export"):
            dtype = torch.float16 if args.export_dtype == "float16" else torch.float32
            bm.export_pipeline(args.out, args.export_dir, dtype=dtype)
            logger.info("Exported the pipeline to %s (%.1f MB).", args.export_dir, bm.folder_size_mb(args.export_dir))
    finally:
        torch.set_num_threads(threads_before)


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        sys.exit(f"error: {e}")
