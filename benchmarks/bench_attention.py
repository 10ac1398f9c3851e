"""Per-step UNet cost of plain SDXL attention, diffusers' IP-Adapter (FaceID-style, 4 tokens) and EmojiDiff.

SDXL-shaped UNet on CPU: SDXL's block layout and transformer depths (1, 2, 10), widths cut to 1/5 with 64 channels
per head, 32x32 latents, batch 2 (classifier-free guidance). The three set-ups are timed interleaved in one run
(round-robin, median of per-step times), so machine load affects them alike. Also times the one-off per-call cost
(image encoder, adapter, key/value cache). Writes docs/benchmarks.md.

    python benchmarks/bench_attention.py [--rounds 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterFaceIDImageProjection, MultiIPAdapterImageProjection
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffConditioning
from emojidiff_pipeline.attention import install_processors
from emojidiff_pipeline.layers import expand_layer_values, unet_layers

TEXT_DIM = 2048 // 5  # cross-attention width cut to 1/5 like the rest
POOLED_DIM = 1280 // 5
TIME_DIM = 256 // 8


def sdxl_fifth_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(64, 128, 256),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(1, 2, 4),  # diffusers' name for the number of heads: 64 channels per head
        layers_per_block=2,
        cross_attention_dim=TEXT_DIM,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=POOLED_DIM + 6 * TIME_DIM,
        norm_num_groups=32,
        sample_size=32,
    ).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    unet = sdxl_fifth_unet()
    batch = 2
    sample = torch.randn(batch, 4, 32, 32)
    text = torch.randn(batch, 77, TEXT_DIM)
    added = {"text_embeds": torch.randn(batch, POOLED_DIM), "time_ids": torch.randn(batch, 6)}
    layers = unet_layers(unet)
    cross = [n for n, info in layers.items() if info.is_cross_attention]

    # EmojiDiff: adapter with default presets; its per-call work (image encoder, adapter, KV cache) timed apart
    adapter = EmojiDiffAdapter.from_unet(
        unet, image_embed_dim=256, resampler_dim=256, resampler_heads=4, resampler_depth=4
    ).eval()
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=256,
            intermediate_size=1024,
            num_attention_heads=4,
            num_hidden_layers=8,
            image_size=224,
            patch_size=14,
            projection_dim=256,
        )
    ).eval()
    identity = torch.nn.functional.normalize(torch.randn(1, 1, 512), dim=-1)
    template = torch.randn(1, 3, 224, 224)

    def per_call():
        patches = image_encoder(template, output_hidden_states=True).hidden_states[-2]
        keep = torch.tensor([False, True])
        out = adapter(identity.expand(2, -1, -1), patches.expand(2, -1, -1), keep, keep)
        return EmojiDiffConditioning.build(
            out,
            layers,
            expand_layer_values(layers, adapter.identity_layer_names, 1.0, "identity_scale"),
            expand_layer_values(layers, adapter.expression_layer_names, 1.0, "expression_scale"),
        )

    # IP-Adapter anchor: diffusers' processor with 4 identity tokens on every cross-attention layer
    ip_procs = {
        n: IPAdapterAttnProcessor2_0(layers[n].hidden_size, TEXT_DIM, num_tokens=(4,), scale=1.0)
        if n in cross
        else AttnProcessor2_0()
        for n in layers
    }
    ip_proj = MultiIPAdapterImageProjection([IPAdapterFaceIDImageProjection(512, TEXT_DIM, mult=1, num_tokens=4)])
    face_embeds = [torch.randn(batch, 1, 512)]

    def plain_setup():
        unet.set_attn_processor(AttnProcessor2_0())
        unet.encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = None
        return lambda: unet(sample, 500, text, added_cond_kwargs=added)

    def ip_setup():
        unet.set_attn_processor(dict(ip_procs))  # set_attn_processor pops from the dict it is given
        unet.encoder_hid_proj = ip_proj
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        kwargs = dict(added, image_embeds=face_embeds)
        return lambda: unet(sample, 500, text, added_cond_kwargs=kwargs)

    with torch.no_grad():
        conditioning = per_call()

    def emoji_setup():
        unet.encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = None
        install_processors(unet, set(adapter.identity_layer_names) | set(adapter.expression_layer_names))
        return lambda: unet(
            sample, 500, text, added_cond_kwargs=added, cross_attention_kwargs={"emojidiff": conditioning}
        )

    setups = {
        "plain SDXL attention": plain_setup,
        "IP-Adapter (diffusers, 4 tokens, all cross-attn)": ip_setup,
        "EmojiDiff (identity all + expression preset)": emoji_setup,
    }
    times = {name: [] for name in setups}
    with torch.no_grad():
        for r in range(args.warmup + args.rounds):
            for name, setup in setups.items():
                step = setup()
                t0 = time.perf_counter()
                step()
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        call_times = []
        for _ in range(max(5, args.rounds // 2)):
            t0 = time.perf_counter()
            per_call()
            call_times.append(time.perf_counter() - t0)

    median = {name: statistics.median(ts) for name, ts in times.items()}
    plain = median["plain SDXL attention"]
    names = list(setups)
    rows = [
        f"| {name} | {median[name] * 1e3:.1f} | {statistics.quantiles(times[name], n=4)[0] * 1e3:.1f}-"
        f"{statistics.quantiles(times[name], n=4)[2] * 1e3:.1f} | {median[name] / plain:.3f} |"
        for name in names
    ]
    ratio = median[names[2]] / plain
    anchor = median[names[1]] / plain
    text_out = "\n".join(
        [
            "# Benchmarks: per-step UNet cost of the attention set-ups",
            "",
            "Written by `python benchmarks/bench_attention.py"
            + (f" --rounds {args.rounds}" if args.rounds != 20 else "")
            + "` (do not edit by hand).",
            "",
            f"Machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, CPU. "
            "UNet: SDXL block layout and transformer depths (1, 2, 10), widths cut to 1/5 (64, 128, 256), 64 channels "
            f"per head, text width {TEXT_DIM}, 32x32 latents, batch 2. {args.rounds} interleaved rounds after "
            f"{args.warmup} warm-up rounds; median per step.",
            "",
            "| set-up | ms / step (median) | interquartile range (ms) | x plain |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            f"EmojiDiff adapted layers: identity {len(adapter.identity_layer_names)} (all cross-attention), "
            f"expression {len(adapter.expression_layer_names)} (expression-sensitive preset) of {len(cross)}.",
            "",
            f"One-off cost per pipeline call (image encoder at 1/5 width + adapter + key/value cache): "
            f"{statistics.median(call_times) * 1e3:.1f} ms, i.e. {statistics.median(call_times) / plain:.2f} steps.",
            "",
            f"ratio: {ratio:.2f}",
            f"anchor ratio (IP-Adapter vs plain): {anchor:.2f}",
            "target: EmojiDiff <= 1.05x plain " + ("(met)" if ratio <= 1.05 else f"(missed by {ratio - 1.05:.2f})"),
            "",
        ]
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text_out)
    print(text_out)


if __name__ == "__main__":
    main()
