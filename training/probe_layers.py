"""The layer probe: what the expression branch does in each cross-attention block, measured at inference.

    python training/probe_layers.py --adapter runs/r9/same_identity_code_all_layers/adapter --out docs/layer_probe

The adapter must have its expression branch in the blocks to probe (train one with `--expression_layers all`). For
each block: the benchmark generated with the branch on in that block only, and on everywhere except that block;
each scored like a results row (emojidiff_pipeline.layer_probe). With `--train_steps N`, also the second way: for each
block, the adapter cut down to that block's expression branch (layer_probe.single_block_adapter) is trained N more
steps with the results rows' stage-1 recipe (under --train_work, resumable, one shared input cache) and scored.
Writes <out>.json, <out>.md (table and preset suggestion) and <out>.png (heatmap); `--resuggest` rewrites them
from <out>.json's measurements without generating (e.g. with another --min_gain_se). Defaults run the synthetic
world's expression benchmark with its eval-side instruments; `--pretrained_model` takes another base pipeline of
the same world.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import numpy as np

from emojidiff_pipeline.train.atomic import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate  # noqa: E402

logger = logging.getLogger("probe_layers")
METRICS = ("gain_only", "gain_without", "style_leakage_only", "identity_leakage_only", "identity_similarity_only")
TRAINED_METRICS = ("gain_trained", "style_leakage_trained", "identity_similarity_trained")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", help="adapter folder with the expression branch in the blocks to probe")
    p.add_argument("--out", default="docs/layer_probe", help="output path without suffix (.json, .md, .png)")
    p.add_argument("--pretrained_model", default=None, help="base pipeline (default: the shipped synthetic base)")
    p.add_argument("--num_identities", type=int, default=8)
    p.add_argument("--num_templates", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance_scale", type=float, default=5.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--expression_encoder", default=None, help="'module:factory' (default: the world's train side)")
    p.add_argument(
        "--min_gain_se",
        type=float,
        default=2.0,
        help="a block joins the preset when its gain exceeds this many standard errors",
    )
    p.add_argument(
        "--resuggest",
        action="store_true",
        help="recompute the suggestion from <out>.json's measurements and rewrite the report (no generation)",
    )
    t = p.add_argument_group("(b) short training of single-block adapters")
    t.add_argument("--train_steps", type=int, default=0, help="steps per single-block adapter (0: inference only)")
    t.add_argument("--train_work", default="runs/layer_probe", help="folder of the single-block runs")
    t.add_argument("--collection", default="data/collection", help="the synthetic collection to train on")
    t.add_argument("--train_batch_size", type=int, default=32)
    t.add_argument("--train_learning_rate", type=float, default=3e-4)
    t.add_argument("--train_face_loss_weight", type=float, default=6.0, help="face-weighted loss (the rows' 6)")
    args = p.parse_args(input_args)
    if args.train_steps < 0:
        p.error(f"--train_steps must be >= 0, got {args.train_steps}")
    if args.train_steps and not (Path(args.collection) / "train.jsonl").is_file():
        p.error(f"--train_steps needs --collection with a train.jsonl, got {args.collection!r}")
    for name in ("num_identities", "num_templates", "steps", "batch_size", "train_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.resuggest:
        if not Path(args.out).with_suffix(".json").is_file():
            p.error(f"--resuggest needs the probe's {args.out}.json, which does not exist")
    elif args.adapter is None or not (Path(args.adapter) / "config.json").is_file():
        p.error(f"--adapter {args.adapter!r} is not an adapter folder (no config.json)")
    args.argv = list(input_args) if input_args is not None else sys.argv[1:]
    return args


def metrics(result: dict) -> tuple[str, ...]:
    return METRICS + (TRAINED_METRICS if "trained" in result else ())


def flat_rows(result: dict) -> dict[str, dict[str, float]]:
    """{block: {metric: value}} of :func:`metrics` for the table and the heatmap."""
    rows = {
        name: {
            "gain_only": r["gain_only"],
            "gain_without": r["gain_without"],
            "style_leakage_only": r["only"]["style_leakage"],
            "identity_leakage_only": r["only"]["identity_leakage"],
            "identity_similarity_only": r["only"]["identity_similarity"],
        }
        for name, r in result["blocks"].items()
    }
    for name, trained in result.get("trained", {}).items():
        rows[name]["gain_trained"] = result["off"]["expression_error"] - trained["expression_error"]
        rows[name]["style_leakage_trained"] = trained["style_leakage"]
        rows[name]["identity_similarity_trained"] = trained["identity_similarity"]
    return rows


def write_heatmap(rows: dict[str, dict[str, float]], path: Path) -> None:
    """Blocks x metrics, each column scaled to its own range (blue low, red high), with the block names."""
    from PIL import Image, ImageDraw

    names = list(rows)
    columns = list(next(iter(rows.values())))
    cell, left, top = 36, 260, 24
    image = Image.new("RGB", (left + cell * len(columns), top + cell * len(names)), "white")
    draw = ImageDraw.Draw(image)
    for j, metric in enumerate(columns):
        values = np.array([rows[n][metric] for n in names], dtype=np.float64)
        lo, hi = np.nanmin(values), np.nanmax(values)
        draw.text((left + j * cell + 2, 4), f"m{j + 1}", fill="black")
        for i, v in enumerate(values):
            t = 0.5 if hi <= lo or not np.isfinite(v) else (v - lo) / (hi - lo)
            colour = (int(255 * t), int(80 + 60 * (1 - abs(2 * t - 1))), int(255 * (1 - t)))
            draw.rectangle(
                [left + j * cell, top + i * cell, left + (j + 1) * cell - 2, top + (i + 1) * cell - 2], fill=colour
            )
    for i, n in enumerate(names):
        draw.text((4, top + i * cell + 12), n, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp)
    tmp.replace(path)


def write_report(result: dict, preset: dict, out: Path, command: str, suggested_by: str | None = None) -> None:
    """<out>.json, .md and .png; `command` measured the result, `suggested_by` (if another) recomputed the preset."""
    rows, columns = flat_rows(result), metrics(result)
    saved = {"command": command, "result": result, "suggested_preset": preset}
    if suggested_by:
        saved["suggested_by"] = suggested_by
    write_text_atomic(out.with_suffix(".json"), json.dumps(saved, indent=1))
    fmt = lambda v: f"{v:+.4f}" if np.isfinite(v) else "n/a"  # noqa: E731
    off, full = result["off"], result["all"]
    lines = [
        "# Layer probe: the expression branch block by block",
        "",
        f"Written by `{command}` (do not edit by hand). Heatmap: `{out.name}.png` (columns m1-m{len(columns)} = "
        "the metric columns below, each scaled to its own range, blue low, red high).",
        "",
        f"Branch off everywhere: expression error {off['expression_error']:.4f} +- "
        f"{off.get('expression_error_se', float('nan')):.4f}; on everywhere: {full['expression_error']:.4f} +- "
        f"{full.get('expression_error_se', float('nan')):.4f}, style leakage {full['style_leakage']:.3f}, "
        f"identity leakage {full['identity_leakage']:.4f}.",
        "",
        "gain_only = error(off) - error(only this block); gain_without = error(all) - error(all but this block) "
        "(negative: the block helps)."
        + (
            f" *_trained: the adapter cut down to this block's expression branch and trained {result['train_steps']} "
            "more steps (gain_trained = error(off) - error(trained single-block adapter))."
            if "trained" in result
            else ""
        ),
        "",
        "| block | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r[m]) for m in columns) + " |")
    by = f" (recomputed by `{suggested_by}`)" if suggested_by else ""
    lines += ["", f"Suggested `expression_layers` preset{by}: `{json.dumps(preset)}`", ""]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines))
    write_heatmap(rows, out.with_suffix(".png"))


def blocks_of(names) -> list:
    """The :class:`~emojidiff_pipeline.layer_probe.Block` list of probed block names (``up_blocks.1.attentions.0``),
    in UNet order; each block's length is its largest probed index + 1, right for an adapter in every block."""
    from emojidiff_pipeline.layer_probe import attention_blocks
    from emojidiff_pipeline.layers import LayerInfo

    layers = {f"{n}.transformer_blocks.0.attn2.processor": LayerInfo(n, 0, 0, 1, True) for n in names}
    return attention_blocks(layers)


