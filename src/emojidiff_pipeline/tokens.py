"""The adapter's token makers: (B, D) vectors or (B, L, D) image tokens -> (B, N, C) cross-attention tokens.

The identity projection (an ArcFace embedding -> tokens, IP-Adapter-FaceID's MLP), the expression resampler (image
patch tokens -> latent queries, IP-Adapter-Plus's perceiver, with learned or grid-pooled queries) and the expression
code projection (an expression encoder's code -> tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class TokenProjection(nn.Module):
    """A vector -> a few tokens: (B, D) -> (B, N, C), an MLP then LayerNorm (IP-Adapter-FaceID's projection)."""

    def __init__(self, in_dim: int, hidden_dim: int, cross_attention_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, cross_attention_dim * num_tokens)
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).view(x.shape[0], self.num_tokens, self.cross_attention_dim)  # (B, N, C)
        return self.norm(x)


class IdentityProjection(TokenProjection):
    """Normed face embedding(s) -> identity tokens: (B, n_ref, D) -> (B, N, C).

    Several references of one person are averaged and renormalised before projection (order-invariant).
    """

    def __init__(self, embed_dim: int, cross_attention_dim: int, num_tokens: int):
        super().__init__(embed_dim, embed_dim * 2, cross_attention_dim, num_tokens)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(F.normalize(embeds, dim=-1).mean(dim=1), dim=-1))  # (B, D) -> (B, N, C)


class PerceiverAttention(nn.Module):
    """Latents attend to [patch tokens; latents] (Flamingo / IP-Adapter-Plus resampler block)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        b, n, d = latents.shape
        q = self.to_q(latents).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, N, d/h)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        k = k.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # (B, h, P+N, d/h)
        v = v.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d/h)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


RESAMPLER_QUERIES = ("learned", "grid")


def _grid_shape(num_tokens: int) -> tuple[int, int]:
    """The most nearly square (rows, cols) with rows * cols == num_tokens (16 -> (4, 4), 8 -> (2, 4))."""
    rows = max(r for r in range(1, math.isqrt(num_tokens) + 1) if num_tokens % r == 0)
    return rows, num_tokens // rows


def grid_pool(media: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Patch tokens (B, P, D) of a square patch grid (P = g*g, or 1 + g*g with a leading class token, which is
    left out) -> the mean of each of `num_tokens` regions of that grid, in reading order: (B, num_tokens, D)."""
    b, p, d = media.shape
    g = math.isqrt(p)
    if g * g != p:
        g = math.isqrt(p - 1)
        if g * g != p - 1:
            raise ValueError(
                f"Grid queries need a square patch grid (P = g*g, or 1 + g*g with a class token); got P={p} patch "
                "tokens. Use `resampler_queries='learned'` for this image encoder."
            )
        media = media[:, 1:]
    grid = media.transpose(1, 2).reshape(b, d, g, g)
    pooled = F.adaptive_avg_pool2d(grid, _grid_shape(num_tokens))  # (B, D, rows, cols)
    return pooled.flatten(2).transpose(1, 2)


class ExpressionResampler(nn.Module):
    """Image-encoder patch tokens -> expression tokens: (B, P, E) -> (B, N, C). A perceiver resampler.

    `queries`: how the N latent queries start. ``"learned"`` (IP-Adapter-Plus): random learned latents, which at
    initialisation attend nearly uniformly, i.e. start as a mean-pool of the image, the constant the expression
    branch collapses to. ``"grid"``: each query is the mean of its own region of the patch grid plus a learned
    offset (zero at init), so the tokens start position-preserving (the mouth's region and the eyes' region are
    different tokens) and attention refines them. `bottleneck`: the width the tokens pass through before the
    output projection (None: none), so that little besides the expression fits.
    """

    def __init__(
        self,
        image_embed_dim: int,
        cross_attention_dim: int,
        num_tokens: int,
        dim: int,
        depth: int,
        heads: int,
        queries: str = "learned",
        bottleneck: int | None = None,
    ):
        super().__init__()
        if queries not in RESAMPLER_QUERIES:
            raise ValueError(f"`queries` must be one of {RESAMPLER_QUERIES}, got {queries!r}.")
        self.queries, self.num_tokens = queries, num_tokens
        scale = 0.0 if queries == "grid" else 1 / math.sqrt(dim)
        self.latents = nn.Parameter(torch.randn(1, num_tokens, dim) * scale)
        self.proj_in = nn.Linear(image_embed_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, heads),
                    nn.Sequential(
                        nn.LayerNorm(dim),
                        nn.Linear(dim, dim * 4, bias=False),
                        nn.GELU(),
                        nn.Linear(dim * 4, dim, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )
        self.bottleneck = nn.Linear(dim, bottleneck) if bottleneck else None
        self.proj_out = nn.Linear(bottleneck or dim, cross_attention_dim)
        self.norm_out = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        media = self.proj_in(image_embeds)  # (B, P, dim)
        latents = self.latents.expand(media.shape[0], -1, -1)  # (B, N, dim)
        if self.queries == "grid":
            latents = latents + grid_pool(media, self.num_tokens)
        for attn, ff in self.layers:
            latents = latents + attn(media, latents)
            latents = latents + ff(latents)
        if self.bottleneck is not None:
            latents = self.bottleneck(latents)  # (B, N, bottleneck)
        return self.norm_out(self.proj_out(latents))  # (B, N, C)


class ExpressionCodeProjection(TokenProjection):
    """Expression code(s) from an expression encoder -> expression tokens: (B, K) -> (B, N, C).

    The code stream of the expression branch: a low-dimensional code (blendshapes, action units, the synthetic
    world's factors) carries the expression and little else, so the branch cannot fall back on copying the
    template person's identity or style, and it has no mean-pool start to collapse to.
    """

    def __init__(self, code_dim: int, cross_attention_dim: int, num_tokens: int, hidden_dim: int):
        super().__init__(code_dim, hidden_dim, cross_attention_dim, num_tokens)
