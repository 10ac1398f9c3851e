"""Quality of the synthetic base model, measured with eval-side instruments only, on held-out identities.

- VAE reconstructions: identity cosine (eval identity encoder) between photo and reconstruction, and expression
  MAE (eval expression estimator) between them;
- samples prompted with held-out captions: style agreement of the style classifier with the caption's style;
  identity diversity (mean pairwise cosine distance) against that of real renders; the Frechet distance in eval
  identity-encoder feature space to held-out renders, against the distance between two real sets;
- sampling time (64x64, 25 steps, classifier-free guidance, CPU).

:func:`evaluate_base_model` writes the JSON, the markdown page (:mod:`.report`) and the sample grids; the CLI is
``synthetic/scripts/evaluate_base.py``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emojidiff_pipeline.evaluation import frechet_distance

from .config import ASSET_DIR
from .data import images_to_tensor
from .samples import save_grid

logger = logging.getLogger(__name__)

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


@dataclass
class EvaluationConfig:
    """Settings of one evaluation of the base model.

    Args:
        model: the exported pipeline folder.
        collection: the photo collection (its held-out split is read).
        run_dir: the training run (for wall-clock and loss logs in the report).
        num_samples: samples for the style, diversity and Frechet metrics (per half of the held-out identities).
        num_recon: held-out photos for the VAE metrics.
        steps, guidance_scale: sampling settings of the samples and the grid.
        batch_size: images per pipeline call and per VAE batch.
        seed: seeds the choice of held-out photos and the samples' generators.
        num_threads: torch CPU threads (None: leave as is).
        timing_repeats: batch-1 sampling timings (median reported).
        instrument_dir: eval-side instrument weights (None: the shipped ones).
        out_json, out_md, grid: where the numbers, the page and the sample grid go.
    """

    model: Path = ASSET_DIR
    collection: Path = Path("data/collection")
    run_dir: Path = Path("runs/base")
    num_samples: int = 800
    num_recon: int = 800
    steps: int = 25
    guidance_scale: float = 5.0
    batch_size: int = 32
    seed: int = 0
    num_threads: int | None = None
    timing_repeats: int = 5
    instrument_dir: Path | None = None
    out_json: Path = Path("docs/base_model.json")
    out_md: Path = Path("docs/base_model.md")
    grid: Path = Path("docs/base_samples.png")


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
        x = images_to_tensor(images[i : i + batch_size])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


@torch.no_grad()
def generate(pipe, prompts: list[str], config: EvaluationConfig) -> np.ndarray:
    out = []
    for i in range(0, len(prompts), config.batch_size):
        chunk = prompts[i : i + config.batch_size]
        gens = [torch.Generator().manual_seed(config.seed * 1_000_003 + i + j) for j in range(len(chunk))]
        images = pipe(
            chunk,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=gens,
            output_type="np",
        ).images
        out.append(to_uint8(images))
        logger.info("generated %d/%d", min(i + config.batch_size, len(prompts)), len(prompts))
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
    return {
        "seconds_per_image_batch1_median": float(np.median(single)),
        "seconds_per_image_batch16": float(batched),
        "torch_threads": torch.get_num_threads(),
    }


def verdict(name: str, value: float) -> bool:
    op, target = TARGETS[name]
    if op == ">=":
        return value >= target
    if op == "<=":
        return value <= target
    return target[0] <= value <= target[1]


@dataclass
class _Instruments:
    """The eval-side instruments (never used in training or filtering)."""

    identity: Any
    expression: Any
    style: Any
    detector: Any


@dataclass
class _HeldOut:
    """The held-out split, and two disjoint sets of `n` photos each from the two halves of its identities."""

    collection: Any
    records: list[dict]
    truth: dict[str, dict]
    num_identities: int
    rec_a: list[dict]
    img_a: np.ndarray
    kps_a: np.ndarray
    img_b: np.ndarray
    kps_b: np.ndarray


def _load_instruments(instrument_dir: Path | None) -> _Instruments:
    from emojidiff_synthetic import instruments as ins
    from emojidiff_synthetic.keypoints import load_keypoint_detector

    return _Instruments(
        identity=ins.load_identity_encoder("eval", instrument_dir),
        expression=ins.load_expression_estimator("eval", instrument_dir),
        style=ins.load_style_classifier(instrument_dir),
        detector=load_keypoint_detector("eval"),
    )


def _held_out_halves(config: EvaluationConfig) -> _HeldOut:
    """Held-out photos, split by identity into two halves A and B, `num_samples` chosen from each."""
    from emojidiff_synthetic.collection import Collection

    collection = Collection(config.collection)
    records = collection.records("heldout")
    truth = {t["path"]: t for t in collection.ground_truth()}
    ids = sorted({r["identity"] for r in records})
    half_a = set(ids[: len(ids) // 2])
    rec_a = [r for r in records if r["identity"] in half_a]
    rec_b = [r for r in records if r["identity"] not in half_a]
    n = min(config.num_samples, len(rec_a), len(rec_b))
    if n < 2:
        raise ValueError(f"The collection has too few held-out photos for the sample metrics ({len(records)}).")
    if n < config.num_samples:
        logger.warning("Only %d held-out photos per half: using %d samples instead of %d.", n, n, config.num_samples)
    rng = np.random.default_rng(config.seed)
    rec_a = [rec_a[i] for i in sorted(rng.choice(len(rec_a), n, replace=False))]
    rec_b = [rec_b[i] for i in sorted(rng.choice(len(rec_b), n, replace=False))]
    return _HeldOut(
        collection=collection,
        records=records,
        truth=truth,
        num_identities=len(ids),
        rec_a=rec_a,
        img_a=np.stack([collection.load_image(r) for r in rec_a]),
        kps_a=np.asarray([r["kps"] for r in rec_a], np.float32),
        img_b=np.stack([collection.load_image(r) for r in rec_b]),
        kps_b=np.asarray([r["kps"] for r in rec_b], np.float32),
    )


def _vae_metrics(pipe, held: _HeldOut, tools: _Instruments, config: EvaluationConfig) -> dict[str, Any]:
    """Reconstructions of held-out photos: identity cosine and expression MAE against the photos (and the truth).
    Also returns the photos, their reconstructions and the photos' estimated expressions (keys starting with _)."""
    from emojidiff_synthetic import instruments as ins

    m = min(config.num_recon, len(held.records))
    rec_all = held.records[:m]
    photos = np.stack([held.collection.load_image(r) for r in rec_all])
    kps = np.asarray([r["kps"] for r in rec_all], np.float32)
    recons = reconstruct(pipe.vae, photos, config.batch_size)
    e_photo = ins.embed_identities(tools.identity, photos, kps)
    e_recon = ins.embed_identities(tools.identity, recons, kps)
    x_photo = ins.estimate_expressions(tools.expression, photos, kps)
    x_recon = ins.estimate_expressions(tools.expression, recons, kps)
    x_true = np.asarray([held.truth[r["path"]]["expression"] for r in rec_all], np.float32)
    metrics = {
        "num_photos": m,
        "identity_cosine_mean": float((e_photo * e_recon).sum(1).mean()),
        "identity_cosine_p05": float(np.percentile((e_photo * e_recon).sum(1), 5)),
        "expression_mae_recon_vs_photo": float(np.abs(x_recon - x_photo).mean()),
        "expression_mae_photo_vs_truth": float(np.abs(x_photo - x_true).mean()),
        "expression_mae_recon_vs_truth": float(np.abs(x_recon - x_true).mean()),
        "pixel_mae_0_255": float(np.abs(recons.astype(np.float32) - photos).mean()),
    }
    return {**metrics, "_photos": photos, "_recons": recons, "_x_photo": x_photo}


