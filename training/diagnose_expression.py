"""Why does the expression branch not transfer expression? Two measurements, written to a markdown + JSON report.

    python training/diagnose_expression.py --adapter runs/results2/oracle/adapter --run_dir runs/results2/oracle \
        --collection data/collection --out docs/results/expression_diagnosis.md

1. Does the adapter use the template? The stage-1 loss on cached training rows (``<run_dir>/cache``) at fixed
   timesteps with the row's own template, with another row's template, with the expression branch dropped, and with
   the identity branch dropped (same noise everywhere). A branch that carries expression makes the shuffled
   template clearly worse than the right one.
2. Does the input carry expression? A ridge probe from the image encoder's template tokens (the pipeline's own
   masked, aligned crop encoding) to the ground-truth expression factors of collection photos, split by identity,
   against predicting the mean. Synthetic world only: it reads the collection's ground truth (evaluation side).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", required=True, help="trained adapter folder")
    p.add_argument("--run_dir", required=True, help="its stage-1 output folder (holds cache/cache-*.safetensors)")
    p.add_argument("--collection", default="data/collection")
    p.add_argument("--pretrained_model", default=None, help="base pipeline (default: the shipped synthetic base)")
    p.add_argument("--rows", type=int, default=256, help="cached training rows for the loss comparison")
    p.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500, 700])
    p.add_argument("--probe_photos", type=int, default=3000)
    p.add_argument(
        "--face_loss_weight",
        type=float,
        default=6.0,
        help="weight of the face-weighted loss when the cache has target keypoints (as the run trained)",
    )
    p.add_argument("--out", default="docs/results/expression_diagnosis.md")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(input_args)
    args.argv = list(sys.argv[1:] if input_args is None else input_args)
    caches = sorted((Path(args.run_dir) / "cache").glob("cache-*.safetensors"))
    if not caches:
        p.error(f"--run_dir {args.run_dir!r} holds no cache/cache-*.safetensors (run stage 1 there first)")
    args.cache = max(caches, key=lambda c: c.stat().st_mtime)  # the newest: older keys are stale inputs
    return args


@torch.no_grad()
def loss_table(
    pipe, adapter, cache: dict, rows: int, timesteps: list[int], seed: int, face_loss_weight: float = 6.0
) -> dict[int, dict[str, float]]:
    """Mean stage-1 loss (face-weighted when the cache has target keypoints) per timestep and template condition."""
    from emojidiff_pipeline.adapted_unet import AdaptedUNet
    from emojidiff_pipeline.train.diffusion import diffusion_target, face_loss_weights, training_noise_scheduler

    g = torch.Generator().manual_seed(seed)
    scheduler = training_noise_scheduler(pipe.scheduler)
    adapted = AdaptedUNet(pipe.unet, adapter)
    idx = torch.randperm(cache["latents"].shape[0], generator=g)[:rows]
    shuffled = idx[torch.randperm(len(idx), generator=g)]
    latents, b = cache["latents"][idx], len(idx)
    noise = torch.randn(latents.shape, generator=g)
    resolution = int(cache["add_time_ids"][0, 0])
    weights = (
        face_loss_weights(cache["target_kps"][idx], latents.shape[-2:], resolution, face_loss_weight)
        if "target_kps" in cache
        else torch.ones(b, 1, *latents.shape[-2:])
    )
    text = cache["prompt_embeds"][cache["prompt_index"][idx]]
    pooled = cache["pooled"][cache["prompt_index"][idx]]
    conditions = {
        "own template": (idx, True, True),
        "another row's template": (shuffled, True, True),
        "expression dropped": (idx, False, True),
        "identity dropped": (idx, True, False),
    }
    table = {}
    for t in timesteps:
        tt = torch.full((b,), t)
        noisy, target = scheduler.add_noise(latents, noise, tt), diffusion_target(scheduler, latents, noise, tt)
        table[t] = {}
        for name, (template_rows, keep_exp, keep_id) in conditions.items():
            tpl = cache["template_index"][template_rows]
            cond = adapted.conditioning(
                identity_embeds=cache["identity"][idx],
                expression_image_embeds=cache["templates"][tpl] if adapter.uses_image_stream else None,
                expression_codes=cache["template_codes"][tpl] if adapter.uses_code_stream else None,
                identity_keep=torch.full((b,), keep_id),
                expression_keep=torch.full((b,), keep_exp),
            )
            pred = adapted(noisy, tt, text, pooled, cache["add_time_ids"], cond)
            table[t][name] = float(((pred - target) ** 2 * weights).mean() / weights.mean())
    return table


@torch.no_grad()
def expression_probe(pipe, collection: Path, num_photos: int, seed: int, geometry: str = "eyes_nose") -> dict:
    """Ridge probe (:func:`emojidiff_pipeline.evaluation.ridge_probe`: identity-split, tuned strength, clipped) from
    the flattened template tokens to the expression factors: MAE and R^2 vs the mean predictor."""
    import PIL.Image

    from emojidiff_pipeline.face_geometry import masked_template
    from emojidiff_synthetic.load import load_world

    face = load_world().train_face
    records = [json.loads(x) for x in (collection / "train.jsonl").read_text().splitlines() if x.strip()]
    truth = {}
    for line in (collection / "ground_truth.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            truth[r["path"]] = r["expression"]
    rng = np.random.default_rng([seed, 5])
    chosen = [records[i] for i in rng.permutation(len(records))[:num_photos]]
    tokens = []
    for start in range(0, len(chosen), 64):
        crops = []
        for r in chosen[start : start + 64]:
            image = np.asarray(PIL.Image.open(collection / r["path"]).convert("RGB"))
            crop, mask = face.expression_crop(image, r["path"], kps=r.get("kps"), geometry=geometry)
            crops.append(masked_template(crop, mask))
        tokens.append(pipe.encode_template_crops(crops, "cpu").float().flatten(1))
    from emojidiff_pipeline.evaluation import ridge_probe

    y = np.array([truth[r["path"]] for r in chosen])
    return ridge_probe(torch.cat(tokens).numpy(), y, [r["identity"] for r in chosen], seed=seed)


def main(args: argparse.Namespace) -> dict:
    from safetensors.torch import load_file

    from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
    from emojidiff_synthetic.load import BASE_DIR

    torch.manual_seed(args.seed)
    pipe = EmojiDiffPipeline.from_pretrained(args.pretrained_model or BASE_DIR)
    adapter = EmojiDiffAdapter.from_pretrained(args.adapter).eval()
    losses = loss_table(
        pipe, adapter, load_file(args.cache), args.rows, args.timesteps, args.seed, args.face_loss_weight
    )
    probe = expression_probe(pipe, Path(args.collection), args.probe_photos, args.seed, adapter.config.template_crop)
    command = "python training/diagnose_expression.py " + " ".join(shlex.quote(a) for a in args.argv)
    report = {"losses": losses, "probe": probe, "command": command}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    names = list(next(iter(losses.values())))
    lines = [
        "# Expression branch diagnosis",
        "",
        f"Written by `{command}` (do not edit by hand).",
        "",
        f"## Stage-1 loss on {args.rows} cached training rows (same noise; relative change vs own template)",
        "",
        "| timestep | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for t, row in losses.items():
        own = row["own template"]
        lines.append(f"| {t} | " + " | ".join(f"{v:.4f} ({(v / own - 1):+.1%})" for v in row.values()) + " |")
    lines += [
        "",
        "## Do the template tokens carry expression? (ridge probe, held-out identities)",
        "",
        f"- probe MAE {probe['probe_mae']:.4f} (R^2 {probe['r2']:.3f}, ridge lambda {probe['ridge_lambda']:g} tuned "
        f"on held-out identities) vs predicting the mean {probe['mean_predictor_mae']:.4f} "
        f"({probe['train_rows']} train / {probe['test_rows']} test photos, {probe['features']} features)",
    ]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out.resolve()}")
    return report


if __name__ == "__main__":
    main(parse_args())
