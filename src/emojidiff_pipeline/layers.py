"""Layer selection: map layer specs (names, regexes, per-block dicts, presets) to attention processor names.

A *layer* is a diffusers attention processor name, e.g.
``"up_blocks.0.attentions.1.transformer_blocks.3.attn2.processor"``. Every function here reads the UNet's own
modules, so the same code serves SDXL, SD1.5 and the tiny synthetic UNet.

Spec forms accepted by :func:`select_layers` (the same forms are accepted for per-layer scales by
:func:`expand_layer_values`):

- a preset name: ``"all"`` (every cross-attention layer), ``"expression_sensitive"`` (see
  :func:`expression_sensitive_blocks`), ``"up"``, ``"down"``, ``"mid"``, or ``"none"``;
- an exact processor name, or a regex prefixed with ``"re:"`` (matched with ``re.search``);
- a list of names and regexes;
- a diffusers-style per-block dict, as in ``set_ip_adapter_scale``: ``{"up": {"block_0": [0.0, 1.0, 0.0]}}``
  (a list gives one value per ``attentions.i`` of the block, a number applies to the whole block or path).
  For selection, a layer is selected when its value is non-zero.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

LayerSpec = str | Sequence[str] | Mapping[str, Any]

PRESETS = ("all", "expression_sensitive", "up", "down", "mid", "none")


def expression_sensitive_blocks(layers: Mapping[str, "LayerInfo"]) -> dict:
    """(ours) The default expression preset as a per-block dict: every attention block on the up path, except
    the second attention module of the first up block with attention (``up_blocks.0.attentions.1`` in SDXL),
    which InstantStyle found to carry style: the template must not pass its rendering style on. For SDXL:
    ``{"up": {"block_0": [1, 0, 1], "block_1": 1}}``. Measured on the synthetic base: the layer probe
    (``docs/layer_probe.md``) finds the branch's effect in ``up_blocks.1.attentions.0-1`` both at inference and when
    single-block adapters are trained (then ``up_blocks.0.attentions.2`` and ``up_blocks.1.attentions.2``: all four
    in this preset; the block it leaves out gains least of the up path), and a stage-1 row with only those two layers
    scores the same as this preset within noise (expression error 0.134 vs 0.135 +- 0.003, style leakage 0.032 vs
    0.030; ``docs/results/experiments/probe_preset``), so the prior stays.
    """
    up = _block_attention_counts(layers)["up"]
    if not up:
        return {}
    first = min(up)
    spec = {f"block_{b}": 1.0 for b in sorted(up)}
    if up[first] > 1:
        spec[f"block_{first}"] = [0.0 if i == 1 else 1.0 for i in range(up[first])]
    return {"up": spec}


_PATH_PREFIX = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer of a UNet: its processor name and sizes."""

    name: str
    hidden_size: int  # output width of to_k / to_v
    cross_attention_dim: int  # input width of to_k / to_v
    heads: int
    is_cross_attention: bool


def unet_layers(unet: nn.Module) -> dict[str, LayerInfo]:
    """All attention layers of `unet`, keyed by processor name, in the UNet's own order.

    Works on meta tensors (a UNet built under ``accelerate.init_empty_weights``).
    """
    processors = getattr(unet, "attn_processors", None)
    if processors is None:
        raise TypeError(f"`unet` must be a diffusers UNet with `attn_processors`, got {type(unet).__name__}.")
    layers = {}
    for name in processors:
        attn = unet.get_submodule(name[: -len(".processor")])
        layers[name] = LayerInfo(
            name=name,
            hidden_size=attn.to_k.out_features,
            cross_attention_dim=attn.to_k.in_features,
            heads=attn.heads,
            is_cross_attention=bool(attn.is_cross_attention),
        )
    return layers


def _block_attention_counts(layers: Mapping[str, LayerInfo]) -> dict[str, dict[int, int]]:
    """{"down": {block_idx: n_attentions}, "up": {...}, "mid": {0: n}} read off the layer names."""
    counts: dict[str, dict[int, set]] = {"down": {}, "up": {}, "mid": {}}
    for name in layers:
        m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.", name)
        if m:
            path = "down" if m.group(1) == "down_blocks" else "up"
            counts[path].setdefault(int(m.group(2)), set()).add(int(m.group(3)))
        m = re.match(r"mid_block\.attentions\.(\d+)\.", name)
        if m:
            counts["mid"].setdefault(0, set()).add(int(m.group(1)))
    return {path: {b: len(s) for b, s in blocks.items()} for path, blocks in counts.items()}


