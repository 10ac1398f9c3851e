"""Train the synthetic world's keypoint detectors (train side and eval side) and report their accuracy.

    PYTHONPATH=src:synthetic/src python synthetic/scripts/train_keypoints.py

Each side renders its own training set (identity seeds SIDE_SEED_BASES[side] + k, disjoint from the collection and
from the other side; ~10 % face-free negatives), trains a `KeypointNet` with mild blur / noise / colour
augmentation, and saves fp16 safetensors to synthetic/src/emojidiff_synthetic/assets/keypoints/<side>.safetensors.
Both detectors are then evaluated on the collection's held-out identities (Identity.from_seed(i), i < 2000,
world.is_held_out(i)) and the results go to docs/keypoints.md and docs/keypoints.json.

Resumable: <checkpoint_dir>/<side>/ is a checkpoint in the library's format (model/, optimizer.safetensors,
state.json; emojidiff_pipeline.train.checkpoints), written atomically every --checkpoint_minutes; rerunning the
same command continues where it stopped (per-step RNG is stateless, so a resumed run draws the same batches as an
uninterrupted one). A finished side is only re-evaluated.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
logger = logging.getLogger("train_keypoints")

SIDE_SEED_OFFSET = {"train": 0, "eval": 7919}  # the two sides train from different seeds
EVAL_SEED = 424242  # held-out evaluation renders (expressions, styles, poses) and negatives
TARGET_MEAN_PX, TARGET_P95_PX = 0.75, 1.5


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sides", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    p.add_argument("--output_dir", default=str(REPO / "synthetic/src/emojidiff_synthetic/assets/keypoints"))
    p.add_argument("--checkpoint_dir", default=str(REPO / "runs/keypoints"))
    p.add_argument("--docs_dir", default=str(REPO / "docs"), help="where keypoints.md / .json go ('' to skip)")
    p.add_argument("--num_renders", type=int, default=20000, help="training renders per side (incl. negatives)")
    p.add_argument("--max_steps", type=int, default=2000)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=3e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--warmup_steps", type=int, default=100)
    p.add_argument("--negative_fraction", type=float, default=0.1)
    p.add_argument("--wide_pose_prob", type=float, default=0.25, help="share of poses from the full POSE_RANGES")
    p.add_argument("--flip_prob", type=float, default=0.0)
    p.add_argument("--widths", type=int, nargs=4, default=[16, 24, 32, 64])
    p.add_argument("--heatmap_stride", type=int, default=4, choices=[2, 4])
    p.add_argument("--checkpoint_minutes", type=float, default=3.0)
    p.add_argument(
        "--stop_after_steps", type=int, default=None, help="checkpoint and stop after this many steps of this run"
    )
    p.add_argument("--eval_num_identities", type=int, default=2000, help="collection size; held-out ids are < this")
    p.add_argument("--eval_renders_per_identity", type=int, default=5)
    p.add_argument("--eval_negatives", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--log_every", type=int, default=100)
    args = p.parse_args(input_args)
    for name in ("num_renders", "max_steps", "batch_size", "eval_num_identities", "num_threads", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup_steps", "eval_renders_per_identity", "eval_negatives"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0.0 <= args.negative_fraction < 1.0:
        p.error(f"--negative_fraction must be in [0, 1), got {args.negative_fraction}")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        p.error(f"--stop_after_steps must be >= 1, got {args.stop_after_steps}")
    if args.checkpoint_minutes <= 0:
        p.error(f"--checkpoint_minutes must be > 0, got {args.checkpoint_minutes}")
    if len(set(args.sides)) != len(args.sides):
        p.error(f"--sides has duplicates: {args.sides}")
    argv = sys.argv[1:] if input_args is None else list(input_args)
    command = "PYTHONPATH=src:synthetic/src python synthetic/scripts/train_keypoints.py"
    args.command = command + "".join(" " + shlex.quote(a) for a in argv)
    return args


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: the library's format (emojidiff_pipeline.train.checkpoints), written atomically
# ----------------------------------------------------------------------------------------------------------------

# settings that must match for a checkpoint to be resumed
_RESUME_KEYS = (
    "num_renders",
    "max_steps",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "negative_fraction",
    "wide_pose_prob",
    "flip_prob",
    "widths",
    "heatmap_stride",
    "seed",
)


def _load_checkpoint(ckpt_dir: Path, model, optimizer, settings: dict) -> dict | None:
    """The training state of the checkpoint in `ckpt_dir` (weights and optimizer restored), None if there is none;
    refuses a checkpoint trained with other `settings`."""
    from emojidiff_pipeline.train.checkpoints import STATE_FILE, load_checkpoint

    if not (ckpt_dir / STATE_FILE).is_file():
        return None
    state = json.loads((ckpt_dir / STATE_FILE).read_text())["extra"]
    if state["settings"] != settings:
        changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        raise ValueError(
            f"{ckpt_dir} holds a checkpoint trained with different settings ({changed}); use another "
            "--checkpoint_dir or delete it to start over."
        )
    return load_checkpoint(ckpt_dir, {"model": model}, optimizer).extra


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def _lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    t = (step - args.warmup_steps) / max(args.max_steps - args.warmup_steps, 1)
    return args.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def train_side(side: str, args: argparse.Namespace) -> dict:
    import torch

    from emojidiff_pipeline.train.checkpoints import save_checkpoint
    from emojidiff_pipeline.train.diffusion import step_generator
    from emojidiff_synthetic.keypoints import (
        KeypointNet,
        augment_batch,
        images_to_tensor,
        keypoint_loss,
        render_keypoint_dataset,
        save_keypoint_net,
    )

    seed = args.seed + SIDE_SEED_OFFSET[side]
    settings = {k: getattr(args, k) for k in _RESUME_KEYS}
    ckpt_dir = Path(args.checkpoint_dir) / side
    torch.manual_seed(seed)  # initial weights
    model = KeypointNet(args.widths, args.heatmap_stride).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    state = _load_checkpoint(ckpt_dir, model, optimizer, settings) or {
        "settings": settings,
        "step": 0,
        "train_seconds": 0.0,
        "render_seconds": 0.0,
        "history": [],
    }
    if state["step"] >= args.max_steps:
        logger.info("[%s] already trained (%d steps); skipping to evaluation", side, state["step"])
        return state
    if state["step"]:
        logger.info("[%s] resuming from step %d", side, state["step"])

    # 1. render the training set (deterministic in the seed, so a resumed run re-renders the same data)
    t0 = time.perf_counter()
    data = render_keypoint_dataset(
        side, args.num_renders, seed=seed, negative_fraction=args.negative_fraction, wide_pose_prob=args.wide_pose_prob
    )
    state["render_seconds"] += time.perf_counter() - t0
    logger.info("[%s] rendered %d images in %.0f s", side, args.num_renders, time.perf_counter() - t0)
    images = torch.from_numpy(data["images"])  # (N, 64, 64, 3) uint8
    keypoints = torch.from_numpy(data["keypoints"])  # (N, 5, 2)
    has_face = torch.from_numpy(data["has_face"])  # (N,)

    # 2. train
    model.train()
    t_start, t_last_ckpt = time.perf_counter(), time.perf_counter()
    train_seconds0, running = state["train_seconds"], []
    last_step = args.max_steps
    if args.stop_after_steps is not None:
        last_step = min(args.max_steps, state["step"] + args.stop_after_steps)
    for step in range(state["step"], last_step):
        gen = step_generator(seed, step)  # stateless per-step randomness
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
        x, kps = augment_batch(images_to_tensor(images[idx].numpy()), keypoints[idx], gen, flip_prob=args.flip_prob)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, args)
        pred, face_logits = model(x)
        loss, parts = keypoint_loss(pred, face_logits, kps, has_face[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(parts["kps_l1"])
        state["step"] = step + 1
        state["train_seconds"] = train_seconds0 + time.perf_counter() - t_start
        if state["step"] % args.log_every == 0 or state["step"] == args.max_steps:
            mean_l1 = float(np.mean(running))
            state["history"].append({"step": state["step"], "kps_l1": mean_l1, "face_bce": parts["face_bce"]})
            logger.info(
                "[%s] step %d/%d  kps L1 %.3f px  face BCE %.4f  lr %.2e  %.0f s",
                side,
                state["step"],
                args.max_steps,
                mean_l1,
                parts["face_bce"],
                _lr_at(step, args),
                state["train_seconds"],
            )
            running = []
        if time.perf_counter() - t_last_ckpt > 60.0 * args.checkpoint_minutes or state["step"] == last_step:
            save_checkpoint(ckpt_dir, {"model": model}, optimizer, state["step"], state)
            t_last_ckpt = time.perf_counter()
            logger.info("[%s] checkpoint at step %d", side, state["step"])

    if state["step"] < args.max_steps:
        logger.info("[%s] stopped at step %d (--stop_after_steps); rerun to resume", side, state["step"])
        return state

    # 3. ship fp16 weights
    out = save_keypoint_net(
        model.eval(),
        Path(args.output_dir) / f"{side}.safetensors",
        {"side": side, "steps": state["step"], "training_renders": args.num_renders, "seed": seed},
    )
    logger.info("[%s] wrote %s (%.0f kB)", side, out, out.stat().st_size / 1024)
    return state


# ----------------------------------------------------------------------------------------------------------------
# Evaluation on the collection's held-out identities
# ----------------------------------------------------------------------------------------------------------------


def held_out_set(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Renders of held-out identities at 64 px (and the first render per identity at 128 px), plus negatives."""
    from PIL import Image, ImageFilter

    from emojidiff_synthetic import Expression, Identity, Pose, Style, render
    from emojidiff_synthetic.keypoints import _negative_image
    from emojidiff_synthetic.world import is_held_out

    ids = [i for i in range(args.eval_num_identities) if is_held_out(i)]
    im64, kp64, im128, kp128 = [], [], [], []
    for i in ids:
        for j in range(args.eval_renders_per_identity):
            rng = np.random.default_rng([EVAL_SEED, 0, i, j])
            factors = (Identity.from_seed(i), Expression.random(rng), Style.random(rng), Pose.random(rng))
            r = render(*factors, size=64)
            im64.append(r.image)
            kp64.append(r.keypoints)
            if j == 0:
                r = render(*factors, size=128)
                im128.append(r.image)
                kp128.append(r.keypoints)
    blurred = [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.0))) for im in im64]
    neg_rng = np.random.default_rng([EVAL_SEED, 1])
    negatives = [_negative_image(neg_rng, 64) for _ in range(args.eval_negatives)]
    return {
        "ids": np.array(ids),
        "images": np.stack(im64) if im64 else np.zeros((0, 64, 64, 3), np.uint8),
        "keypoints": np.stack(kp64) if kp64 else np.zeros((0, 5, 2), np.float32),
        "images_blurred": np.stack(blurred) if blurred else np.zeros((0, 64, 64, 3), np.uint8),
        "images128": np.stack(im128) if im128 else np.zeros((0, 128, 128, 3), np.uint8),
        "keypoints128": np.stack(kp128) if kp128 else np.zeros((0, 5, 2), np.float32),
        "negatives": np.stack(negatives) if negatives else np.zeros((0, 64, 64, 3), np.uint8),
    }


