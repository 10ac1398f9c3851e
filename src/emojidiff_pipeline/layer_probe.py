"""The layer probe: what the expression branch does in each cross-attention block (METHOD.md, "Expression-sensitive
layers": the paper chose its layers by "investigating network layer function").

A *block* is one ``attentions.i`` module of a UNet path (``up_blocks.0.attentions.1``, ``mid_block.attentions.0``),
the unit of diffusers' per-block scale dicts. With an adapter whose expression branch is in every block, each block
is measured two ways at inference:

- **only**: the expression branch on in that block alone (``expression_scale`` 1 there, 0 elsewhere);
- **without**: on everywhere except that block.

:func:`single_block_adapter` cuts the adapter down to one block's expression branch, for the probe's second way:
short training with the branch in that block alone (training/probe_layers.py ``--train_steps``).

Each configuration is scored like a results row (expression error, identity similarity, identity leakage, style
leakage); the *expression gain* of "only b" is ``error(branch off) - error(only b)``, and of "without b" is
``error(all) - error(without b)`` (negative: the block helps). :func:`suggest_preset` turns the table into a
per-block dict for ``expression_layers``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .layers import LayerInfo

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.|^mid_block\.attentions\.(\d+)\.")
_PATH = {"down_blocks": "down", "up_blocks": "up"}


@dataclass(frozen=True)
class Block:
    """One attention module of a UNet path: ``path`` "down" | "mid" | "up", ``block`` index, ``index`` within it."""

    path: str
    block: int
    index: int
    count: int  # attention modules in this block (the length of its per-block list)

    @property
    def name(self) -> str:
        if self.path == "mid":
            return f"mid_block.attentions.{self.index}"
        return f"{self.path}_blocks.{self.block}.attentions.{self.index}"

    def scale_dict(self, on: float, off: float, blocks: Sequence[Block]) -> dict:
        """A per-block dict (diffusers' form) with `on` for this block and `off` for every other of `blocks`."""
        spec: dict = {}
        for b in blocks:
            value = on if b == self else off
            if b.path == "mid":
                spec["mid"] = value
                continue
            row = spec.setdefault(b.path, {}).setdefault(f"block_{b.block}", [off] * b.count)
            row[b.index] = value
        return spec


def attention_blocks(layers: Mapping[str, LayerInfo], names: Sequence[str] | None = None) -> list[Block]:
    """The blocks holding the cross-attention layers of `layers` (only those among `names`, when given), in UNet
    order (down, mid, up)."""
    found: dict[tuple[str, int], set[int]] = {}
    for name, info in layers.items():
        if not info.is_cross_attention or (names is not None and name not in names):
            continue
        m = _BLOCK.match(name)
        if m is None:
            continue
        key = ("mid", 0) if m.group(4) is not None else (_PATH[m.group(1)], int(m.group(2)))
        found.setdefault(key, set()).add(int(m.group(4) if m.group(4) is not None else m.group(3)))
    counts: dict[tuple[str, int], int] = {}
    for name, info in layers.items():  # the full count of a block, for the length of its per-block list
        m = _BLOCK.match(name)
        if m is not None and info.is_cross_attention:
            key = ("mid", 0) if m.group(4) is not None else (_PATH[m.group(1)], int(m.group(2)))
            idx = int(m.group(4) if m.group(4) is not None else m.group(3))
            counts[key] = max(counts.get(key, 0), idx + 1)
    order = {"down": 0, "mid": 1, "up": 2}
    return [
        Block(path, block, i, counts[(path, block)])
        for (path, block) in sorted(found, key=lambda k: (order[k[0]], k[1]))
        for i in sorted(found[(path, block)])
    ]


def probe_blocks(blocks: Sequence[Block], score: Callable[[object], dict]) -> dict:
    """Run the probe. `score(expression_scale)` generates the benchmark with that ``expression_scale`` (0.0, 1.0 or a
    per-block dict) and returns a row's scores (``expression_error``, ``identity_similarity``, ``identity_leakage``,
    ``style_leakage``, optionally ``expression_error_se``). Returns ``{"off", "all", "blocks": {name: {"only",
    "without", "gain_only", "gain_without"}}}``."""
    if not blocks:
        raise ValueError("The adapter's expression branch is in no cross-attention block: nothing to probe.")
    off, full = score(0.0), score(1.0)
    table = {}
    for b in blocks:
        only = score(b.scale_dict(1.0, 0.0, blocks))
        without = score(b.scale_dict(0.0, 1.0, blocks)) if len(blocks) > 1 else off
        table[b.name] = {
            "only": only,
            "without": without,
            "gain_only": off["expression_error"] - only["expression_error"],
            "gain_without": full["expression_error"] - without["expression_error"],
        }
    return {"off": off, "all": full, "blocks": table}


def suggest_preset(result: dict, blocks: Sequence[Block], min_gain_se: float = 2.0) -> dict:
    """A per-block dict for ``expression_layers``: the blocks whose "only" configuration lowers the expression error
    by at least `min_gain_se` standard errors, dropping any whose style leakage alone exceeds the all-blocks
    adapter's by more than `min_gain_se` binomial standard errors (it passes the template's rendering on; style
    leakage is a rate over the cases' style heads, counted here as ``num_cases`` trials since one case's heads are
    not independent, so a difference of a case or two is noise). Falls back to the single best block."""
    keep = []
    for b in blocks:
        row = result["blocks"][b.name]
        se = row["only"].get("expression_error_se") or 0.0
        if row["gain_only"] > min_gain_se * se and not _leaks_more_style(row["only"], result["all"], min_gain_se):
            keep.append(b)
    if not keep:
        keep = [max(blocks, key=lambda b: result["blocks"][b.name]["gain_only"])]
    spec: dict = {}
    for b in blocks:
        if b.path == "mid":
            if b in keep:
                spec["mid"] = 1.0
            continue
        if any(k.path == b.path and k.block == b.block for k in keep):
            row = spec.setdefault(b.path, {}).setdefault(f"block_{b.block}", [0.0] * b.count)
            row[b.index] = 1.0 if b in keep else 0.0
    return spec


def _leaks_more_style(row: dict, reference: dict, num_se: float) -> bool:
    """Whether `row`'s style leakage rate is above `reference`'s by more than `num_se` binomial standard errors of
    the reference rate over the row's ``num_cases`` (no ``num_cases``: any excess counts)."""
    p, n = reference.get("style_leakage", 0.0), row.get("num_cases") or 0
    margin = num_se * math.sqrt(max(p * (1 - p), 1.0 / n) / n) if n else 0.0
    return row.get("style_leakage", 0.0) > p + margin


def single_block_adapter(adapter, block: Block):
    """A copy of `adapter` (an :class:`~emojidiff_pipeline.EmojiDiffAdapter`) whose expression branch is in `block`
    only: the same config but ``expression_layers`` cut to that block's layers; the identity branch, the token makers
    and the block's expression key/values (and gates) copied."""
    config = {k: v for k, v in adapter.config.items() if not k.startswith("_")}
    prefix = block.name + "."
    config["expression_layers"] = {n: h for n, h in adapter.config.expression_layers.items() if n.startswith(prefix)}
    if not config["expression_layers"]:
        raise ValueError(f"The adapter's expression branch has no layer in {block.name}.")
    single = type(adapter)(**config)
    state = adapter.state_dict()
    single.load_state_dict({k: state[k] for k in single.state_dict()})
    return single.to(adapter.device, adapter.dtype)
