"""training/compare.py: two evaluated rows on the same cases, their differences paired over templates."""

import json
import sys
from pathlib import Path

import pytest
from test_ship import evaluated, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import compare  # noqa: E402


def per_template(row: dict, offsets: list[float]) -> dict:
    """`row` with per-template means: templates differ a lot (offsets), the mean stays the row's."""
    out = dict(row)
    for metric in compare.METRICS:
        out[f"{metric}_per_template"] = {f"t{k}": row[metric] + o for k, o in enumerate(offsets)}
    return out


def test_paired_rows_cancel_the_templates_spread_and_the_report_is_written(tmp_path):
    spread = [-0.05, 0.05, -0.02, 0.02]
    a = write_results(tmp_path / "a.json", {"new": ("runs/new", per_template(evaluated(0.40, 0.075), spread))})
    b = write_results(tmp_path / "b.json", {"old": ("runs/old", per_template(evaluated(0.41, 0.080), spread))})
    report = compare.main(compare.parse_args([f"{a}:new", f"{b}:old", "--out", str(tmp_path / "cmp")]))
    expression = report["metrics"]["expression_error"]
    assert expression["difference"] == pytest.approx(-0.005) and expression["paired"] and expression["templates"] == 4
    assert expression["se"] == pytest.approx(0.0, abs=1e-6)  # the same shift on every template: no noise left
    assert report["metrics"]["identity_similarity"]["difference"] == pytest.approx(-0.01)
    assert json.loads((tmp_path / "cmp.json").read_text()) == report
    md = (tmp_path / "cmp.md").read_text()
    assert "| expression_error | 0.0750 | 0.0800 | -0.0050 | 0.0000 | yes | 4 |" in md and report["command"] in md
    report = compare.main(compare.parse_args([f"{a}:new", f"{b}:old", "--out", str(tmp_path / "cmp_0.5")]))
    assert (tmp_path / "cmp_0.5.json").is_file() and (tmp_path / "cmp_0.5.md").is_file()  # a dot in --out is kept


def test_rows_without_per_template_means_fall_back_to_the_unpaired_error(tmp_path):
    a = write_results(tmp_path / "a.json", {"new": ("runs/new", evaluated(0.40, 0.075))})
    b = write_results(tmp_path / "b.json", {"old": ("runs/old", evaluated(0.41, 0.080, se=0.004))})
    report = compare.main(compare.parse_args([f"{a}:new", f"{b}:old", "--out", str(tmp_path / "cmp")]))
    expression = report["metrics"]["expression_error"]
    assert not expression["paired"] and expression["se"] == pytest.approx(0.005)  # hypot(0.003, 0.004)
    leakage = report["metrics"]["identity_leakage"]  # these rows hold no leakage standard error: none is made up
    assert (
        leakage["se"] is None
        and "| identity_leakage | 0.0040 | 0.0040 | +0.0000 | n/a | no |  |" in (tmp_path / "cmp.md").read_text()
    )
    json.loads((tmp_path / "cmp.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN


def test_too_few_shared_templates_are_not_paired():
    a = per_template(evaluated(0.40, 0.075), [0.0, 0.1])
    b = dict(per_template(evaluated(0.41, 0.080), [0.0, 0.1]), expression_error_per_template={"t0": 0.08, "x": 0.08})
    scores = compare.compare(a, b)
    assert not scores["expression_error"]["paired"] and scores["identity_similarity"]["paired"]


def test_refuses_other_cases_missing_rows_and_malformed_arguments(tmp_path):
    a = write_results(tmp_path / "a.json", {"new": ("runs/new", evaluated(0.40, 0.075))})
    b = write_results(tmp_path / "b.json", {"old": ("runs/old", evaluated(0.41, 0.080))}, neutral=0.09)
    out = ["--out", str(tmp_path / "cmp")]
    with pytest.raises(SystemExit, match="same cases"):
        compare.main(compare.parse_args([f"{a}:new", f"{b}:old", *out]))
    with pytest.raises(SystemExit, match="first: .* has no row 'missing'"):
        compare.main(compare.parse_args([f"{a}:missing", f"{a}:new", *out]))
    cache = tmp_path / "row.json"  # a row cache next to results.json, not an evaluation
    cache.write_text(json.dumps({"key": "k", "scores": {}}))
    with pytest.raises(SystemExit, match="second: .* has no 'rows'"):
        compare.main(compare.parse_args([f"{a}:new", f"{cache}:new", *out]))
    cache.write_text("{not json")
    with pytest.raises(SystemExit, match="second: .* not a readable results.json"):
        compare.main(compare.parse_args([f"{a}:new", f"{cache}:new", *out]))
    for bad in ([a, f"{a}:new"], [f"{tmp_path}/none.json:new", f"{a}:new"]):
        with pytest.raises(SystemExit):
            compare.parse_args([*bad, *out])
