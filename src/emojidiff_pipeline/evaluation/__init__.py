"""Evaluation with eval-side instruments only (instruments that played no part in training).

- :mod:`.scores`: the cases and instruments, and the scores of one row: identity similarity, expression error
  (overall and per factor, with standard errors over templates), identity and style leakage, emotion agreement,
  face sharpness and the Frechet distance to real images;
- :mod:`.rows`: row specs on a pipeline and their generated images, and the VAE round trip of reference images;
- :mod:`.user_data`: cases from a user's reference and template folders;
- :mod:`.probes`: the controlled template-use probe and the ridge probe of the expression tokens;
- :mod:`.report`: results.json, results.md and the bar plot;
- :mod:`.base_identity`: which base pipeline a result was measured on (a digest of its folder).
"""

from .base_identity import base_record, folder_digest
from .probes import ridge_probe, template_use_probe
from .report import PLOT_METRICS, plot_rows, write_report
from .rows import (
    GenerationSettings,
    RowSpec,
    attach_row,
    generate_row,
    parse_row_spec,
    vae_round_trip,
)
from .scores import (
    Case,
    Instruments,
    face_sharpness,
    frechet_distance,
    group_means,
    paired_difference,
    same_person_similarity,
    score_row,
    standard_error_over,
)
from .user_data import IMAGE_SUFFIXES, load_image, user_cases

__all__ = [
    "base_record",
    "folder_digest",
    "IMAGE_SUFFIXES",
    "PLOT_METRICS",
    "Case",
    "GenerationSettings",
    "Instruments",
    "attach_row",
    "face_sharpness",
    "frechet_distance",
    "group_means",
    "paired_difference",
    "generate_row",
    "load_image",
    "RowSpec",
    "parse_row_spec",
    "plot_rows",
    "ridge_probe",
    "same_person_similarity",
    "score_row",
    "vae_round_trip",
    "standard_error_over",
    "template_use_probe",
    "user_cases",
    "write_report",
]