def resuggest(args: argparse.Namespace) -> dict:
    """The suggestion recomputed from <out>.json's measurements; rewrites the report."""
    from emojidiff_pipeline.layer_probe import suggest_preset

    out = Path(args.out)
    saved = json.loads(out.with_suffix(".json").read_text())
    result = saved["result"]
    preset = suggest_preset(result, blocks_of(result["blocks"]), args.min_gain_se)
    command = "python training/probe_layers.py " + " ".join(shlex.quote(a) for a in args.argv)
    write_report(result, preset, out, saved["command"], suggested_by=command)
    return {"result": result, "suggested_preset": preset}


def main(args: argparse.Namespace) -> dict:
    if args.resuggest:
        return resuggest(args)
    from emojidiff_pipeline import EmojiDiffAdapter
    from emojidiff_pipeline.evaluation import score_row
    from emojidiff_pipeline.layer_probe import attention_blocks, probe_blocks, suggest_preset
    from emojidiff_pipeline.layers import unet_layers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    world, pipe, cases, _, _, inst, encoder = evaluate.synthetic_benchmark(args)
    adapter = EmojiDiffAdapter.from_pretrained(args.adapter)
    blocks = attention_blocks(unet_layers(pipe.unet), adapter.expression_layer_names)
    logger.info("probing %d blocks: %s", len(blocks), [b.name for b in blocks])

    def score(expression_scale, adapter_dir=args.adapter):
        images = evaluate.generate_row(
            pipe,
            adapter_dir,
            cases,
            world.train_face,
            evaluate.generation_settings(args),
            expression_encoder=encoder,
            expression_scale=expression_scale,
        )
        row = score_row(images, cases, inst)
        logger.info("expression_scale %s: expression error %.4f", expression_scale, row["expression_error"])
        return row

    result = probe_blocks(blocks, score)
    if args.train_steps:
        result["train_steps"] = args.train_steps
        result["trained"] = {b.name: score(1.0, train_single_block(adapter, b, args)) for b in blocks}
    preset = suggest_preset(result, blocks, args.min_gain_se)
    command = "python training/probe_layers.py " + " ".join(shlex.quote(a) for a in args.argv)
    write_report(result, preset, Path(args.out), command)
    return {"result": result, "suggested_preset": preset}


