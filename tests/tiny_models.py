"""Tiny SDXL-shaped components built from the real classes (no Hub access), as in diffusers' own SDXL tests."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from emojidiff_pipeline import EmojiDiffAdapter


def byte_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer built in memory: tokenizes any string, no files."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]  # GPT-2 byte-to-unicode map
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    merges = [("a", "b")]
    vocab["ab"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_components(seed: int = 0) -> dict:
    """Components of a tiny StableDiffusionXLPipeline plus a tiny CLIP vision encoder (32x32 input)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=128,
    )
    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        hidden_act="gelu",
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    image_encoder = CLIPVisionModelWithProjection(vision_config)
    feature_extractor = CLIPImageProcessor(
        crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}, do_center_crop=True, do_resize=True
    )
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": byte_tokenizer(),
        "image_encoder": image_encoder,
        "feature_extractor": feature_extractor,
    }


def tiny_adapter(unet, seed: int = 0, randomize: bool = True, **kwargs) -> EmojiDiffAdapter:
    """An adapter for the tiny UNet; with `randomize`, null tokens and projections are perturbed so that an
    untrained adapter visibly changes outputs and the null/conditional halves differ."""
    torch.manual_seed(seed)
    kwargs.setdefault("identity_embed_dim", 512)
    kwargs.setdefault("num_identity_tokens", 4)
    kwargs.setdefault("image_embed_dim", 32)
    kwargs.setdefault("num_expression_tokens", 8)
    kwargs.setdefault("resampler_dim", 32)
    kwargs.setdefault("resampler_depth", 2)
    kwargs.setdefault("resampler_heads", 4)
    adapter = EmojiDiffAdapter.from_unet(unet, **kwargs)
    if randomize:
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return adapter


def random_identity(batch: int = 1, n_ref: int = 1, seed: int = 0) -> torch.Tensor:
    """Normed random 'face embeddings' (batch, n_ref, 512)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(batch, n_ref, 512, generator=g), dim=-1)


def random_template(seed: int = 0, size: int = 48):
    """A random RGB uint8 'aligned face crop' (size, size, 3)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_tiny_collection(root, num_identities: int, photos_per_identity: int):
    """A photo collection in the real format (images + train.jsonl with path, identity, caption, kps) under
    `root`, rendered from the synthetic world; returns the manifest path."""
    import json
    from pathlib import Path

    import numpy as np
    import PIL.Image

    from emojidiff_synthetic import Expression, Identity, Pose, Style, render

    root = Path(root)
    records = []
    for identity in range(num_identities):
        for j in range(photos_per_identity):
            rng = np.random.default_rng([identity, j, 1])
            r = render(Identity.from_seed(identity), Expression.random(rng), Style.random(rng), Pose.random(rng))
            path = Path("images") / f"id{identity}" / f"{j}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(r.image).save(root / path)
            records.append(
                {
                    "path": str(path),
                    "identity": f"id{identity}",
                    "caption": "flat emoji portrait",
                    "kps": r.keypoints.tolist(),
                }
            )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "train.jsonl"


def tiny_controlnet(seed: int = 0):
    """A tiny SDXL ControlNet matching :func:`tiny_components`' UNet (diffusers' own SDXL ControlNet test sizes)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        conditioning_embedding_out_channels=(16, 32),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        norm_num_groups=1,
    )
    with torch.no_grad():  # its zero convolutions would make it a no-op; give them weights so it steers the UNet
        zero_convs = [
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ]
        for conv in zero_convs:
            conv.weight.normal_(0.0, 0.1)
    return controlnet


def tiny_sd15_components(seed: int = 0) -> dict:
    """Components of a tiny StableDiffusionPipeline (SD1.5-shaped: one text encoder, no added conditioning), plus
    the tiny CLIP vision encoder; no safety checker."""
    sdxl = tiny_components(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=1,
    )
    return {
        "unet": unet,
        "scheduler": sdxl["scheduler"],
        "vae": sdxl["vae"],
        "text_encoder": sdxl["text_encoder"],
        "tokenizer": sdxl["tokenizer"],
        "safety_checker": None,
        "feature_extractor": sdxl["feature_extractor"],
        "image_encoder": sdxl["image_encoder"],
        "requires_safety_checker": False,
    }


def write_tiny_ip_adapter(
    folder, unet, image_embed_dim: int = 32, seed: int = 0, name: str = "ip_adapter.safetensors"
):
    """A tiny IP-Adapter checkpoint for `unet` in the safetensors layout diffusers' `load_ip_adapter` reads
    (`image_proj.*`: an ImageProjection to 4 tokens; `ip_adapter.<k>.to_k_ip/to_v_ip`: one pair per cross-attention
    layer, k = 1, 3, 5, ... in processor order). Returns the file path."""
    from pathlib import Path

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    tensors = {
        "image_proj.proj.weight": torch.randn(cross * 4, image_embed_dim, generator=g) * 0.2,
        "image_proj.proj.bias": torch.zeros(cross * 4),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name_ in unet.attn_processors:
        if name_.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name_[: -len(".processor")]).to_q.out_features
        for kind in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{kind}.weight"] = torch.randn(hidden, cross, generator=g) * 0.3
        key_id += 2
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(Path(folder) / name))
    return Path(folder) / name


def write_stage1_world(root):
    """A tiny stage-1 world under `root`: the tiny pipeline (base/), an ArcFace stand-in (arcface.onnx) and a
    collection of 3 identities x 3 photos (train.jsonl: 9 same-identity triplets). Returns `root`."""
    from face_standins import make_arcface_standin

    from emojidiff_pipeline import EmojiDiffPipeline

    EmojiDiffPipeline(**tiny_components()).save_pretrained(root / "base")
    make_arcface_standin(root / "arcface.onnx", seed=1)
    write_tiny_collection(root, num_identities=3, photos_per_identity=3)
    return root
