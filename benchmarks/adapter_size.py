"""Parameter counts of EmojiDiffAdapter on the real SDXL and SD1.5 UNet configs (built on the meta device).

Usage::

    python benchmarks/adapter_size.py   # writes docs/adapter_size.md
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from emojidiff_pipeline import EmojiDiffAdapter

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "data"


def count(adapter: EmojiDiffAdapter, prefix: str = "") -> int:
    return sum(p.numel() for n, p in adapter.named_parameters() if n.startswith(prefix))


def main() -> None:
    rows = []
    for name, file, image_dim in (
        ("SDXL base 1.0", "sdxl_base_1.0_unet_config.json", 1280),
        ("SD 1.5", "sd_1.5_unet_config.json", 1280),
    ):
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(json.loads((CONFIGS / file).read_text()))
            adapter = EmojiDiffAdapter.from_unet(unet, image_embed_dim=image_dim)
        rows.append(
            f"| {name} | {len(adapter.identity_layer_names)} | {len(adapter.expression_layer_names)} | "
            f"{count(adapter, 'identity_kv.') / 1e6:.1f} | {count(adapter, 'expression_kv.') / 1e6:.1f} | "
            f"{count(adapter, 'identity_proj.') / 1e6:.1f} | {count(adapter, 'expression_resampler.') / 1e6:.1f} | "
            f"{count(adapter) / 1e6:.1f} | {count(unet) / 1e6:.1f} |"
        )
    text = "\n".join(
        [
            "# EmojiDiffAdapter size",
            "",
            "Written by `python benchmarks/adapter_size.py` (do not edit by hand). Default presets: identity branch "
            "in every cross-attention layer, expression branch in the `expression_sensitive` preset; 4 identity "
            "tokens, 16 expression tokens, a 4-layer resampler of width 768 over ViT-H/14 patch tokens (1280 wide).",
            "",
            "| UNet | identity layers | expression layers | identity K/V (M) | expression K/V (M) "
            "| identity projection (M) | resampler (M) | adapter total (M) | UNet (M) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    Path("docs/adapter_size.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