def evaluate(detector, data: dict[str, np.ndarray]) -> dict:
    from emojidiff_synthetic.keypoints import KEYPOINT_NAMES, keypoint_errors

    if len(data["images"]) == 0:
        raise ValueError("No held-out identities below --eval_num_identities; raise it or the renders per identity.")

    def stats(err: np.ndarray) -> dict:
        return {"mean_px": float(err.mean()), "p95_px": float(np.percentile(err, 95)), "max_px": float(err.max())}

    kps, scores = detector.predict(data["images"])
    err = keypoint_errors(kps, data["keypoints"])  # (N, 5)
    out = {"held_out_64px": stats(err)}
    out["held_out_64px"]["per_keypoint_mean_px"] = dict(zip(KEYPOINT_NAMES, err.mean(0).round(4).tolist()))
    out["held_out_64px_blur1"] = stats(keypoint_errors(detector.predict(data["images_blurred"])[0], data["keypoints"]))
    err128 = keypoint_errors(detector.predict(data["images128"])[0], data["keypoints128"]) / 2.0
    out["held_out_128px_in_64px_units"] = stats(err128)
    neg_scores = detector.predict(data["negatives"])[1] if len(data["negatives"]) else np.zeros(0)
    correct = int((scores >= 0.5).sum() + (neg_scores < 0.5).sum())
    out["face_present"] = {
        "accuracy": correct / (len(scores) + len(neg_scores)),
        "recall_on_faces": float((scores >= 0.5).mean()),
        "rejection_on_negatives": float((neg_scores < 0.5).mean()) if len(neg_scores) else None,
        "faces": len(scores),
        "negatives": len(neg_scores),
    }
    out["meets_targets"] = bool(
        out["held_out_64px"]["mean_px"] <= TARGET_MEAN_PX and out["held_out_64px"]["p95_px"] <= TARGET_P95_PX
    )
    return out


