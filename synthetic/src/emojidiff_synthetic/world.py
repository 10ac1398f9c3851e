"""Fixed conventions of the synthetic world, shared by the collection, the instruments and evaluation.

Identity ids are integers; identity ``i`` of the photo collection is ``Identity.from_seed(i)``. Held-out identities
(never in any training file of any model) are ``i % HELD_OUT_MODULUS == HELD_OUT_REMAINDER``: 200 of the default
2,000. Instruments train on identities drawn from seed ranges that the collection never uses, a different range for
the train-side and the eval-side instrument, and report accuracy on the collection's held-out identities.
"""

from __future__ import annotations

from typing import Any

# Each instrument exists twice: the train side may serve training (losses, filtering), the eval side only evaluation.
SIDES: tuple[str, ...] = ("train", "eval")

HELD_OUT_MODULUS = 10
HELD_OUT_REMAINDER = 9

DEFAULT_NUM_IDENTITIES = 2000
DEFAULT_PHOTOS_PER_IDENTITY = 8

# identity seed ranges used to train instruments (disjoint from the collection's [0, num_identities))
TRAIN_SIDE_SEED_BASE = 10_000_000
EVAL_SIDE_SEED_BASE = 20_000_000


def is_held_out(identity_id: int) -> bool:
    """True for identities that no trained model may see (evaluation only)."""
    if isinstance(identity_id, bool) or not isinstance(identity_id, int) or identity_id < 0:
        raise ValueError(f"`identity_id` must be a non-negative int, got {identity_id!r}.")
    return identity_id % HELD_OUT_MODULUS == HELD_OUT_REMAINDER


def identity_name(identity_id: int) -> str:
    """Manifest name of a collection identity: ``"id00012"``."""
    return f"id{identity_id:05d}"


def check_side(side: Any) -> str:
    """`side` if it is one of SIDES, else a ValueError that lists them."""
    if side not in SIDES:
        raise ValueError(f"`side` must be one of {list(SIDES)}, got {side!r}.")
    return side
