"""The shipped training recipes (training/recipes/): each stays a valid command of today's CLIs."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emojidiff_synthetic.collection import EXPRESSION_WORDS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import train_ica  # noqa: E402


def recipe_argv(tmp_path: Path, recipe: str, *args: str, **env: str) -> list[str]:
    """The argv `training/recipes/<recipe>` hands its trainer (run with a stand-in interpreter that prints it)."""
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        "if sys.argv[1] == '-c':\n    exec(sys.argv[2])\nelse:\n    print(json.dumps(sys.argv[1:]))\n"
    )
    fake.chmod(0o755)
    out = subprocess.run(
        ["bash", str(REPO / "training" / "recipes" / recipe), *args],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_ica_no_alignment_recipe_parses_and_resumes(tmp_path):
    out = tmp_path / "run"
    argv = recipe_argv(
        tmp_path, "ica_no_alignment.sh", str(out), "--fixed_max_timestep", "300", INIT=str(tmp_path / "init")
    )
    assert argv[0] == "training/train_ica.py"
    args = train_ica.parse_args(argv[1:])
    assert args.output_dir == str(out) and args.fixed_max_timestep == 300
    assert args.alignment_loss_weight == 0 and args.identity_loss_weight == 1 and args.expression_loss_weight == 6
    assert args.adapter == str(tmp_path / "init") and args.pretrained_model.endswith("assets/base")
    assert args.strip_prompt_words.split(",") == list(EXPRESSION_WORDS)
    assert args.resume_from_checkpoint is None

    (out / "checkpoint-250").mkdir(parents=True)
    resumed = train_ica.parse_args(recipe_argv(tmp_path, "ica_no_alignment.sh", str(out), INIT="x")[1:])
    assert resumed.resume_from_checkpoint == "latest"


def test_ica_no_alignment_recipe_starts_from_the_pushed_adapter_in_git_history(tmp_path):
    commit = re.search(r"^INIT_COMMIT=(\w+)$", (REPO / "training/recipes/ica_no_alignment.sh").read_text(), re.M)[1]
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", commit], capture_output=True).returncode:
        pytest.skip(f"commit {commit} is not in this checkout's history (shallow clone)")
    args = train_ica.parse_args(recipe_argv(tmp_path, "ica_no_alignment.sh", str(tmp_path / "run"))[1:])
    init = Path(args.adapter)
    assert init == tmp_path / "run.init_adapter"
    asset = "synthetic/src/emojidiff_synthetic/assets/emojidiff/emoji_adapter/config.json"
    expected = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{asset}"], capture_output=True, check=True)
    assert (init / "config.json").read_bytes() == expected.stdout
    assert (init / "diffusion_pytorch_model.safetensors").stat().st_size > 1_000_000


def test_base_variant_recipe_trains_rows_1_and_2b_on_the_given_base(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("base_variant", REPO / "training" / "recipes" / "base_variant.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    trained, evaluated, anis = [], [], []

    def train(run, out, steps, ani=None):
        trained.append((run, out, steps)), anis.append(ani)
        return f"{out}/a"

    monkeypatch.setattr(recipe.results, "train", train)
    monkeypatch.setattr(recipe.evaluate, "main", lambda args: evaluated.append(args) or {})
    base = tmp_path / "base"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    recipe.main(recipe.parse_args([str(base), str(tmp_path / "work"), str(tmp_path / "out")]))
    shipped = json.loads((REPO / "training" / "recipes" / "synthetic_results.json").read_text())
    (stage1, out1, steps1), (face, out2, steps2) = trained
    assert stage1.pretrained_model == face.pretrained_model == str(base)
    assert (out1.name, steps1, out2.name, steps2) == (
        "stage1",
        shipped["steps"],
        "face_losses",
        shipped["face_loss_steps"],
    )
    assert stage1.config.face_losses is None and face.adapter.path == f"{out1}/a"
    assert face.config.face_losses.expression_weight == shipped["expression_loss_weight"]
    assert face.config.learning_rate == shipped["face_loss_learning_rate"]
    (args,) = evaluated
    assert (
        args.pretrained_model == str(base) and len(args.row) == 2 and args.num_templates == shipped["eval_templates"]
    )
    with pytest.raises(SystemExit):  # not a pipeline folder
        recipe.parse_args([str(tmp_path), "w", "o"])
    with pytest.raises(SystemExit):
        recipe.parse_args([str(base), "w", "o", "--stage1_steps", "0"])

    trained.clear(), evaluated.clear()  # the matched comparison: row 1 only, at a given step count
    recipe.main(
        recipe.parse_args(
            [str(base), str(tmp_path / "w2"), str(tmp_path / "o2"), "--stage1_steps", "7", "--stage1_only"]
        )
    )
    ((stage1, out1, steps1),) = trained
    assert (out1.name, steps1, stage1.config.max_steps) == ("stage1", 7, 7)
    assert len(evaluated[0].row) == 1
    summary = (tmp_path / "o2" / "training.md").read_text()
    assert "--stage1_only" in summary and "| stage1_same_identity_code |" in summary
    trained.clear()  # the matched face-loss rows: a given face-loss step count on each base
    recipe.main(recipe.parse_args([str(base), str(tmp_path / "w3"), str(tmp_path / "o3"), "--face_loss_steps", "5"]))
    assert [(out.name, steps) for _, out, steps in trained] == [("stage1", shipped["steps"]), ("face_losses", 5)]
    for bad in (["--face_loss_steps", "0"], ["--face_loss_steps", "5", "--stage1_only"]):
        with pytest.raises(SystemExit):
            recipe.parse_args([str(base), "w", "o", *bad])

    trained.clear(), evaluated.clear(), anis.clear()  # the rest of the embedded default's chain: push, then ICA
    chain = ["--chain", "--push_steps", "4", "--ica_steps", "3"]
    recipe.main(recipe.parse_args([str(base), str(tmp_path / "w4"), str(tmp_path / "o4"), *chain]))
    names = [(out.name, steps) for _, out, steps in trained]
    assert names == [
        ("stage1", shipped["steps"]),
        ("face_losses", shipped["face_loss_steps"]),
        ("expression_push", 4),
        ("ica_no_alignment", 3),
    ]
    _, face, push, ica = (run for run, _, _ in trained)
    assert push.adapter.path == f"{tmp_path / 'w4' / 'face_losses'}/a" and push.config.seed == face.config.seed + 1
    assert push.config.face_losses.expression_weight == shipped["face_loss_push_expression_weight"]
    assert push.data.seed == push.adapter.seed == face.data.seed + 1
    assert push.config.face_losses.max_timestep == shipped["face_loss_max_timestep"]
    assert ica.adapter.path == f"{tmp_path / 'w4' / 'expression_push'}/a" and anis[:3] == [None] * 3
    assert anis[3] is not None and anis[3].fixed_max_timestep is None  # ICA, its bound chosen by ANI
    assert ica.config.face_losses.expression_weight == shipped["face_loss_push_expression_weight"]
    assert ica.config.face_losses.identity_weight == shipped["ica_identity_loss_weight"]
    assert ica.config.face_losses.alignment_weight == shipped["ica_push_alignment_loss_weight"]
    assert len(evaluated[0].row) == 4 and all(s.pretrained_model == str(base) for s in (push, ica))
    for bad in (["--chain", "--stage1_only"], ["--push_steps", "5"], ["--chain", "--ica_steps", "0"]):
        with pytest.raises(SystemExit):
            recipe.parse_args([str(base), "w", "o", *bad])


def test_base_attn16_script_keeps_the_shipped_vae_and_image_encoder(tmp_path):
    sys.path.insert(0, str(REPO / "synthetic" / "scripts"))
    import train_base

    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    out, collection = tmp_path / "run", tmp_path / "collection"
    collection.mkdir()
    (collection / "collection.json").write_text("{}")  # what train_base's argument check looks for
    done = subprocess.run(
        ["bash", str(REPO / "synthetic" / "scripts" / "base_attn16.sh"), str(out)],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "COLLECTION": str(collection)},
        capture_output=True,
        text=True,
        check=True,
    )
    train, export, evaluate_base = [json.loads(line) for line in done.stdout.splitlines()]
    args = train_base.parse_args(train[1:])
    assert (args.stage, args.size, args.out, args.resume) == ("unet", "attn16", out, True)
    assert train_base.parse_args(export[1:]).export_dir == out / "pipeline"
    assert evaluate_base[0].endswith("evaluate_base.py") and str(out / "pipeline") in evaluate_base
    asset = REPO / "synthetic/src/emojidiff_synthetic/assets/base"
    for kept, shipped in (("vae/final", "vae"), ("image_encoder/final/image_encoder", "image_encoder")):
        for f in (asset / shipped).iterdir():
            assert (out / kept / f.name).read_bytes() == f.read_bytes()
    assert (out / "image_encoder/final/feature_extractor/preprocessor_config.json").is_file()
    assert args.init_from is None and args.unet_steps == 3000
    warm = {"INIT_FROM": str(asset), "UNET_STEPS": "1000", "SIZE": "default"}  # the control's warm start
    done = subprocess.run(
        ["bash", str(REPO / "synthetic" / "scripts" / "base_attn16.sh"), str(out)],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "COLLECTION": str(collection), **warm},
        capture_output=True,
        text=True,
        check=True,
    )
    args = train_base.parse_args(json.loads(done.stdout.splitlines()[0])[1:])
    assert (args.init_from, args.unet_steps, args.size) == (asset, 1000, "default")


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "training" / "recipes" / f"{name}.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def test_idi_rounds_recipe_runs_a_matched_control_and_reports_the_filters(tmp_path, monkeypatch):
    recipe = load_recipe("idi_rounds")
    trained, idi_calls, evaluated = [], [], []
    monkeypatch.setattr(
        recipe.results, "train", lambda run, out, steps: trained.append((run, out, steps)) or f"{out}/adapter"
    )
    work, out = tmp_path / "work", tmp_path / "out"

    def fake_idi_rows(run, adapter, folder, settings):  # one round whose shard stats hold four scored pairs
        idi_calls.append((run, adapter, settings))
        data = folder / "round-0" / "data"
        (data / "shards").mkdir(parents=True)
        scores = [(0.03, []), (0.07, []), (0.09, ["expression"]), (0.05, ["identity_to_reference"])]
        stats = [
            {"index": i, "rejected": why, "expression_error": e, "identity_similarity": 0.5, "template_similarity": 0}
            for i, (e, why) in enumerate(scores)
        ] + [{"index": 4, "rejected": ["no_face"]}]
        (data / "shards" / "00000.stats.json").write_text(json.dumps(stats))
        (data / "round_stats.json").write_text(
            json.dumps(
                {"pairs": 5, "accepted": 2, "yield": 0.4, "rejected_by": {}, "accepted_per_compute_minute": 9.0}
            )
        )
        return {"stage1_idi_round_0": str(data.parent / "stage1" / "adapter")}

    monkeypatch.setattr(recipe.results, "idi_rows", fake_idi_rows)

    def scores(leakage, leakage_se, expression):
        return dict(identity_leakage=leakage, identity_leakage_se=leakage_se, expression_error=expression,
                    identity_similarity=0.4)  # fmt: skip

    rows = {
        "generator": scores(0.010, 0.002, 0.080),
        "same_identity_finetune": scores(0.008, 0.003, 0.090),
        "stage1_idi_round_0": scores(0.004, 0.004, 0.095),
    }
    monkeypatch.setattr(recipe.evaluate, "main", lambda args: evaluated.append(args) or {"rows": rows})
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "config.json").write_text("{}")
    argv = [str(work), str(out), "--generator", str(generator), "--rounds", "1", "--steps", "9"]
    recipe.main(recipe.parse_args(argv))

    ((control, control_out, steps),) = trained
    ((idi_run, idi_adapter, settings),) = idi_calls
    assert control.adapter.path == idi_adapter == str(generator) and control_out == work / "control" and steps == 9
    assert settings.steps_per_round == 9 and settings.rounds == 1 and settings.filters.max_expression_error == 0.08
    assert control.config.learning_rate == idi_run.config.learning_rate == 3e-4
    assert idi_run.config.num_validation == 64 and control.config.cache_dir == idi_run.config.cache_dir
    (args,) = evaluated
    assert [r.split("=")[0] for r in args.row] == ["generator", "same_identity_finetune", "stage1_idi_round_0"]
    report = json.loads((out / "idi_rounds.json").read_text())
    scores = report["rounds"][0]["scores"]
    assert scores["pairs"] == 5 and scores["scored"] == 4 and scores["quartiles"]["expression_error"][1] == 0.06
    # had the threshold been 0.08: pairs 0 and 1 pass (3 fails expression, 4 had no face, the 0.05 one identity)
    assert scores["yield_at_expression_threshold"]["0.08"] == 0.4
    assert scores["yield_at_expression_threshold"]["0.1"] == 0.6
    assert "| generator |" not in (out / "training.md").read_text()
    control_cmp, generator_cmp = report["comparisons"]
    assert control_cmp["against"] == "same_identity_finetune" and control_cmp["target_met"]  # ratio 1.056
    assert (
        control_cmp["identity_leakage_difference"] == -0.004 and control_cmp["identity_leakage_difference_se"] == 0.005
    )
    assert generator_cmp["against"] == "generator" and not generator_cmp["target_met"]  # ratio 1.19
    assert not control_cmp["leakage_se_paired"]  # these rows hold no per-template leakage
    paired_rows = {
        "a": {**rows["stage1_idi_round_0"], "identity_leakage_per_template": {"t0": 0.0, "t1": 0.01, "t2": 0.02}},
        "b": {
            **rows["same_identity_finetune"],
            "identity_leakage_per_template": {"t0": 0.004, "t1": 0.014, "t2": 0.024},
        },
    }
    paired = recipe.compare_rows(paired_rows, "a", "b")
    assert paired["leakage_se_paired"] and paired["identity_leakage_difference_se"] == 0.0  # the same -0.004 each
    assert (
        "| stage1_idi_round_0 | same_identity_finetune | -0.0040 +- 0.0050 | 1.056 |"
        in (out / "idi_rounds.md").read_text()
    )
    trained.clear(), idi_calls.clear(), evaluated.clear()  # data only: the generator's pre-filter scores, nothing else
    data_only = [str(tmp_path / "w2"), str(tmp_path / "o2"), "--generator", str(generator), "--data_only"]
    report = recipe.main(recipe.parse_args(data_only))  # one round by default
    assert not trained and not evaluated and idi_calls[0][2].steps_per_round == 0
    assert report["rounds"][0]["scores"]["scored"] == 4 and (tmp_path / "o2" / "idi_rounds.md").is_file()
    for bad in (["--rounds", "0"], ["--generator", str(tmp_path)], ["--data_only", "--rounds", "2"]):
        with pytest.raises(SystemExit):
            recipe.parse_args([str(work), str(out), *bad])


def test_idi_rounds_default_generator_is_the_embedded_model_relative_to_the_working_folder(tmp_path, monkeypatch):
    """The reports print the generator's path in their commands: relative to where the recipe runs, not absolute."""
    from emojidiff_synthetic.load import EMOJIDIFF_DIR

    idi_rounds = load_recipe("idi_rounds")
    monkeypatch.chdir(REPO)
    args = idi_rounds.parse_args([str(tmp_path / "w"), str(tmp_path / "o")])
    assert not Path(args.generator).is_absolute()
    assert (REPO / args.generator).resolve() == (EMOJIDIFF_DIR / "emoji_adapter").resolve()
    monkeypatch.chdir(tmp_path)  # outside the repository: absolute
    assert Path(idi_rounds.parse_args([str(tmp_path / "w"), str(tmp_path / "o")]).generator).is_absolute()


