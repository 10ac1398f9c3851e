"""The base model's quality report: the model folder's and the training run's summaries, and the markdown page
(``docs/base_model.md``) written from the measured numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import STAGES
from .evaluation import GRID_PROMPTS
from .export import folder_size_mb
from .loop import stage_wall_clock


def model_summary(folder: Path) -> dict:
    out = {"folder_mb": round(folder_size_mb(folder), 2), "components": {}}
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
        out["components"][sub.name] = {
            "params": params,
            "mb": round(sum(f.stat().st_size for f in files) / 1e6, 2),
            "dtype": sorted(dtypes),
        }
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
    for stage in STAGES:
        log = run_dir / stage / "loss_log.jsonl"
        if log.is_file():
            lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln]
            tail = lines[-100:]
            out[stage] = {
                "final_loss_mean_last_100": float(np.mean([ln["loss"] for ln in tail])),
                **stage_wall_clock(run_dir / stage),
            }
            info = run_dir / stage / "run_info.json"
            if info.is_file():
                out[stage]["run_info"] = json.loads(info.read_text())[-1]
    return out


def training_table(tr: dict) -> list[str]:
    """Markdown lines of the training table from ``training_summary``'s dict: one row per stage, the stages this run
    did not train (finished stages copied in, as a warm start keeps them) marked as such, a warm-started stage with
    the folder it started from; then the total wall-clock of the stages trained here."""
    lines = ["| stage | steps | sessions | wall-clock | loss (mean of last 100 steps) |", "|---|---|---|---|---|"]
    total = 0.0
    for stage in STAGES:
        if stage not in tr:
            lines.append(f"| {stage} | not trained in this run | | | |")
            continue
        st = tr[stage]
        total += st["wall_clock_s"]
        init = st.get("run_info", {}).get("init_from")
        lines.append(
            f"| {stage} | {st['steps']}{f' (warm-started from `{init}`)' if init else ''} | {st['sessions']} | "
            f"{st['wall_clock_s'] / 60:.1f} min | {st['final_loss_mean_last_100']:.4f} |"
        )
    return lines + [
        "",
        f"Total training wall-clock {total / 60:.1f} min on 2 CPU cores shared with other jobs (no GPU), from the "
        "loss logs (time to the last kept step of each session; the latent cache and checkpoint loading add about "
        "a minute).",
    ]


def render_markdown(r: dict) -> str:
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
    lines += training_table(tr)
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
                "PYTHONPATH=src:synthetic/src python synthetic/scripts/train_base.py --collection data/collection "
                "--out runs/base --stage all --resume"
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
