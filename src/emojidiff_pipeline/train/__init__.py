"""Shared training code for the stage scripts in training/ (needs the `train` extra: accelerate, peft)."""