def train_single_block(adapter, block, args: argparse.Namespace) -> str:
    """The adapter cut down to `block`'s expression branch, trained ``--train_steps`` more steps (skipped once done,
    resumed from its latest checkpoint); returns the trained adapter folder."""
    import results

    from emojidiff_pipeline.layer_probe import single_block_adapter
    from emojidiff_pipeline.train.checkpoints import save_pretrained_atomic
    from emojidiff_pipeline.train.run import train_stage1_run

    work = Path(args.train_work)
    folder = work / block.name
    if not (folder / "run" / "adapter" / "config.json").exists():
        if not (folder / "init" / "config.json").exists():
            save_pretrained_atomic(single_block_adapter(adapter, block), folder / "init")
        resume = "latest" if any((folder / "run").glob("checkpoint-*[0-9]")) else None
        run = results.synthetic_stage1_run(
            Path(args.collection), folder / "run", args.seed, args.train_steps, args.train_batch_size
        ).replace(
            adapter=dict(path=str(folder / "init")),
            resume_from_checkpoint=resume,
            config=dict(
                learning_rate=args.train_learning_rate,
                face_loss_weight=args.train_face_loss_weight,
                num_validation=0,
                early_stopping_patience=0,
                cache_dir=str(work / "cache"),
            ),
        )
        logger.info("training the single-block adapter of %s for %d steps", block.name, args.train_steps)
        train_stage1_run(run)
    return str(folder / "run" / "adapter")


if __name__ == "__main__":
    main(parse_args())
