"""The expression streams side by side: row 1 of training/results.py (stage 1 on same-identity pairs, the shipped
recipe) with the template reaching the expression branch through the code stream, the image stream, or both, then
the 16 x 64 harness on every row. Resumable: a finished row is skipped, an interrupted one continues from its
latest checkpoint.

    python training/recipes/stream_rows.py runs/streams docs/results/experiments/streams \
        --code_adapter runs/idi/same_identity_code/adapter

`--code_adapter` reuses a code-stream row already trained with this recipe (training/results.py's
`stage1_same_identity_code`, or training/recipes/idi_rounds.py's re-training of it); without it the code row is
trained here too. The image stream takes the synthetic image encoder's patch tokens through the perceiver
resampler (the paper's stream, as the previous image-stream rows trained it: learned queries, the diffusion loss
alone); "both" concatenates its tokens with the code stream's. "image_aux" is the image stream made able to learn
(issue 9): grid-pooled, position-preserving queries, a 4-wide token bottleneck, and a head reading the train-side
expression estimator's code back from the tokens, trained alone for 1,000 steps and then beside the diffusion loss
(weight 1). The estimator is used in training only: at inference the row takes the template's image alone.

`--face_losses code,image_aux --face_loss_steps 1500` then fine-tunes those rows with the results recipe's face
losses (row 2b: expression and identity read back from the one-step x0), a matched pair from each stage-1 row.
"""

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import evaluate  # noqa: E402
import results  # noqa: E402

# stream row name -> (the AdapterSpec fields, the Stage1Config fields) it changes from the code-stream row
LEARNING_IMAGE_STREAM = dict(resampler_queries="grid", resampler_bottleneck=4, expression_code_head=True)
CODE_LOSS = dict(expression_code_loss_weight=1.0, expression_code_pretrain_steps=1000)
STREAMS = {
    "image": (dict(expression_streams="image", expression_encoder=None), {}),
    "both": (dict(expression_streams="both"), {}),
    "image_aux": (dict(expression_streams="image", **LEARNING_IMAGE_STREAM), CODE_LOSS),
    "both_aux": (dict(expression_streams="both", **LEARNING_IMAGE_STREAM), CODE_LOSS),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path, help="run folder (one sub-folder per stream row)")
    p.add_argument("out", help="evaluation folder (results.md, results.json, training.md)")
    p.add_argument("--streams", default="image,both", help=f"comma-separated rows to train, of {sorted(STREAMS)}")
    p.add_argument("--code_adapter", default=None, help="a code-stream row trained with this recipe (else: trained)")
    p.add_argument("--collection", type=Path, default=REPO / "data" / "collection")
    p.add_argument("--recipe", type=Path, default=results.RECIPE, help="the results driver's recipe file")
    p.add_argument("--steps", type=int, default=None, help="most stage-1 steps per row (default: the recipe's)")
    p.add_argument("--face_losses", default="", help="comma-separated rows (code or of --streams) to fine-tune")
    p.add_argument("--face_loss_steps", type=int, default=None, help="face-loss steps (default: the recipe's)")
    args = p.parse_args(argv)
    args.command = "python training/recipes/stream_rows.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.streams = [s for s in args.streams.split(",") if s]
    unknown = [s for s in args.streams if s not in STREAMS]
    if unknown or not args.streams:
        p.error(f"--streams takes some of {sorted(STREAMS)}, got {args.streams}")
    for name in ("steps", "face_loss_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    args.face_losses = [s for s in args.face_losses.split(",") if s]
    if set(args.face_losses) - {"code", *args.streams}:
        p.error(f"--face_losses takes 'code' and rows of --streams {args.streams}, got {args.face_losses}")
    if args.face_loss_steps is not None and not args.face_losses:
        p.error("--face_loss_steps: no --face_losses rows to fine-tune")
    if args.code_adapter is not None and not (Path(args.code_adapter) / "config.json").is_file():
        p.error(f"--code_adapter: {args.code_adapter!r} is not an adapter folder (no config.json)")
    return args


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    r = json.loads(Path(args.recipe).read_text())
    steps = args.steps or r["steps"]
    code_row = results.synthetic_stage1_run(
        args.collection, args.work, r["seed"], steps, r["batch_size"], r["learning_rate"], r["lr_warmup_steps"]
    ).replace(config=dict(face_loss_weight=r["face_loss_weight"]))
    rows = {"stage1_same_identity_code": args.code_adapter or results.train(code_row, args.work / "code", steps)}
    runs = {"code": code_row}
    for stream in args.streams:
        adapter, config = STREAMS[stream]
        runs[stream] = code_row.replace(adapter=adapter, config=config)
        rows[f"stage1_same_identity_{stream}"] = results.train(runs[stream], args.work / stream, steps)
    for name in args.face_losses:  # the code loss (if any) stays on; its solo warm-up is done
        face = results.face_loss_run(
            runs[name].replace(config=dict(expression_code_pretrain_steps=0)),
            rows[f"stage1_same_identity_{name}"],
            r["face_loss_learning_rate"],
            r["expression_loss_weight"],
            r["identity_loss_weight"],
            max_timestep=r["face_loss_max_timestep"],
        )
        out = args.work / f"{name}_face_losses"
        rows[f"{name}_face_losses"] = results.train(face, out, args.face_loss_steps or r["face_loss_steps"])
    sizes = ["--num_identities", str(r["eval_identities"]), "--num_templates", str(r["eval_templates"])]
    row_flags = [a for name, path in rows.items() for a in ("--row", f"{name}={path}")]
    eval_args = evaluate.parse_args([*row_flags, "--out", args.out, *sizes, "--steps", str(r["inference_steps"])])
    scores = evaluate.main(eval_args)
    results.write_training_summary(rows, Path(args.out), args.command)  # training.md: steps, time, best held-out
    return scores


if __name__ == "__main__":
    main(parse_args())
