"""The results driver's target checks read the evaluated rows and IDI round stats the way the issue states them."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import results  # noqa: E402
import targets  # noqa: E402

from emojidiff_synthetic.renderer import EXPRESSION_FIELDS  # noqa: E402

FACTORS = EXPRESSION_FIELDS  # the synthetic world's 11 expression factors, in its order


def row(identity=0.6, expression=0.06, leakage=0.01, style=0.1, se=0.005, factor=0.04):
    return {
        "identity_similarity": identity,
        "expression_error": expression,
        "expression_error_se": se,
        "identity_leakage": leakage,
        "style_leakage": style,
        "expression_error_per_factor": dict.fromkeys(FACTORS, factor),
    }


def test_targets_met_missed_and_not_run(tmp_path):
    rows = {
        "base": row(expression=0.2),
        "identity_only": row(expression=0.2),
        "stage1_same_identity_code": row(expression=0.065, style=0.1),
        "same_identity_code_all_layers": row(expression=0.06, style=0.2),
        "stage1_oracle_code": row(expression=0.03),
    }
    res = {
        "rows": rows,
        "same_person_identity_similarity": 0.84,
        "reference_lines": {"ref_neutral_face": row(expression=0.11)},
    }
    checks = {c["target"].split(" (")[0]: c for c in targets.check_targets(res, [])}
    final = checks["expression error of the final model"]
    assert final["measured"] == 0.06 and final["met"]  # the all-layers row is the best non-oracle one
    assert "same_identity_code_all_layers" in next(iter(targets.check_targets(res, [])))["target"]
    assert checks["worst mouth/eye factor error of the final model"]["met"]
    assert checks["final model below the always-neutral line, in standard errors"]["measured"] == 10.0
    assert checks["identity similarity of the final model / same-person similarity"]["met"]  # 0.6 / 0.84
    assert not checks["identity leakage after IDI - same-identity row's"]["met"]  # no IDI row: not run
    assert checks["style leakage: preset - all layers"]["met"]  # less style, expression 1.08x <= 1.1x
    rows["stage1_same_identity_code"]["expression_error"] = 0.07  # 1.17x: fails its condition
    checks = {c["target"]: c for c in targets.check_targets(res, [])}
    assert not checks["style leakage: preset - all layers"]["met"]
    targets.write_targets(res, [], tmp_path, "python training/results.py")
    text = (tmp_path / "targets.md").read_text()
    assert "| not run |" in text and "| 0.060 | <= 0.07 | yes |" in text
    assert json.loads((tmp_path / "targets.json").read_text())["idi_rounds"] == []


def test_best_adapter_skips_oracle_identity_only_and_lost_identity():
    rows = {
        "base": row(identity=0.1, expression=0.2),
        "identity_only": row(identity=0.3, expression=0.2),
        "stage1_same_identity_code": row(identity=0.3, expression=0.14),
        "stage1_oracle_code": row(identity=0.5, expression=0.05),
        "same_identity_code_all_layers": row(identity=0.1, expression=0.1),
    }
    specs = {
        "base": "base",
        "identity_only": "a0@id_only",
        "stage1_same_identity_code": "a0",
        "stage1_oracle_code": "ao",
        "same_identity_code_all_layers": "a1",
    }
    assert targets.best_adapter({"rows": rows}, specs) == "a0"  # a1 is better at expression but lost identity


def test_training_summary_reads_the_run_logs(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "loss_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0, "elapsed_s": 6.0 * (s + 1)}) + "\n" for s in range(20))
    )
    val = [(4, 0.5), (9, 0.4), (14, 0.45), (19, 0.41)]
    (run / "val_log.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "loss": v, "loss_template_swap": v * 1.1, "loss_no_expression": v * 1.02}) + "\n"
            for s, v in val
        )
    )
    t = results.training_summary(run)
    assert t["steps"] == 20 and t["wall_clock_min"] == 2.0 and t["best_step"] == 10
    assert abs(t["template_swap_gap"] - 0.1) < 1e-9 and t["validations_after_best"] == 2
    results.write_training_summary({"base": "base", "row": str(run / "adapter")}, tmp_path, "cmd")
    assert "| row | 20 | 2.0 | 10 | 0.4000 | +10.00% | +2.00% | 2 |" in (tmp_path / "training.md").read_text()


@pytest.mark.parametrize("other_base", [False, True])
def test_recipe_chains_the_face_loss_rows(tmp_path, monkeypatch, other_base):
    """The driver's rows call the library's stage runs with the recipe's settings: each face-loss row starts from the
    one before it, the continuation and the push order their batches with another seed, and the push weighs
    expression up. With --base every row trains and is evaluated on that base, and the pick goes to --export."""
    import emojidiff_pipeline.train.run as run_module
    import emojidiff_synthetic.oracle
    from emojidiff_synthetic.load import BASE_DIR, EMOJIDIFF_DIR

    calls, anis, evaluated = {}, {}, []

    def fake_stage(run, ani=None):  # records the TrainingRun and leaves a finished run folder
        calls[Path(run.output_dir).name] = run
        anis[Path(run.output_dir).name] = ani
        (Path(run.output_dir) / "adapter").mkdir(parents=True)
        (Path(run.output_dir) / "adapter" / "config.json").write_text("{}")

    def fake_oracle(collection, out, n, seed):
        out.mkdir(parents=True)
        (out / "triplets.jsonl").write_text("")

    def fake_evaluate(eval_args):
        evaluated.append(eval_args)
        names = [spec.split("=", 1)[0] for spec in eval_args.row]
        return {
            "rows": {
                n: row(identity=0.5, expression=0.05 if n == "face_losses_expression_push" else 0.1) for n in names
            },
            "same_person_identity_similarity": 0.9,
        }

    monkeypatch.setattr(run_module, "train_stage1_run", fake_stage)
    monkeypatch.setattr(run_module, "train_ica_run", fake_stage)
    monkeypatch.setattr(emojidiff_synthetic.oracle, "build_oracle_triplets", fake_oracle)
    monkeypatch.setattr(results.evaluate, "main", fake_evaluate)
    exported = []
    monkeypatch.setattr(results, "export", lambda adapter, folder: exported.append((adapter, folder)))
    monkeypatch.setattr(results, "write_training_summary", lambda *a: None)
    work, base = tmp_path / "work", tmp_path / "base"
    folders = ["--work", str(work), "--out", str(tmp_path / "out")]
    if other_base:
        base.mkdir()
        (base / "model_index.json").write_text("{}")
        folders += ["--base", str(base), "--export", str(tmp_path / "export")]
    results.main(results.parse_args([*folders, *"--seed 3 --face_loss_push_expression_weight 5".split()]))
    assert {r.pretrained_model for r in calls.values()} == {str(base if other_base else BASE_DIR)}
    assert evaluated[0].pretrained_model == (str(base) if other_base else None)  # None: evaluate's shipped base

    face, cont, push = (
        calls[n] for n in ("same_identity_code_face_losses", "face_losses_continued", "face_losses_expression_push")
    )
    assert face.adapter.path == str(work / "same_identity_code" / "adapter") and face.config.seed == 3
    assert cont.adapter.path == str(work / "same_identity_code_face_losses" / "adapter") and cont.config.seed == 4
    assert push.adapter.path == str(work / "face_losses_continued" / "adapter") and push.config.seed == 4
    assert (cont.data.seed, push.adapter.seed) == (4, 4)
    weights = tuple(r.config.face_losses.expression_weight for r in (face, cont, push))
    assert weights == (2.0, 2.0, 5.0) and face.config.face_losses.max_timestep == 600
    assert cont.config.max_steps == 4000 and push.config.max_steps == 2000 and push.config.learning_rate == 3e-4
    assert calls["ica"].adapter.path == face.output_dir + "/adapter"  # ICA stays measured from row 2b
    assert calls["ica"].config.face_losses.alignment_weight == 1.0 and anis["ica"].fixed_max_timestep is None
    from_push, ani_from_push = calls["ica_from_push"], anis["ica_from_push"]  # 2e: the embedded default's chain
    assert from_push.adapter.path == push.output_dir + "/adapter" and from_push.config.max_steps == 1500
    assert from_push.config.face_losses.alignment_weight == 0.0 and from_push.config.face_losses.identity_weight == 1
    assert from_push.config.face_losses.expression_weight == 5.0 and ani_from_push.fixed_max_timestep is None
    assert anis["same_identity_code"] is None and calls["same_identity_code"].adapter.path is None
    pick = str(work / "face_losses_expression_push" / "adapter")  # the lowest expression error ships
    assert exported == [(pick, tmp_path / "export" if other_base else EMOJIDIFF_DIR)]
    assert json.loads((tmp_path / "out" / "targets.json").read_text())["targets"][0]["measured"] == 0.05


def test_another_base_must_be_a_pipeline_and_export_elsewhere(tmp_path, capsys):
    """--base that is not a pipeline folder, or without --export (the embedded default runs on the shipped base),
    is refused naming the flag and what was given."""
    with pytest.raises(SystemExit):
        results.parse_args(["--base", str(tmp_path), "--export", str(tmp_path / "e")])
    assert f"--base {str(tmp_path)!r} is not a pipeline folder (no model_index.json)" in capsys.readouterr().err
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(SystemExit):
        results.parse_args(["--base", str(tmp_path)])
    assert f"--base {str(tmp_path)!r} needs --export" in capsys.readouterr().err


def test_recipe_file_holds_the_driver_settings_and_flags_override_it(tmp_path):
    """The shipped recipe is a config file the driver reads: its values are the defaults, a flag overrides one, and
    a recipe with an unknown or a missing setting is refused by its path and key."""
    import pytest

    recipe = json.loads(results.RECIPE.read_text())
    args = results.parse_args([])
    assert args.face_loss_push_expression_weight == recipe["face_loss_push_expression_weight"]
    assert args.steps == recipe["steps"] and args.seed == recipe["seed"]
    assert results.parse_args(["--steps", "7"]).steps == 7
    custom = tmp_path / "recipe.json"
    custom.write_text(json.dumps({**recipe, "steps": 11}))
    assert results.parse_args(["--recipe", str(custom)]).steps == 11
    for bad, match in (
        ({**recipe, "stepz": 1}, r"recipe.json' does not match the driver's settings: unknown \['stepz'\]"),
        ({k: v for k, v in recipe.items() if k != "seed"}, r"missing \['seed'\]"),
    ):
        custom.write_text(json.dumps(bad))
        with pytest.raises(SystemExit):
            results.parse_args(["--recipe", str(custom)])
        with pytest.raises(ValueError, match=match):
            results.load_recipe(custom, set(recipe))
    custom.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        results.load_recipe(custom, set(recipe))


def test_final_row_prefers_identity_within_one_standard_error_of_the_best_expression():
    rows = {
        "identity_only": row(identity=0.38, expression=0.18),
        "pushed": row(identity=0.366, expression=0.077, se=0.003),
        "ica": row(identity=0.406, expression=0.079, se=0.003),  # 0.002 worse: inside the best row's SE
        "far": row(identity=0.5, expression=0.081, se=0.003),  # 0.004 worse: outside it
    }
    assert targets.final_row(rows) == "ica"
    rows["ica"]["expression_error"] = 0.0801
    assert targets.final_row(rows) == "pushed"
    assert targets.best_adapter({"rows": rows}, {n: f"runs/{n}" for n in rows}) == "runs/pushed"
