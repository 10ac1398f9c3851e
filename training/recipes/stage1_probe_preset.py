"""Stage 1 as the results rows run it (``results.synthetic_stage1_run``, face-weighted loss 6) with the expression
branch only in the layer probe's suggested blocks (``docs/layer_probe.json``); resumes from the latest checkpoint.

    python training/recipes/stage1_probe_preset.py runs/probe_preset   # docs/results/experiments/probe_preset
"""

import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import results  # noqa: E402

from emojidiff_pipeline.train.run import train_stage1_run  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/probe_preset")
    preset = json.loads((REPO / "docs" / "layer_probe.json").read_text())["suggested_preset"]
    run = results.synthetic_stage1_run(REPO / "data" / "collection", out, 0, 6000, 32, 1e-3, 100).replace(
        config=dict(face_loss_weight=6.0),
        adapter=dict(expression_layers=preset),
        resume_from_checkpoint="latest" if any(out.glob("checkpoint-*[0-9]")) else None,
    )
    train_stage1_run(run)
