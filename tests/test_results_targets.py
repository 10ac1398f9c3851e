"""The results driver's target checks read the evaluated rows and IDI round stats the way the issue states them."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import results  # noqa: E402


def row(identity=0.8, expression=0.05, leakage=0.02, style=0.1):
    return {"identity_similarity": identity, "expression_error": expression, "identity_leakage": leakage,
            "style_leakage": style}  # fmt: skip


def test_targets_met_and_missed(tmp_path):
    rows = {
        "identity_only": row(expression=0.2), "stage1_same_identity": row(leakage=0.2, expression=0.05),
        "stage1_idi_round_0": row(leakage=0.1), "stage1_idi_round_1": row(leakage=0.05, expression=0.052),
        "stage1_oracle": row(leakage=0.0), "idi_all_layers": row(style=0.3, expression=0.05),
        "idi_expression_preset": row(style=0.1, expression=0.06),
    }  # fmt: skip
    res = {"rows": rows, "same_person_identity_similarity": 0.9}
    rounds = [{"pairs": 10, "accepted": 3, "yield": 0.3, "rejected_by": {"expression": 7},
               "accepted_per_compute_minute": 1.5}] * 2  # fmt: skip
    checks = {c["target"]: c for c in results.check_targets(res, rounds)}
    assert checks["expression error of the final model / identity-only row's"]["measured"] == 0.26
    assert not checks["expression error of the final model / identity-only row's"]["met"]
    assert checks["identity leakage after IDI / same-identity row's"]["met"]  # 0.05 / 0.2, expression 1.04x
    assert checks["share of the same-identity -> oracle leakage gap closed by IDI"]["measured"] == 0.75
    assert checks["identity similarity of the final model / same-person similarity"]["met"]  # 0.8 / 0.9
    assert not checks["style leakage: preset - all layers"]["met"]  # less style leakage, but expression 1.2x > 1.1x
    rows["idi_expression_preset"]["expression_error"] = 0.054
    assert {c["target"]: c for c in results.check_targets(res, rounds)}["style leakage: preset - all layers"]["met"]
    rows["stage1_idi_round_1"]["expression_error"] = 0.06  # 1.2x the same-identity row's: the leakage target fails
    assert not {c["target"]: c for c in results.check_targets(res, rounds)}[
        "identity leakage after IDI / same-identity row's"]["met"]  # fmt: skip
    results.write_targets(res, rounds, tmp_path, "python training/results.py")
    text = (tmp_path / "targets.md").read_text()
    assert "| 0.300 | <= 0.25 | no |" in text and "| 1 | 10 | 3 | 0.300 |" in text
    assert json.loads((tmp_path / "targets.json").read_text())["idi_rounds"][0]["accepted"] == 3


def test_best_adapter_skips_oracle_identity_only_and_worse_expression():
    rows = {"base": row(identity=0.1, expression=0.2), "identity_only": row(identity=0.9, expression=0.1),
            "stage1_same_identity": row(identity=0.3, expression=0.18), "stage1_oracle": row(identity=0.8),
            "stage1_idi_round_0": row(identity=0.5, expression=0.25)}  # fmt: skip
    specs = {"base": "base", "identity_only": "a1@id_only", "stage1_same_identity": "a0", "stage1_oracle": "ao",
             "stage1_idi_round_0": "a1"}  # fmt: skip
    assert results.best_adapter({"rows": rows}, specs) == "a0"