def write_docs(report: dict, docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / "keypoints.json").write_text(json.dumps(report, indent=2) + "\n")
    ev = report["evaluation"]
    lines = [
        "# Keypoint detectors of the synthetic world",
        "",
        "`emojidiff_synthetic.keypoints.load_keypoint_detector(side)` returns a small CNN (heatmaps + "
        "soft-argmax, face-present head) that gives the five insightface-order keypoints of a 64x64 (or 128x128) "
        "emoji portrait; it is a `FaceAnalyzer.from_models(detector=...)` callable. The train side and the eval "
        "side are trained on disjoint identity seed ranges and different seeds.",
        "",
        f"Held-out evaluation: {ev['num_identities']} held-out identities of the collection (`Identity.from_seed(i)`, "
        f"i < {ev['collection_size']}, `world.is_held_out(i)`), {ev['renders_per_identity']} renders each with random "
        "expression, style and pose (`Pose.random`); errors are Euclidean distances in pixels at 64x64, over all "
        f"five keypoints. Face-present accuracy adds {ev['negatives']} face-free images (backgrounds, flat colours, "
        "noise, colour blobs). Targets: mean <= 0.75 px, p95 <= 1.5 px.",
        "",
        "| side | mean px | p95 px | max px | blur sigma 1: mean / p95 | 128 px input: mean / p95 (64 px units) "
        "| face-present acc. | meets targets | training renders | steps | train wall-clock |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for side, r in report["sides"].items():
        m, b, h = r["held_out_64px"], r["held_out_64px_blur1"], r["held_out_128px_in_64px_units"]
        lines.append(
            f"| {side} | {m['mean_px']:.3f} | {m['p95_px']:.3f} | {m['max_px']:.2f} | {b['mean_px']:.3f} / "
            f"{b['p95_px']:.3f} | {h['mean_px']:.3f} / {h['p95_px']:.3f} | {r['face_present']['accuracy']:.4f} | "
            f"{'yes' if r['meets_targets'] else 'no'} | {r['training_renders']} | {r['steps']} | "
            f"{r['train_seconds'] + r['render_seconds']:.0f} s |"
        )
    lines += ["", "Per-keypoint mean error (px, 64x64):", ""]
    lines.append("| side | " + " | ".join(report["keypoint_names"]) + " |")
    lines.append("|---|" + "---|" * len(report["keypoint_names"]))
    for side, r in report["sides"].items():
        per = r["held_out_64px"]["per_keypoint_mean_px"]
        lines.append(f"| {side} | " + " | ".join(f"{per[n]:.3f}" for n in report["keypoint_names"]) + " |")
    lines += [
        "",
        f"Total wall-clock of the last run: {report['wall_clock_seconds']:.0f} s "
        f"({report['torch_threads']} torch thread(s), CPU). Training wall-clock per side sums rendering and "
        "training over resumed runs.",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
        "Weights: `synthetic/src/emojidiff_synthetic/assets/keypoints/{train,eval}.safetensors` (fp16, config in the "
        "safetensors metadata). Full numbers: `docs/keypoints.json`.",
        "",
    ]
    (docs_dir / "keypoints.md").write_text("\n".join(lines))


def main(args: argparse.Namespace) -> dict:
    import torch

    from emojidiff_synthetic.keypoints import KEYPOINT_NAMES, load_keypoint_detector

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.num_threads)
    t0 = time.perf_counter()
    states = {side: train_side(side, args) for side in args.sides}
    unfinished = [side for side, state in states.items() if state["step"] < args.max_steps]
    if unfinished:
        logger.info("sides %s are not finished; no evaluation this run", unfinished)
        return {"unfinished_sides": unfinished, "steps": {side: state["step"] for side, state in states.items()}}

    logger.info("evaluating on held-out identities")
    data = held_out_set(args)
    report = {
        "command": args.command,
        "keypoint_names": list(KEYPOINT_NAMES),
        "targets": {"mean_px": TARGET_MEAN_PX, "p95_px": TARGET_P95_PX},
        "evaluation": {
            "collection_size": args.eval_num_identities,
            "num_identities": len(data["ids"]),
            "renders_per_identity": args.eval_renders_per_identity,
            "renders": len(data["images"]),
            "renders_128px": len(data["images128"]),
            "negatives": len(data["negatives"]),
            "seed": EVAL_SEED,
        },
        "sides": {},
        "torch_threads": args.num_threads,
    }
    for side, state in states.items():
        detector = load_keypoint_detector(side, path=Path(args.output_dir) / f"{side}.safetensors")
        result = evaluate(detector, data)
        result.update(
            training_renders=args.num_renders,
            negative_fraction=args.negative_fraction,
            steps=state["step"],
            batch_size=args.batch_size,
            train_seconds=round(state["train_seconds"], 1),
            render_seconds=round(state["render_seconds"], 1),
            weights_bytes=(Path(args.output_dir) / f"{side}.safetensors").stat().st_size,
            parameters=sum(p.numel() for p in detector.model.parameters()),
        )
        report["sides"][side] = result
        m = result["held_out_64px"]
        logger.info(
            "[%s] held-out mean %.3f px, p95 %.3f px, face-present accuracy %.4f",
            side,
            m["mean_px"],
            m["p95_px"],
            result["face_present"]["accuracy"],
        )
    report["wall_clock_seconds"] = round(time.perf_counter() - t0, 1)
    if args.docs_dir:
        write_docs(report, Path(args.docs_dir))
    return report


if __name__ == "__main__":
    main(parse_args())
