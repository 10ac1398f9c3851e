"""The expression-branch diagnosis compares stage-1 losses under template conditions on a cached batch."""

import sys
from pathlib import Path

import numpy as np
import torch
from tiny_models import tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffPipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import diagnose_expression  # noqa: E402


def tiny_cache(pipe, n: int = 6) -> dict:
    g = torch.Generator().manual_seed(0)
    text = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    return {
        "latents": torch.randn(n, 4, 8, 8, generator=g),
        "identity": torch.nn.functional.normalize(torch.randn(n, 1, 512, generator=g), dim=-1),
        "templates": torch.randn(n, 5, 32, generator=g) * 3,
        "template_index": torch.arange(n),
        "prompt_embeds": torch.randn(1, 77, text, generator=g),
        "pooled": torch.randn(1, pipe.text_encoder_2.config.projection_dim, generator=g),
        "prompt_index": torch.zeros(n, dtype=torch.long),
        "add_time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        "target_kps": torch.tensor([[[20.0, 24], [44, 24], [32, 34], [24, 44], [40, 44]]]).expand(n, -1, -1),
    }


def test_loss_table_compares_template_conditions():
    components = tiny_components()
    pipe = EmojiDiffPipeline(**components)
    adapter = tiny_adapter(components["unet"]).eval()
    table = diagnose_expression.loss_table(pipe, adapter, tiny_cache(pipe), rows=6, timesteps=[100, 500], seed=0)
    assert set(table) == {100, 500}
    row = table[500]
    assert set(row) == {"own template", "another row's template", "expression dropped", "identity dropped"}
    assert all(np.isfinite(v) and v > 0 for v in row.values())
    # the (randomized) branches act: dropping or swapping their inputs changes the loss
    assert row["expression dropped"] != row["own template"] and row["identity dropped"] != row["own template"]
    assert row["another row's template"] != row["own template"]
    again = diagnose_expression.loss_table(pipe, adapter, tiny_cache(pipe), rows=6, timesteps=[500], seed=0)
    assert again[500] == row  # same rows and noise for a seed