def _style_metrics(samples: np.ndarray, held: _HeldOut, tools: _Instruments) -> dict[str, Any]:
    """Agreement of the style classifier on the samples with their captions' styles (and on the real photos)."""
    from emojidiff_synthetic import instruments as ins
    from emojidiff_synthetic.renderer import STYLE_CHOICES

    n = len(held.rec_a)
    style_true = {h: [held.truth[r["path"]]["style"][h] for r in held.rec_a] for h in ins.STYLE_HEADS}
    pred_s = ins.classify_styles(tools.style, samples)["labels"]
    pred_r = ins.classify_styles(tools.style, held.img_a)["labels"]
    agree = {h: float(np.mean([p == t for p, t in zip(pred_s[h], style_true[h])])) for h in ins.STYLE_HEADS}
    agree_real = {h: float(np.mean([p == t for p, t in zip(pred_r[h], style_true[h])])) for h in ins.STYLE_HEADS}
    joint = float(np.mean([all(pred_s[h][i] == style_true[h][i] for h in ins.STYLE_HEADS) for i in range(n)]))
    return {
        "agreement_per_head": agree,
        "agreement_mean_over_heads": float(np.mean(list(agree.values()))),
        "agreement_all_heads": joint,
        "classifier_on_real_photos_per_head": agree_real,
        "classifier_on_real_photos_mean": float(np.mean(list(agree_real.values()))),
        "choices": {h: list(STYLE_CHOICES[h]) for h in ins.STYLE_HEADS},
    }


