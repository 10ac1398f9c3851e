"""training/ship.py picks the embedded default from evaluated results files by the driver's rule and exports it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import ship  # noqa: E402


def evaluated(identity, expression, se=0.003):
    return {
        "identity_similarity": identity,
        "identity_similarity_se": 0.005,
        "expression_error": expression,
        "expression_error_se": se,
        "identity_leakage": 0.004,
    }


def write_results(
    path: Path, rows: dict[str, tuple[str, dict]], neutral: float = 0.081, base: Path | None = None
) -> str:
    """A results.json as evaluate.py writes it; with `base`, scored on that pipeline folder (recorded as
    evaluate.py records it), else an older file's way: no record, the command names no base (the package's)."""
    from emojidiff_pipeline.evaluation import base_record

    command = "python training/evaluate.py " + " ".join(f"--row {n}={spec}" for n, (spec, _) in rows.items())
    res = {
        "rows": {n: r for n, (_, r) in rows.items()},
        "cases": "16 held-out identities x 64 held-out templates",
        "same_person_identity_similarity": 0.8929,
        "reference_lines": {"ref_neutral_face": evaluated(0.891, neutral)},
        "command": command + " --out x --num_identities 16",
    }
    if base is not None:
        res["base_model"] = base_record(base)
        res["command"] += f" --pretrained_model {base}"
    path.write_text(json.dumps(res))
    return str(path)


def test_ship_merges_files_applies_the_rule_and_exports_the_choice_with_its_records(tmp_path):
    import torch
    from safetensors.torch import load_file
    from tiny_models import tiny_adapter, tiny_components

    from emojidiff_pipeline import EmojiDiffAdapter

    adapter_dir = tmp_path / "ica" / "adapter"
    tiny_adapter(tiny_components()["unet"]).save_pretrained(adapter_dir)
    (adapter_dir / "ani.json").write_text(json.dumps({"max_timestep": 500}))
    a = write_results(tmp_path / "a.json", {"pushed": ("runs/pushed", evaluated(0.366, 0.077))})
    b = write_results(tmp_path / "b.json", {"ica": (str(adapter_dir), evaluated(0.406, 0.079))}, neutral=0.08100001)
    args = ship.parse_args(
        ["--results", a, "--results", b, "--export", str(tmp_path / "asset"), "--out", str(tmp_path)]
    )
    assert ship.main(args) == str(adapter_dir)  # inside one SE of the best expression, more identity
    exported = tmp_path / "asset" / "emoji_adapter"
    assert json.loads((exported / "ani.json").read_text()) == {"max_timestep": 500}
    weights = load_file(exported / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float16}
    EmojiDiffAdapter.from_pretrained(exported)
    record = json.loads((tmp_path / "shipped.json").read_text())
    assert record["shipped_row"] == "ica" and record["rows"] == {"pushed": "runs/pushed", "ica": str(adapter_dir)}
    assert "**ica**" in (tmp_path / "shipped.md").read_text()
    targets = json.loads((tmp_path / "shipped_targets.json").read_text())["targets"]
    assert targets[0]["target"] == "expression error of the final model (ica)" and targets[0]["measured"] == 0.079
    assert (
        "| expression error of the final model (ica) | 0.079 | <= 0.07 | no |"
        in (tmp_path / "shipped_targets.md").read_text()
    )


def test_ship_refuses_results_scored_on_other_cases_and_one_name_for_two_adapters(tmp_path):
    a = write_results(tmp_path / "a.json", {"pushed": ("runs/pushed", evaluated(0.366, 0.077))})
    other = write_results(tmp_path / "o.json", {"ica": ("runs/ica", evaluated(0.4, 0.079))}, neutral=0.09)
    with pytest.raises(ValueError, match="not scored on the same cases"):
        ship.merge_results([a, other])
    clash = write_results(tmp_path / "c.json", {"pushed": ("runs/elsewhere", evaluated(0.4, 0.07))})
    with pytest.raises(ValueError, match="'pushed' is 'runs/pushed'"):
        ship.merge_results([a, clash])
    with pytest.raises(SystemExit):
        ship.parse_args(["--results", str(tmp_path / "missing.json")])


def test_row_specs_reads_both_flag_spellings():
    command = "python training/evaluate.py --row a=runs/x@exp=2 --row=b=base --out d"
    assert ship.row_specs(command) == {"a": "runs/x@exp=2", "b": "base"}


def test_ship_compares_the_reference_lines_both_files_have(tmp_path):
    """A reference line added to the harness later (the VAE ceiling) does not split old and new evaluations; the
    lines they share must still agree, and files with no line in common are refused."""
    old = write_results(tmp_path / "old.json", {"pushed": ("runs/pushed", evaluated(0.366, 0.077))})
    new_path = tmp_path / "new.json"
    write_results(new_path, {"ica": ("runs/ica", evaluated(0.4, 0.079))})
    res = json.loads(new_path.read_text())
    res["reference_lines"]["ref_perfect_through_vae"] = evaluated(0.7, 0.03)
    new_path.write_text(json.dumps(res))
    merged, specs, _ = ship.merge_results([old, str(new_path)])
    assert set(specs) == {"pushed", "ica"}
    res["reference_lines"] = {"ref_perfect_through_vae": evaluated(0.7, 0.03)}
    new_path.write_text(json.dumps(res))
    with pytest.raises(ValueError, match="not scored on the same cases"):
        ship.merge_results([old, str(new_path)])


def fake_base(folder: Path, unet_bytes: bytes) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(unet_bytes)
    return folder


def test_ship_refuses_rows_scored_on_two_bases(tmp_path):
    fake_base(tmp_path / "b1", b"old unet")
    fake_base(tmp_path / "b2", b"new unet")
    a = write_results(tmp_path / "a.json", {"pushed": ("runs/p", evaluated(0.37, 0.077))}, base=tmp_path / "b1")
    b = write_results(tmp_path / "b.json", {"ica": ("runs/i", evaluated(0.41, 0.079))}, base=tmp_path / "b2")
    with pytest.raises(ValueError, match=r"b\.json was scored on base .*b2.* but .*a\.json on .*b1"):
        ship.merge_results([a, b])
    run = subprocess.run(  # the command line says it in one line, without a traceback
        [sys.executable, str(REPO / "training" / "ship.py"), "--results", a, "--results", b, "--dry_run"],
        capture_output=True,
        text=True,
    )
    assert (
        run.returncode == 1 and run.stderr.startswith("ship.py: error: --results:") and "Traceback" not in run.stderr
    )
    same = write_results(tmp_path / "c.json", {"ica": ("runs/i", evaluated(0.41, 0.079))}, base=tmp_path / "b1")
    assert ship.merge_results([a, same])[0]["base_model"]["pretrained_model"] == str(tmp_path / "b1")


def test_an_older_results_file_is_on_the_base_its_command_names(tmp_path):
    """Files written before evaluate.py recorded its base: the command's --pretrained_model, else the package's."""
    from emojidiff_pipeline.evaluation import folder_digest
    from emojidiff_synthetic import load

    fake_base(tmp_path / "b1", b"unet")
    named = {"command": f"python training/evaluate.py --row a=x --pretrained_model={tmp_path / 'b1'}"}
    assert ship.results_base(named)["digest"] == folder_digest(tmp_path / "b1")
    assert ship.results_base({"command": "python training/evaluate.py --row a=x"})["digest"] == folder_digest(
        load.BASE_DIR
    )


def test_shipping_rows_of_another_base_to_the_package_needs_ship_base_and_replaces_the_base(tmp_path, monkeypatch):
    from tiny_models import tiny_adapter, tiny_components

    from emojidiff_pipeline.evaluation import folder_digest
    from emojidiff_synthetic import load

    package = fake_base(tmp_path / "package" / "base", b"old unet")
    monkeypatch.setattr(load, "BASE_DIR", package)
    monkeypatch.setattr(load, "EMOJIDIFF_DIR", tmp_path / "package" / "emojidiff")
    new = fake_base(tmp_path / "runs" / "pipeline", b"new unet")
    (new / ".cache").mkdir()  # a Hub cache's bookkeeping: neither digested nor copied
    adapter_dir = tmp_path / "ica" / "adapter"
    tiny_adapter(tiny_components()["unet"]).save_pretrained(adapter_dir)
    a = write_results(tmp_path / "a.json", {"ica": (str(adapter_dir), evaluated(0.41, 0.079))}, base=new)
    out = ["--out", str(tmp_path / "docs")]
    with pytest.raises(ValueError, match="pass --ship_base"):
        ship.main(ship.parse_args(["--results", a, *out]))
    assert folder_digest(package) != folder_digest(new) and not load.EMOJIDIFF_DIR.exists()
    ship.main(ship.parse_args(["--results", a, "--ship_base", "--dry_run", *out]))
    assert folder_digest(package) != folder_digest(new)  # a dry run changes nothing
    assert ship.main(ship.parse_args(["--results", a, "--ship_base", *out])) == str(adapter_dir)
    assert folder_digest(package) == folder_digest(new) and not (package / ".cache").exists()
    assert (load.EMOJIDIFF_DIR / "emoji_adapter" / "config.json").is_file()
    record = json.loads((tmp_path / "docs" / "shipped.json").read_text())
    assert record["base_model"] == {"pretrained_model": str(new), "digest": folder_digest(new)}
    # now the package's base is the rows' base: no --ship_base needed
    ship.main(ship.parse_args(["--results", a, *out]))
    (new / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"retrained")
    fake_base(tmp_path / "other", b"other")
    b = write_results(tmp_path / "b.json", {"ica": (str(adapter_dir), evaluated(0.41, 0.079))}, base=new)
    res = json.loads(Path(b).read_text())
    res["base_model"]["digest"] = folder_digest(tmp_path / "other")  # scored before the retraining
    Path(b).write_text(json.dumps(res))
    with pytest.raises(ValueError, match="changed since the rows were scored"):
        ship.main(ship.parse_args(["--results", b, "--ship_base", *out]))
    with pytest.raises(SystemExit):
        ship.parse_args(["--results", a, "--ship_base", "--export", str(tmp_path / "x")])
