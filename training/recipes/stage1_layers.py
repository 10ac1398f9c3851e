"""Stage 1 as the results rows run it (``results.synthetic_stage1_run``, face-weighted loss 6) with the expression
branch in the given layers; resumes from the latest checkpoint.

    python training/recipes/stage1_layers.py runs/probe_preset               # docs/results/experiments/probe_preset
    python training/recipes/stage1_layers.py runs/all_layers all 3500        # results.py's all-layers row

LAYERS (default ``probe``): ``probe`` for the layer probe's suggestion (``docs/layer_probe.json``), a preset name of
``emojidiff_pipeline.layers`` (``all``, ``expression_sensitive``) or a JSON layer dict; MAX_STEPS defaults to 6000.
"""

import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import results  # noqa: E402

from emojidiff_pipeline.train.run import train_stage1_run  # noqa: E402


def expression_layers(spec: str):
    """``probe`` -> the probe's suggested preset; ``{...}`` -> that JSON dict; anything else -> a preset name."""
    if spec == "probe":
        return json.loads((REPO / "docs" / "layer_probe.json").read_text())["suggested_preset"]
    return json.loads(spec) if spec.startswith("{") else spec


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        sys.exit(f"usage: {sys.argv[0]} OUT [LAYERS] [MAX_STEPS], got {sys.argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(sys.argv[1])
    layers = expression_layers(sys.argv[2] if len(sys.argv) > 2 else "probe")
    max_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6000
    run = results.synthetic_stage1_run(REPO / "data" / "collection", out, 0, max_steps, 32, 1e-3, 100).replace(
        config=dict(face_loss_weight=6.0),
        adapter=dict(expression_layers=layers),
        resume_from_checkpoint="latest" if any(out.glob("checkpoint-*[0-9]")) else None,
    )
    train_stage1_run(run)
