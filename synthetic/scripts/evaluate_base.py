"""Quality report of the synthetic base model, measured with eval-side instruments only.

    PYTHONPATH=src:synthetic/src python synthetic/scripts/evaluate_base.py [--model synthetic/src/emojidiff_synthetic/assets/base] \
        [--collection data/collection] [--run_dir runs/base] [--num_samples 800]

Measures, on the collection's held-out identities (never seen in training):
  - VAE reconstructions: identity cosine (eval identity encoder) between photo and reconstruction, and expression
    MAE (eval expression estimator) between them;
  - samples prompted with held-out captions: style agreement of the style classifier with the caption's style;
    identity diversity (mean pairwise cosine distance) against that of real renders; the Frechet distance in
    eval identity-encoder feature space to held-out renders, against the distance between two real sets;
  - sampling time (64x64, 25 steps, classifier-free guidance, CPU).
Writes docs/base_model.json, docs/base_model.md and docs/base_samples.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emojidiff_pipeline.evaluation import frechet_distance
from emojidiff_synthetic import base_model as bm

logger = logging.getLogger("evaluate_base")
ROOT = Path(__file__).resolve().parents[2]

TARGETS = {
    "vae_identity_cosine": (">=", 0.9),
    "vae_expression_mae": ("<=", 0.05),
    "style_agreement": (">=", 0.9),
    "identity_diversity_ratio": ("in", (0.8, 1.25)),
    "frechet_ratio": ("<=", 3.0),
}

GRID_PROMPTS = (
    "flat emoji portrait of a person with short brown hair, natural palette, blue plain background",
    "shaded emoji portrait of a person with long blond hair and glasses, vivid palette, pink gradient background",
    "outline emoji headshot of a bald person, pastel palette, yellow dotted background, smiling",
    "sketch emoji portrait of a person with curly hair, natural palette, green striped background",
    "flat emoji avatar of someone with spiky red hair, vivid palette, purple checkered background",
    "shaded emoji portrait of a person with a black bob, mono palette, white plain background",
    "outline emoji portrait of a person with side-parted blue hair, natural palette, teal plain background",
    "flat emoji portrait of someone with pink hair in a bun, pastel palette, orange striped background, laughing",
)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=bm.ASSET_DIR, help="pipeline folder (the exported base model)")
    p.add_argument("--collection", type=Path, default=ROOT / "data" / "collection")
    p.add_argument("--run_dir", type=Path, default=ROOT / "runs" / "base", help="training run (for wall-clock/logs)")
    p.add_argument("--num_samples", type=int, default=800, help="samples for style/diversity/Frechet metrics")
    p.add_argument("--num_recon", type=int, default=800, help="held-out photos for the VAE metrics")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=5.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=None)
    p.add_argument("--timing_repeats", type=int, default=5, help="batch-1 sampling timings (median reported)")
    p.add_argument(
        "--instrument_dir", type=Path, default=None, help="eval-side instrument weights (default: the shipped ones)"
    )
    p.add_argument("--out_json", type=Path, default=ROOT / "docs" / "base_model.json")
    p.add_argument("--out_md", type=Path, default=ROOT / "docs" / "base_model.md")
    p.add_argument("--grid", type=Path, default=ROOT / "docs" / "base_samples.png")
    args = p.parse_args(input_args)
    for name in ("num_samples", "num_recon", "steps", "batch_size", "timing_repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    if args.num_samples < 16:
        raise ValueError(f"`--num_samples` must be >= 16 for covariance-based metrics, got {args.num_samples}.")
    if not (args.model / "model_index.json").is_file():
        raise FileNotFoundError(
            f"`--model` {str(args.model)!r} is not a pipeline folder (no model_index.json); train and export it with "
            "`python synthetic/scripts/train_base.py --collection data/collection --out runs/base --stage all`."
        )
    if not (args.collection / "collection.json").is_file():
        raise FileNotFoundError(f"`--collection` {str(args.collection)!r} is not a finished photo collection.")
    return args


def check_instruments(instrument_dir: Path | None = None) -> None:
    """Raise a clear error naming every missing eval-side instrument (and how to build it)."""
    missing = []
    try:
        from emojidiff_synthetic import instruments, keypoints
    except ImportError as e:
        raise RuntimeError(
            f"The evaluation needs the synthetic instruments module, which cannot be imported ({e})."
        ) from None
    for name in ("identity_eval.safetensors", "expression_eval.safetensors", "style.safetensors"):
        path = instruments.instrument_path(name, instrument_dir)
        if not path.is_file():
            missing.append(f"{path} (build: {instruments.TRAIN_COMMAND})")
    path = keypoints.default_asset_path("eval")
    if not path.is_file():
        missing.append(f"{path} (build: {keypoints.TRAIN_COMMAND})")
    if missing:
        raise RuntimeError(
            "The base-model evaluation needs eval-side instruments that are not shipped yet:\n  "
            + "\n  ".join(missing)
        )


def mean_pairwise_cosine_distance(e: np.ndarray) -> float:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sims = e @ e.T
    n = len(e)
    return float(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1)))


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.asarray(images) * 255.0).round().clip(0, 255).astype(np.uint8)


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        x = bm.images_to_tensor(images[i : i + batch_size])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


@torch.no_grad()
def generate(pipe, prompts: list[str], args: argparse.Namespace) -> np.ndarray:
    out = []
    for i in range(0, len(prompts), args.batch_size):
        chunk = prompts[i : i + args.batch_size]
        gens = [torch.Generator().manual_seed(args.seed * 1_000_003 + i + j) for j in range(len(chunk))]
        images = pipe(chunk, num_inference_steps=args.steps, guidance_scale=args.guidance_scale, generator=gens,
                      output_type="np").images  # fmt: skip
        out.append(to_uint8(images))
        logger.info("generated %d/%d", min(i + args.batch_size, len(prompts)), len(prompts))
    return np.concatenate(out)


def time_sampling(pipe, repeats: int) -> dict[str, float]:
    prompt = GRID_PROMPTS[0]
    pipe(prompt, num_inference_steps=2, output_type="np")  # warm-up
    single = []
    for r in range(repeats):
        t0 = time.perf_counter()
        pipe(
            prompt,
            num_inference_steps=25,
            guidance_scale=5.0,
            output_type="np",
            generator=torch.Generator().manual_seed(r),
        )
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    pipe(
        [prompt] * 16,
        num_inference_steps=25,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    batched = (time.perf_counter() - t0) / 16
    return {"seconds_per_image_batch1_median": float(np.median(single)), "seconds_per_image_batch16": float(batched),
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def _verdict(name: str, value: float) -> bool:
    op, target = TARGETS[name]
    if op == ">=":
        return value >= target
    if op == "<=":
        return value <= target
    return target[0] <= value <= target[1]


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    check_instruments(args.instrument_dir)
    from diffusers import StableDiffusionXLPipeline

    from emojidiff_synthetic import instruments as ins
    from emojidiff_synthetic.collection import Collection
    from emojidiff_synthetic.keypoints import load_keypoint_detector
    from emojidiff_synthetic.renderer import STYLE_CHOICES

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    t_start = time.time()
    id_encoder = ins.load_identity_encoder("eval", args.instrument_dir)
    estimator = ins.load_expression_estimator("eval", args.instrument_dir)
    style_clf = ins.load_style_classifier(args.instrument_dir)
    detector = load_keypoint_detector("eval")

    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    # held-out photos, split by identity into two halves A and B
    collection = Collection(args.collection)
    records = collection.records("heldout")
    truth = {t["path"]: t for t in collection.ground_truth()}
    ids = sorted({r["identity"] for r in records})
    half_a = set(ids[: len(ids) // 2])
    rec_a = [r for r in records if r["identity"] in half_a]
    rec_b = [r for r in records if r["identity"] not in half_a]
    n = min(args.num_samples, len(rec_a), len(rec_b))
    if n < 2:
        raise ValueError(f"The collection has too few held-out photos for the sample metrics ({len(records)}).")
    if n < args.num_samples:
        logger.warning("Only %d held-out photos per half: using %d samples instead of %d.", n, n, args.num_samples)
    rng = np.random.default_rng(args.seed)
    rec_a = [rec_a[i] for i in sorted(rng.choice(len(rec_a), n, replace=False))]
    rec_b = [rec_b[i] for i in sorted(rng.choice(len(rec_b), n, replace=False))]
    img_a = np.stack([collection.load_image(r) for r in rec_a])
    img_b = np.stack([collection.load_image(r) for r in rec_b])
    kps_a = np.asarray([r["kps"] for r in rec_a], np.float32)
    kps_b = np.asarray([r["kps"] for r in rec_b], np.float32)
    results: dict = {"num_heldout_identities": len(ids), "num_samples": n}

    # 1. VAE reconstructions (held-out photos, their keypoints)
    m = min(args.num_recon, len(records))
    rec_all = records[:m]
    photos = np.stack([collection.load_image(r) for r in rec_all])
    kps = np.asarray([r["kps"] for r in rec_all], np.float32)
    recons = reconstruct(pipe.vae, photos, args.batch_size)
    e_photo = ins.embed_identities(id_encoder, photos, kps)
    e_recon = ins.embed_identities(id_encoder, recons, kps)
    x_photo = ins.estimate_expressions(estimator, photos, kps)
    x_recon = ins.estimate_expressions(estimator, recons, kps)
    x_true = np.asarray([truth[r["path"]]["expression"] for r in rec_all], np.float32)
    results["vae"] = {
        "num_photos": m,
        "identity_cosine_mean": float((e_photo * e_recon).sum(1).mean()),
        "identity_cosine_p05": float(np.percentile((e_photo * e_recon).sum(1), 5)),
        "expression_mae_recon_vs_photo": float(np.abs(x_recon - x_photo).mean()),
        "expression_mae_photo_vs_truth": float(np.abs(x_photo - x_true).mean()),
        "expression_mae_recon_vs_truth": float(np.abs(x_recon - x_true).mean()),
        "pixel_mae_0_255": float(np.abs(recons.astype(np.float32) - photos).mean()),
    }
    logger.info("VAE: %s", results["vae"])

    # 2. samples prompted with held-out captions (half A)
    t0 = time.time()
    samples = generate(pipe, [r["caption"] for r in rec_a], args)
    results["generation_seconds"] = round(time.time() - t0, 1)
    style_true = {h: [truth[r["path"]]["style"][h] for r in rec_a] for h in ins.STYLE_HEADS}
    pred_s = ins.classify_styles(style_clf, samples)["labels"]
    pred_r = ins.classify_styles(style_clf, img_a)["labels"]
    agree = {h: float(np.mean([p == t for p, t in zip(pred_s[h], style_true[h])])) for h in ins.STYLE_HEADS}
    agree_real = {h: float(np.mean([p == t for p, t in zip(pred_r[h], style_true[h])])) for h in ins.STYLE_HEADS}
    joint = float(np.mean([all(pred_s[h][i] == style_true[h][i] for h in ins.STYLE_HEADS) for i in range(n)]))
    results["style"] = {
        "agreement_per_head": agree,
        "agreement_mean_over_heads": float(np.mean(list(agree.values()))),
        "agreement_all_heads": joint,
        "classifier_on_real_photos_per_head": agree_real,
        "classifier_on_real_photos_mean": float(np.mean(list(agree_real.values()))),
        "choices": {h: list(STYLE_CHOICES[h]) for h in ins.STYLE_HEADS},
    }
    logger.info("style: %s", results["style"]["agreement_per_head"])

    # 3. identity features: samples (detected keypoints), real halves A and B (collection keypoints)
    kps_s, scores = detector.predict(samples)
    e_s = ins.embed_identities(id_encoder, samples, kps_s)
    e_a = ins.embed_identities(id_encoder, img_a, kps_a)
    e_b = ins.embed_identities(id_encoder, img_b, kps_b)
    div_s, div_a = mean_pairwise_cosine_distance(e_s), mean_pairwise_cosine_distance(e_a)
    fd_sb, fd_ab = frechet_distance(e_s, e_b), frechet_distance(e_a, e_b)
    results["identity"] = {
        "face_detected_fraction": float((scores >= detector.threshold).mean()),
        "diversity_samples": div_s,
        "diversity_real": div_a,
        "diversity_ratio": div_s / div_a,
        "frechet_samples_vs_heldout": fd_sb,
        "frechet_real_vs_real": fd_ab,
        "frechet_ratio": fd_sb / fd_ab,
    }
    x_s = ins.estimate_expressions(estimator, samples, kps_s)
    results["identity"]["sample_expression_mean_abs_dev_from_real_mean"] = float(
        np.abs(x_s.mean(0) - x_photo.mean(0)).mean()
    )
    logger.info("identity: %s", results["identity"])

    # 4. timing and the sample grid
    results["timing"] = time_sampling(pipe, args.timing_repeats)
    grid = []
    for p in GRID_PROMPTS:
        gens = [torch.Generator().manual_seed(s) for s in range(6)]
        grid.extend(to_uint8(pipe([p] * 6, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                  generator=gens, output_type="np").images))  # fmt: skip
    bm.save_grid(grid, args.grid, cols=6)
    bm.save_grid(
        list(np.concatenate([photos[:8], recons[:8]])), args.grid.with_name("base_vae_reconstructions.png"), cols=8
    )

    headline = {
        "vae_identity_cosine": results["vae"]["identity_cosine_mean"],
        "vae_expression_mae": results["vae"]["expression_mae_recon_vs_photo"],
        "style_agreement": results["style"]["agreement_mean_over_heads"],
        "identity_diversity_ratio": results["identity"]["diversity_ratio"],
        "frechet_ratio": results["identity"]["frechet_ratio"],
    }
    results["headline"] = {k: {"measured": v, "target": f"{TARGETS[k][0]} {TARGETS[k][1]}", "pass": _verdict(k, v)}
                           for k, v in headline.items()}  # fmt: skip
    results["model"] = model_summary(args.model)
    results["training"] = training_summary(args.run_dir)
    results["command"] = "PYTHONPATH=src:synthetic/src python synthetic/scripts/evaluate_base.py " + shlex.join(sys.argv[1:])
    results["evaluation_seconds"] = round(time.time() - t_start, 1)
    results["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": __import__("os").cpu_count(),
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(results, indent=1))
    args.out_md.write_text(render_markdown(results, args))
    logger.info("wrote %s, %s, %s", args.out_json, args.out_md, args.grid)
    return results


def model_summary(folder: Path) -> dict:
    out = {"folder_mb": round(bm.folder_size_mb(folder), 2), "components": {}}
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        files = list(sub.glob("*.safetensors"))
        if not files:
            continue
        from safetensors import safe_open

        params = 0
        dtypes = set()
        for f in files:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():  # noqa: SIM118
                    t = h.get_slice(k)
                    params += int(np.prod(t.get_shape()))
                    dtypes.add(str(t.get_dtype()))
        out["components"][sub.name] = {"params": params, "mb": round(sum(f.stat().st_size for f in files) / 1e6, 2),
                                       "dtype": sorted(dtypes)}  # fmt: skip
    cfg = Path(folder) / "base_config.json"
    if cfg.is_file():
        out["config"] = json.loads(cfg.read_text())
    return out


def training_summary(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    out: dict = {}
    if (run_dir / "commands.txt").is_file():
        out["commands"] = list(dict.fromkeys(run_dir.joinpath("commands.txt").read_text().splitlines()))
    if (run_dir / "notes.md").is_file():
        out["notes"] = (run_dir / "notes.md").read_text()
    if (run_dir / "timings.json").is_file():
        out["timings"] = json.loads((run_dir / "timings.json").read_text())
    for stage in bm.STAGES:
        log = run_dir / stage / "loss_log.jsonl"
        if log.is_file():
            lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln]
            tail = lines[-100:]
            out[stage] = {"final_loss_mean_last_100": float(np.mean([ln["loss"] for ln in tail])),
                          **bm.stage_wall_clock(run_dir / stage)}  # fmt: skip
            info = run_dir / stage / "run_info.json"
            if info.is_file():
                out[stage]["run_info"] = json.loads(info.read_text())[-1]
    return out


def render_markdown(r: dict, args: argparse.Namespace) -> str:
    h = r["headline"]
    rows = [
        ("VAE reconstruction: identity cosine (eval encoder), mean", "vae_identity_cosine"),
        ("VAE reconstruction: expression MAE vs photo (eval estimator)", "vae_expression_mae"),
        ("Samples: style agreement (style classifier, mean of 4 heads)", "style_agreement"),
        ("Samples: identity diversity / real diversity", "identity_diversity_ratio"),
        ("Samples: Frechet(samples, held-out) / Frechet(real, real)", "frechet_ratio"),
    ]
    lines = [
        "# Synthetic base model",
        "",
        "A tiny SDXL-shaped text-to-image model trained from scratch on the photo collection's train split "
        "(`emojidiff_synthetic.base_model`, `synthetic/scripts/train_base.py`). Shipped at "
        "`synthetic/src/emojidiff_synthetic/assets/base/`; it loads offline with "
        "`StableDiffusionXLPipeline.from_pretrained(folder)` or `EmojiDiffPipeline.from_pretrained(folder)` "
        "(no `emoji_adapter`; `image_encoder` and `feature_extractor` present). Measured with eval-side instruments "
        "only, on held-out identities. Numbers below are written by `synthetic/scripts/evaluate_base.py`.",
        "",
        "## Quality vs targets",
        "",
        "| metric | measured | target | pass |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        lines.append(
            f"| {label} | {h[key]['measured']:.3f} | {h[key]['target']} | {'yes' if h[key]['pass'] else 'NO'} |"
        )
    s, i, v = r["style"], r["identity"], r["vae"]
    lines += [
        "",
        "Details:",
        "- style agreement per head: "
        + ", ".join(f"{k} {x:.3f}" for k, x in s["agreement_per_head"].items())
        + f"; all four at once {s['agreement_all_heads']:.3f}. The classifier on the real held-out photos: "
        + ", ".join(f"{k} {x:.3f}" for k, x in s["classifier_on_real_photos_per_head"].items())
        + ".",
        f"- identity diversity (mean pairwise cosine distance, eval encoder): samples {i['diversity_samples']:.3f}, "
        f"real held-out photos {i['diversity_real']:.3f}.",
        f"- Frechet distance (eval identity features, 512-d, {r['num_samples']} vs {r['num_samples']}): samples vs "
        f"held-out half B {i['frechet_samples_vs_heldout']:.4f}; real half A vs real half B "
        f"{i['frechet_real_vs_real']:.4f} (halves split by identity).",
        f"- faces found by the eval keypoint detector in samples: {i['face_detected_fraction']:.3f}.",
        f"- VAE ({v['num_photos']} held-out photos): identity cosine 5th percentile {v['identity_cosine_p05']:.3f}; "
        f"pixel MAE {v['pixel_mae_0_255']:.2f}/255; expression MAE vs ground truth: photo "
        f"{v['expression_mae_photo_vs_truth']:.4f}, reconstruction {v['expression_mae_recon_vs_truth']:.4f}.",
        "",
        "![samples](base_samples.png)",
        "",
        "Rows: the prompts below; columns: seeds 0-5; 25 Euler steps, guidance 5. "
        "`base_vae_reconstructions.png`: held-out photos (top) and their VAE reconstructions (bottom).",
        "",
    ]
    lines += [f"{k + 1}. `{p}`" for k, p in enumerate(GRID_PROMPTS)]
    t = r["timing"]
    lines += [
        "",
        "## Model",
        "",
        f"Folder size {r['model']['folder_mb']} MB (UNet and VAE stored in fp16, transformers components in fp32 so "
        "that a plain `from_pretrained` runs in float32).",
        "",
        "| component | parameters | MB | stored dtype |",
        "|---|---|---|---|",
    ]
    for name, c in r["model"]["components"].items():
        lines.append(f"| {name} | {c['params'] / 1e6:.2f} M | {c['mb']} | {', '.join(c['dtype'])} |")
    lines += [
        "",
        f"Sampling on this CPU ({t['torch_threads']} torch threads, machine shared with other jobs): 64x64, 25 steps, "
        f"guidance 5: {t['seconds_per_image_batch1_median']:.2f} s per image at batch 1, "
        f"{t['seconds_per_image_batch16']:.3f} s per image at batch 16.",
        "",
        "## Training",
        "",
    ]
    tr = r["training"]
    lines += ["| stage | steps | sessions | wall-clock | loss (mean of last 100 steps) |", "|---|---|---|---|---|"]
    total = 0.0
    for stage in bm.STAGES:
        st = tr.get(stage, {})
        total += st.get("wall_clock_s", 0.0)
        lines.append(f"| {stage} | {st.get('steps', 0)} | {st.get('sessions', 0)} | "
                     f"{st.get('wall_clock_s', 0.0) / 60:.1f} min | {st.get('final_loss_mean_last_100', float('nan')):.4f} |")  # fmt: skip
    lines += [
        "",
        f"Total training wall-clock {total / 60:.1f} min on 2 CPU cores shared with other jobs (no GPU), from the "
        "loss logs (time to the last kept step of each session; the latent cache and checkpoint loading add about "
        "a minute).",
    ]
    if tr.get("notes"):
        lines += ["", "## Notes", "", tr["notes"].strip()]
    lines += [
        "",
        "## Commands",
        "",
        "```",
        "PYTHONPATH=src:synthetic/src python synthetic/scripts/build_collection.py --out data/collection",
        *r["training"].get(
            "commands",
            [
                "PYTHONPATH=src:synthetic/src python synthetic/scripts/train_base.py --collection data/collection --out runs/base --stage all --resume"
            ],
        ),
        r["command"],
        "```",
        "",
        f"Evaluation took {r['evaluation_seconds'] / 60:.1f} min (generation of {r['num_samples']} samples: "
        f"{r['generation_seconds'] / 60:.1f} min).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