def _is_real(value: Any) -> bool:
    """Any real number (Python or numpy scalar), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # np.bool_ is not Real


def _check_number(value: Any, where: str, arg_name: str) -> float:
    if not _is_real(value):
        raise ValueError(f"`{arg_name}` must hold numbers, got {value!r} ({type(value).__name__}) at {where}.")
    if not math.isfinite(value):
        raise ValueError(f"`{arg_name}` must hold finite numbers, got {value!r} at {where}.")
    return float(value)


def expand_block_dict(
    layers: Mapping[str, LayerInfo], spec: Mapping[str, Any], arg_name: str = "layers", default: float = 0.0
) -> dict[str, float]:
    """Expand a per-block dict to ``{layer_name: value}`` over the cross-attention layers of `layers`.

    ``{"down": 1.0, "up": {"block_0": [0.0, 1.0, 0.0]}}`` -> a value for every cross-attention layer; paths and
    blocks not named get `default`. Raises for unknown paths, blocks without attention and wrong list lengths.
    """
    counts = _block_attention_counts(layers)
    unknown = [k for k in spec if k not in _PATH_PREFIX]
    if unknown:
        raise ValueError(
            f"`{arg_name}` names unknown UNet path(s) {unknown}; valid keys are 'down', 'mid', 'up'. "
            f"Got {dict(spec)!r}."
        )
    per_attention: dict[str, float] = {}  # "up_blocks.0.attentions.1" -> value
    for path, value in spec.items():
        blocks = counts[path]
        if not blocks:
            raise ValueError(f"`{arg_name}` names path {path!r}, which has no attention layers in this UNet.")
        if path == "mid":
            if isinstance(value, (list, tuple)):
                if len(value) != 1:
                    raise ValueError(f"`{arg_name}['mid']` takes one value, got {len(value)}: {value!r}.")
                value = value[0]
            for i in range(blocks[0]):
                per_attention[f"mid_block.attentions.{i}"] = _check_number(value, "mid", arg_name)
            continue
        if not isinstance(value, Mapping):
            value = {f"block_{b}": value for b in blocks}
        for block_key, block_value in value.items():
            m = re.fullmatch(r"block_(\d+)", str(block_key))
            if m is None or int(m.group(1)) not in blocks:
                valid = [f"block_{b}" for b in sorted(blocks)]
                raise ValueError(
                    f"`{arg_name}` names {path}.{block_key}, which does not exist or has no attention layers in "
                    f"this UNet; blocks with attention on the {path} path: {valid}."
                )
            b = int(m.group(1))
            n = blocks[b]
            if isinstance(block_value, (list, tuple)):
                if len(block_value) == 1:
                    block_value = list(block_value) * n
                if len(block_value) != n:
                    raise ValueError(
                        f"`{arg_name}` gives {len(block_value)} values for {path}.{block_key}, which has {n} "
                        f"attention modules: {list(block_value)!r}."
                    )
            else:
                block_value = [block_value] * n
            for i, v in enumerate(block_value):
                key = f"{_PATH_PREFIX[path]}.{b}.attentions.{i}"
                per_attention[key] = _check_number(v, f"{path}.{block_key}[{i}]", arg_name)
    out = {}
    for name, info in layers.items():
        if not info.is_cross_attention:
            continue
        prefix = ".".join(name.split(".")[:4]) if not name.startswith("mid_block") else ".".join(name.split(".")[:3])
        out[name] = per_attention.get(prefix, default)
    return out


def _preset(layers: Mapping[str, LayerInfo], preset: str) -> list[str]:
    cross = [n for n, info in layers.items() if info.is_cross_attention]
    if preset == "all":
        return cross
    if preset == "none":
        return []
    if preset in _PATH_PREFIX:
        return [n for n in cross if n.startswith(_PATH_PREFIX[preset])]
    if preset == "expression_sensitive":
        spec = expression_sensitive_blocks(layers)
        if not spec:
            return []
        values = expand_block_dict(layers, spec, arg_name="expression_sensitive")
        return [n for n in cross if values[n] != 0.0]
    raise AssertionError(preset)


def select_layers(unet_or_layers: nn.Module | Mapping[str, LayerInfo], spec: LayerSpec, arg_name: str = "layers"):
    """Resolve `spec` to ``{processor_name: hidden_size}`` of cross-attention layers, in UNet order.

    Raises ``ValueError`` (echoing `spec`) when nothing matches, when a self-attention layer is named, or when a
    name or block does not exist. ``"none"`` is the only spec allowed to select nothing.
    """
    layers = unet_or_layers if isinstance(unet_or_layers, Mapping) else unet_layers(unet_or_layers)
    if isinstance(spec, str) and not spec.startswith("re:") and "." not in spec:
        if spec not in PRESETS:
            raise ValueError(
                f"`{arg_name}`={spec!r} is neither a preset {list(PRESETS)}, a processor name of this UNet, nor a "
                "regex (prefix it with 're:')."
            )
        chosen = _preset(layers, spec)
        if not chosen and spec != "none":
            raise ValueError(f"`{arg_name}`={spec!r} selects no cross-attention layer of this UNet.")
        return {n: layers[n].hidden_size for n in chosen}
    if isinstance(spec, Mapping):
        values = expand_block_dict(layers, spec, arg_name=arg_name)
        chosen = [n for n, v in values.items() if v != 0.0]
    else:
        items = [spec] if isinstance(spec, str) else list(spec)
        if not items or not all(isinstance(s, str) for s in items):
            raise ValueError(f"`{arg_name}` must be a preset, names, regexes or a per-block dict; got {spec!r}.")
        chosen_set = set()
        for item in items:
            if item.startswith("re:"):
                pattern = re.compile(item[3:])
                hits = [n for n in layers if pattern.search(n)]
                self_attn = [n for n in hits if not layers[n].is_cross_attention]
                hits = [n for n in hits if layers[n].is_cross_attention]
                if not hits:
                    extra = f" (it matches only self-attention layers, e.g. {self_attn[0]!r})" if self_attn else ""
                    raise ValueError(
                        f"`{arg_name}` regex {item!r} matches no cross-attention layer{extra}. Got {spec!r}."
                    )
                chosen_set.update(hits)
            else:
                name = item if item in layers or item.endswith(".processor") else item + ".processor"
                if name not in layers:
                    raise ValueError(
                        f"`{arg_name}` names {item!r}, which is not an attention processor of this UNet "
                        f"(e.g. {next(iter(layers))!r}). Got {spec!r}."
                    )
                if not layers[name].is_cross_attention:
                    raise ValueError(
                        f"`{arg_name}` names {item!r}, a self-attention layer; adapter branches attach only to "
                        f"cross-attention layers (attn2). Got {spec!r}."
                    )
                chosen_set.add(name)
        chosen = [n for n in layers if n in chosen_set]
    if not chosen:
        raise ValueError(f"`{arg_name}`={spec!r} selects no cross-attention layer of this UNet.")
    return {n: layers[n].hidden_size for n in chosen}


def expand_layer_values(
    layers: Mapping[str, LayerInfo], targets: Sequence[str], value: Any, arg_name: str
) -> dict[str, float]:
    """Resolve a scale given as a number or per-block dict to ``{layer: float}`` for each layer in `targets`.

    Layers of `targets` that a per-block dict does not name get 0.0, as in diffusers' ``set_ip_adapter_scale``.
    """
    if isinstance(value, Mapping):
        values = expand_block_dict(layers, value, arg_name=arg_name, default=0.0)
        out = {n: values.get(n, 0.0) for n in targets}
    else:
        if not _is_real(value):
            raise ValueError(
                f"`{arg_name}` must be a number or a per-block dict, got {value!r} ({type(value).__name__})."
            )
        if not math.isfinite(value):
            raise ValueError(f"`{arg_name}` must be a finite number >= 0, got {value!r}.")
        out = {n: float(value) for n in targets}
    negative = {n: v for n, v in out.items() if v < 0 or v != v}
    if negative:
        name, v = next(iter(negative.items()))
        raise ValueError(f"`{arg_name}` must be >= 0, got {v} for layer {name!r} (from {value!r}).")
    return out
