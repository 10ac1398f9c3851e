"""The EMA of the base model's trained weights (stored in the library's checkpoint format,
:mod:`emojidiff_pipeline.train.checkpoints`, as the tensor group ``ema``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)


class EMA:
    """Exponential moving average of parameters, keyed by ``"<module>.<param name>"`` (warm-up: the decay is
    ``min(decay, (1 + t) / (10 + t))``)."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.modules, self.decay = modules, decay
        self.shadow = {
            f"{m}.{n}": p.detach().clone().float()
            for m, mod in modules.items()
            for n, p in mod.named_parameters()
            if p.requires_grad
        }

    def _params(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for m, mod in self.modules.items():
            for n, p in mod.named_parameters():
                key = f"{m}.{n}"
                if key in self.shadow:
                    yield key, p

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for key, p in self._params():
            self.shadow[key].lerp_(p.detach().float(), 1.0 - d)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the modules."""
        backup = {}
        with torch.no_grad():
            for key, p in self._params():
                backup[key] = p.detach().clone()
                p.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, p in self._params():
                    p.copy_(backup[key])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("EMA checkpoint does not match the trained parameters.")
        for k, v in state.items():
            self.shadow[k].copy_(v)