def test_identity_push_recipe_trains_ica_at_identity_weight_3_once_then_evaluates(tmp_path):
    """identity_push.sh: row 2e's ICA step with --identity_loss_weight 3 (skipped once trained), the harness on the
    embedded adapter at identity scales 1 / 1.5 / 2 and the new row, then training.md."""
    import evaluate

    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "python"  # records each call's argv; runs '-c' code (the recipe's expression-word list)
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        "if sys.argv[1] == '-c':\n    exec(sys.argv[2])\n    sys.exit()\n"
        "if sys.argv[1] == '-':\n    sys.stdin.read()\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    work, out = tmp_path / "work", tmp_path / "out"

    def run() -> list[list[str]]:
        log.unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "INIT": str(tmp_path / "init")}
        recipe = REPO / "training" / "recipes" / "identity_push.sh"
        subprocess.run(["bash", str(recipe), str(work), str(out)], env=env, check=True, capture_output=True)
        return [json.loads(line) for line in log.read_text().splitlines()]

    (ica,) = [c for c in run() if c[0] == "training/train_ica.py"]
    args = train_ica.parse_args(ica[1:])
    assert args.identity_loss_weight == 3 and args.alignment_loss_weight == 0 and args.expression_loss_weight == 6
    assert args.output_dir == str(work / "ica_id3") and args.adapter == str(tmp_path / "init")
    (work / "ica_id3" / "adapter").mkdir(parents=True)
    (work / "ica_id3" / "adapter" / "config.json").write_text("{}")
    calls = run()  # trained: only the evaluation and the summary
    assert [c[0] for c in calls] == ["training/evaluate.py", "-"]
    rows = dict(r.split("=", 1) for r in evaluate.parse_args(calls[0][1:]).row)
    asset = "synthetic/src/emojidiff_synthetic/assets/emojidiff/emoji_adapter"
    assert rows == {
        "shipped": asset,
        "shipped_identity_scale_1.5": f"{asset}@id=1.5",
        "shipped_identity_scale_2": f"{asset}@id=2",
        "ica_identity_weight_3": f"{work}/ica_id3/adapter",
    }
    assert evaluate.RowSpec.parse(rows["shipped_identity_scale_2"]).identity_scale == 2.0