def _identity_metrics(samples: np.ndarray, x_photo: np.ndarray, held: _HeldOut, tools: _Instruments) -> dict:
    """Identity features of the samples (detected keypoints) against real halves A and B (collection keypoints):
    diversity and Frechet distance."""
    from emojidiff_synthetic import instruments as ins

    kps_s, scores = tools.detector.predict(samples)
    e_s = ins.embed_identities(tools.identity, samples, kps_s)
    e_a = ins.embed_identities(tools.identity, held.img_a, held.kps_a)
    e_b = ins.embed_identities(tools.identity, held.img_b, held.kps_b)
    div_s, div_a = mean_pairwise_cosine_distance(e_s), mean_pairwise_cosine_distance(e_a)
    fd_sb, fd_ab = frechet_distance(e_s, e_b), frechet_distance(e_a, e_b)
    metrics = {
        "face_detected_fraction": float((scores >= tools.detector.threshold).mean()),
        "diversity_samples": div_s,
        "diversity_real": div_a,
        "diversity_ratio": div_s / div_a,
        "frechet_samples_vs_heldout": fd_sb,
        "frechet_real_vs_real": fd_ab,
        "frechet_ratio": fd_sb / fd_ab,
    }
    x_s = ins.estimate_expressions(tools.expression, samples, kps_s)
    metrics["sample_expression_mean_abs_dev_from_real_mean"] = float(np.abs(x_s.mean(0) - x_photo.mean(0)).mean())
    return metrics


def _write_grids(pipe, photos: np.ndarray, recons: np.ndarray, config: EvaluationConfig) -> None:
    """GRID_PROMPTS x seeds 0-5, and 8 held-out photos above their VAE reconstructions."""
    grid = []
    for p in GRID_PROMPTS:
        gens = [torch.Generator().manual_seed(s) for s in range(6)]
        out = pipe(
            [p] * 6,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=gens,
            output_type="np",
        ).images
        grid.extend(to_uint8(out))
    save_grid(grid, config.grid, cols=6)
    save_grid(
        list(np.concatenate([photos[:8], recons[:8]])), config.grid.with_name("base_vae_reconstructions.png"), cols=8
    )


def headline(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The five numbers judged against TARGETS."""
    measured = {
        "vae_identity_cosine": results["vae"]["identity_cosine_mean"],
        "vae_expression_mae": results["vae"]["expression_mae_recon_vs_photo"],
        "style_agreement": results["style"]["agreement_mean_over_heads"],
        "identity_diversity_ratio": results["identity"]["diversity_ratio"],
        "frechet_ratio": results["identity"]["frechet_ratio"],
    }
    return {
        k: {"measured": v, "target": f"{TARGETS[k][0]} {TARGETS[k][1]}", "pass": verdict(k, v)}
        for k, v in measured.items()
    }


def evaluate_base_model(config: EvaluationConfig, command: str) -> dict[str, Any]:
    """Measure the base model at `config.model`; write `config.out_json`, `config.out_md` and the grids. `command`
    is recorded in the report (how to rerun it). Returns the results."""
    from diffusers import StableDiffusionXLPipeline

    from .report import model_summary, render_markdown, training_summary

    check_instruments(config.instrument_dir)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    t_start = time.time()
    tools = _load_instruments(config.instrument_dir)
    pipe = StableDiffusionXLPipeline.from_pretrained(config.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    held = _held_out_halves(config)
    results: dict = {"num_heldout_identities": held.num_identities, "num_samples": len(held.rec_a)}

    # 1. VAE reconstructions (held-out photos, their keypoints)
    vae = _vae_metrics(pipe, held, tools, config)
    photos, recons, x_photo = vae.pop("_photos"), vae.pop("_recons"), vae.pop("_x_photo")
    results["vae"] = vae
    logger.info("VAE: %s", results["vae"])
    # 2. samples prompted with held-out captions (half A)
    t0 = time.time()
    samples = generate(pipe, [r["caption"] for r in held.rec_a], config)
    results["generation_seconds"] = round(time.time() - t0, 1)
    results["style"] = _style_metrics(samples, held, tools)
    logger.info("style: %s", results["style"]["agreement_per_head"])
    # 3. identity features: samples (detected keypoints), real halves A and B (collection keypoints)
    results["identity"] = _identity_metrics(samples, x_photo, held, tools)
    logger.info("identity: %s", results["identity"])
    # 4. timing and the sample grids
    results["timing"] = time_sampling(pipe, config.timing_repeats)
    _write_grids(pipe, photos, recons, config)

    results["headline"] = headline(results)
    results["model"] = model_summary(config.model)
    results["training"] = training_summary(config.run_dir)
    results["command"] = command
    results["evaluation_seconds"] = round(time.time() - t_start, 1)
    results["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    config.out_json.parent.mkdir(parents=True, exist_ok=True)
    config.out_json.write_text(json.dumps(results, indent=1))
    config.out_md.write_text(render_markdown(results))
    logger.info("wrote %s, %s, %s", config.out_json, config.out_md, config.grid)
    return results
