"""Measure synthetic renderer throughput (renders per second, one process, one thread) and write a markdown table.

PYTHONPATH=src:synthetic/src python benchmarks/bench_renderer.py --output docs/renderer_benchmark.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import PIL

from emojidiff_synthetic import STYLE_CHOICES, Expression, Identity, Pose, Style, render


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/renderer_benchmark.md"), help="Markdown to write.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="Output sizes to measure.")
    parser.add_argument("--renders", type=int, default=500, help="Timed renders per row.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes per row; the best pass is reported.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampled factors.")
    args = parser.parse_args(input_args)
    if args.renders < 1 or args.repeats < 1:
        raise ValueError(f"`--renders` and `--repeats` must be >= 1, got {args.renders} and {args.repeats}.")
    return args


def _inputs(n: int, seed: int, rendering: str | None) -> list[tuple[Identity, Expression, Style, Pose]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        style = Style.random(rng)
        if rendering is not None:
            style = Style(style.background, style.pattern, rendering, style.palette)
        out.append((Identity.random(rng), Expression.random(rng), style, Pose.random(rng)))
    return out


def _rate(inputs: list, size: int, repeats: int) -> tuple[float, float]:
    """Best and median renders per second over `repeats` passes through `inputs`."""
    for ident, expr, style, pose in inputs[:20]:  # warm caches (backgrounds, textures)
        render(ident, expr, style, pose, size=size)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for ident, expr, style, pose in inputs:
            render(ident, expr, style, pose, size=size)
        rates.append(len(inputs) / (time.perf_counter() - t0))
    return max(rates), float(np.median(rates))


def main(args: argparse.Namespace) -> list[dict]:
    rows = []
    for size in args.sizes:
        for rendering in (None, *STYLE_CHOICES["rendering"]):
            inputs = _inputs(args.renders, args.seed, rendering)
            best, median = _rate(inputs, size, args.repeats)
            rows.append(
                {"size": size, "rendering": rendering or "all (random styles)", "best": best, "median": median}
            )
    command = "PYTHONPATH=src:synthetic/src python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# Synthetic renderer benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"One process, one thread; random identity, expression, style and pose per render; {args.renders} renders per"
        f" pass, best and median of {args.repeats} passes. Python {platform.python_version()}, numpy"
        f" {np.__version__}, Pillow {PIL.__version__}, {platform.machine()}, {os.cpu_count()} logical CPUs"
        " (shared with other jobs, so treat the numbers as a lower bound).",
        "",
        "| size | rendering | renders/s (best) | renders/s (median) | ms/render (best) |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['rendering']} | {r['best']:.0f} | {r['median']:.0f} | {1000.0 / r['best']:.2f} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main(parse_args())