def test_stream_rows_recipe_trains_each_stream_with_the_row_1_recipe(tmp_path, monkeypatch):
    recipe = load_recipe("stream_rows")
    trained, evaluated = [], []
    monkeypatch.setattr(
        recipe.results, "train", lambda run, out, steps: trained.append((run, out, steps)) or f"{out}/adapter"
    )
    monkeypatch.setattr(recipe.evaluate, "main", lambda args: evaluated.append(args) or {})
    code = tmp_path / "code_adapter"
    code.mkdir()
    (code / "config.json").write_text("{}")
    argv = [str(tmp_path / "w"), str(tmp_path / "o"), "--streams", "image,image_aux", "--steps", "9"]
    recipe.main(recipe.parse_args([*argv, "--code_adapter", str(code)]))
    (image, out1, steps1), (aux, out2, steps2) = trained  # the given code row is not trained again
    assert (out1.name, out2.name, steps1, steps2) == ("image", "image_aux", 9, 9)
    assert image.adapter.expression_streams == "image" and image.adapter.expression_encoder is None
    assert image.config.expression_code_loss_weight == 0 and image.adapter.resampler_queries == "learned"
    assert aux.adapter.expression_code_head and aux.adapter.resampler_queries == "grid"
    assert aux.adapter.expression_encoder == recipe.results.ENCODER  # the code the head reads back
    assert aux.config.expression_code_loss_weight > 0 and aux.config.expression_code_pretrain_steps > 0
    for run in (image, aux):  # otherwise row 1's recipe
        assert run.data.same_identity_from.endswith("train.jsonl") and run.config.early_stopping_patience == 6
    (args,) = evaluated
    assert [r.split("=")[0] for r in args.row] == [
        "stage1_same_identity_code",
        "stage1_same_identity_image",
        "stage1_same_identity_image_aux",
    ]
    assert args.row[0] == f"stage1_same_identity_code={code}"
    trained.clear()
    recipe.main(recipe.parse_args([str(tmp_path / "w2"), str(tmp_path / "o2"), "--streams", "both"]))
    assert [out.name for _, out, _ in trained] == ["code", "both"]  # no code row given: trained here
    trained.clear()  # face losses on a matched pair of stage-1 rows
    argv = [str(tmp_path / "w3"), str(tmp_path / "o3"), "--streams", "image_aux", "--code_adapter", str(code)]
    recipe.main(recipe.parse_args([*argv, "--face_losses", "code,image_aux", "--face_loss_steps", "5"]))
    shipped = json.loads((REPO / "training" / "recipes" / "synthetic_results.json").read_text())
    (_, _, _), (code_face, out_c, steps_c), (aux_face, out_a, steps_a) = trained
    assert (out_c.name, steps_c, out_a.name, steps_a) == ("code_face_losses", 5, "image_aux_face_losses", 5)
    assert code_face.adapter.path == str(code) and aux_face.adapter.path == f"{tmp_path / 'w3' / 'image_aux'}/adapter"
    for run in (code_face, aux_face):
        assert run.config.face_losses.expression_weight == shipped["expression_loss_weight"]
        assert run.config.learning_rate == shipped["face_loss_learning_rate"]
    assert aux_face.config.expression_code_loss_weight > 0 and aux_face.config.expression_code_pretrain_steps == 0
    assert code_face.config.expression_code_loss_weight == 0
    bad_args = (["--streams", "imag"], ["--streams", ""], ["--steps", "0"], ["--code_adapter", str(tmp_path)])
    bad_args += (
        ["--face_losses", "image_aux"],
        ["--face_loss_steps", "3"],
        ["--face_losses", "code", "--face_loss_steps", "0"],
    )
    for bad in bad_args:
        with pytest.raises(SystemExit):
            recipe.parse_args(["w", "o", *bad])
