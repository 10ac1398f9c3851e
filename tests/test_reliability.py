"""Reliability (issue 11): wrong, hostile or degenerate inputs are refused with the argument or file named, and a
refused run leaves the disk as it was. Table-driven: adapter loading, adapter dtype, pipeline call, run folders."""

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from face_standins import make_arcface_standin
from safetensors.torch import load_file, save_file
from tiny_models import random_identity, random_template, tiny_adapter, tiny_components, write_tiny_collection

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
from emojidiff_pipeline.train.triplets import read_triplets, write_triplets

pytest.importorskip("accelerate")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import train_decoupled  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WEIGHTS = "diffusion_pytorch_model.safetensors"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` -> a hash of its bytes ("dir" for folders)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# ----------------------------------------------------------------------------------------------- adapter loading
@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    components = tiny_components()
    root = tmp_path_factory.mktemp("adapters")
    tiny_adapter(components["unet"]).save_pretrained(root / "good")
    components["unet"].save_pretrained(root / "unet")
    return root


def edit_weights(edit):
    def mutate(folder: Path):
        weights = load_file(folder / WEIGHTS)
        edit(weights)
        save_file(weights, str(folder / WEIGHTS))

    return mutate


def edit_config(edit):
    def mutate(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))

    return mutate


def pop_last(weights):
    weights.pop(sorted(weights)[-1])


def drop_unet_keys(config):
    for key in ("identity_layers", "expression_layers"):
        config.pop(key)


# (case id, how the good adapter folder is spoiled, error type, regex the message must match besides the folder)
ADAPTER_CASES = [
    ("null tokens popped", edit_weights(lambda w: w.pop("identity_null_tokens")), ValueError,
     r"lacks the tensor 'identity_null_tokens' \(shape \(4, 64\)\)"),
    ("last tensor popped", edit_weights(pop_last), ValueError, r"lacks the tensor '.+' .*1 missing in all"),
    ("every expression key/value popped",
     edit_weights(lambda w: [w.pop(k) for k in list(w) if k.startswith("expression_kv.")]), ValueError,
     r"lacks the tensor 'expression_kv\..*missing in all"),
    ("unexpected tensor", edit_weights(lambda w: w.update({"extra.weight": torch.zeros(2)})), ValueError,
     r"holds the tensor 'extra.weight', which the adapter .* does not have"),
    ("wrong shape", edit_weights(lambda w: w.update({"identity_null_tokens": torch.zeros(3, 64)})), ValueError,
     r"'identity_null_tokens' has shape \(3, 64\) in .* but \(4, 64\)"),
    ("config lists a layer without weights",
     edit_config(lambda c: c["expression_layers"].update(
         {"mid_block.attentions.0.transformer_blocks.0.attn2.processor": 64})),
     ValueError, r"lacks the tensor 'expression_kv\.mid_block__attentions__0"),
    ("config of another token count", edit_config(lambda c: c.update(num_identity_tokens=2)), ValueError,
     r"has shape \(4, 64\) in .* but \(2, 64\)|shape"),
    ("config not an adapter's", edit_config(drop_unet_keys), ValueError,
     r"is not an EmojiDiff adapter folder: its config.json has no \['identity_layers', 'expression_layers'\]"),
    ("truncated weights", lambda f: truncate(f / WEIGHTS), OSError,
     r"cannot be read as safetensors.*corrupt or truncated"),
    ("no weights file", lambda f: (f / WEIGHTS).unlink(), OSError, r"diffusion_pytorch_model.safetensors"),
]  # fmt: skip


@pytest.mark.parametrize("mutate, error, message", [c[1:] for c in ADAPTER_CASES], ids=[c[0] for c in ADAPTER_CASES])
def test_spoiled_adapter_folder_is_refused(saved_adapter, tmp_path, mutate, error, message):
    folder = tmp_path / "adapter"
    shutil.copytree(saved_adapter / "good", folder)
    mutate(folder)
    before = snapshot(folder)
    with pytest.raises(error, match=message) as info:
        EmojiDiffAdapter.from_pretrained(folder)
    assert str(folder) in str(info.value)
    assert snapshot(folder) == before


def test_unet_folder_as_adapter_says_so(saved_adapter):
    with pytest.raises(
        ValueError, match=r"is not an EmojiDiff adapter folder.*describes a UNet2DConditionModel"
    ) as info:
        EmojiDiffAdapter.from_pretrained(saved_adapter / "unet")
    assert str(saved_adapter / "unet") in str(info.value)
    with pytest.raises(ValueError, match=r"\(subfolder 'unet'\) is not an EmojiDiff adapter folder"):
        EmojiDiffAdapter.from_pretrained(saved_adapter, subfolder="unet")


def test_good_adapter_still_loads_exactly(saved_adapter):
    loaded = EmojiDiffAdapter.from_pretrained(saved_adapter / "good")
    stored = load_file(saved_adapter / "good" / WEIGHTS)
    state = loaded.state_dict()
    assert set(state) == set(stored) and all(torch.equal(state[k], stored[k]) for k in stored)
    assert not any(p.is_meta for p in loaded.parameters())


# ----------------------------------------------------------------------------------------------- adapter dtype
def to_bf16_then_set(pipe, adapter):
    pipe.to(torch.bfloat16)
    pipe.set_emoji_adapter(adapter)


def set_then_to_bf16(pipe, adapter):
    pipe.set_emoji_adapter(adapter)
    pipe.to(torch.bfloat16)


def adapter_left_in_fp32(pipe, adapter):
    to_bf16_then_set(pipe, adapter)
    torch.nn.Module.to(adapter, dtype=torch.float32)


def back_to_fp32(pipe, adapter):
    to_bf16_then_set(pipe, adapter)
    pipe.to(torch.float32)


DTYPE_CASES = [
    ("to(bf16) then set", to_bf16_then_set, torch.bfloat16, torch.bfloat16),
    ("set then to(bf16)", set_then_to_bf16, torch.bfloat16, torch.bfloat16),
    ("adapter left in fp32", adapter_left_in_fp32, torch.float32, torch.bfloat16),
    ("bf16 then back to fp32", back_to_fp32, torch.float32, torch.float32),
]


@pytest.mark.parametrize(
    "order, adapter_dtype, unet_dtype", [c[1:] for c in DTYPE_CASES], ids=[c[0] for c in DTYPE_CASES]
)
def test_adapter_follows_pipeline_dtype_in_any_order(order, adapter_dtype, unet_dtype):
    components = tiny_components()
    adapter = tiny_adapter(components["unet"])  # fp32, as EmojiDiffAdapter.from_pretrained gives it
    pipe = EmojiDiffPipeline(**components)
    order(pipe, adapter)
    assert pipe.emoji_adapter.dtype == adapter_dtype and pipe.unet.dtype == unet_dtype
    out = pipe(
        "a face",
        identity_embeds=random_identity(),
        expression_image=random_template(),
        num_inference_steps=1,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.dtype == unet_dtype and torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------------------------- pipeline call
@pytest.fixture(scope="module")
def pipe():
    components = tiny_components()
    return EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))


def call(pipe, **kwargs):
    kwargs.setdefault("prompt", "a face")
    kwargs.setdefault("num_inference_steps", 1)
    kwargs.setdefault("output_type", "latent")
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


ID, TPL = random_identity(), random_template()
NAN_ID = ID.clone()
NAN_ID[0, 0, 7] = float("nan")
TWO_REFS_ONE_ZERO = torch.cat([random_identity(), torch.zeros(1, 1, 512)], dim=1)
INF_MASK = np.ones((8, 8), np.float32)
INF_MASK[2, 3] = np.inf
NAN, INF = float("nan"), float("inf")

# (case id, keyword arguments, error type, regex the message must match)
CALL_CASES = [
    ("identity NaN", dict(identity_embeds=NAN_ID), ValueError,
     r"`identity_embeds` holds NaN or inf values \(first at \[0, 0\]\)"),
    ("identity inf", dict(identity_embeds=ID * INF), ValueError, r"`identity_embeds` holds NaN or inf"),
    ("expression NaN", dict(expression_embeds=torch.full((1, 17, 32), NAN)), ValueError,
     r"`expression_embeds` holds NaN or inf"),
    ("expression -inf", dict(expression_embeds=torch.full((1, 17, 32), -INF)), ValueError,
     r"`expression_embeds` holds NaN or inf"),
    ("mask NaN", dict(expression_image=TPL, expression_mask=np.full((8, 8), np.nan)), ValueError,
     r"`expression_mask` holds NaN or inf"),
    ("mask inf tensor", dict(expression_image=TPL, expression_mask=torch.as_tensor(INF_MASK)), ValueError,
     r"`expression_mask` holds NaN or inf values \(1 of them\)"),
    ("mask file name", dict(expression_image=TPL, expression_mask="mask.png"), ValueError,
     r"`expression_mask` must be a PIL image.*got str \(open the file first\)"),
    ("mask of strings", dict(expression_image=TPL, expression_mask=np.array([["a"]])), ValueError,
     r"`expression_mask` must hold numbers"),
    ("empty reference axis", dict(identity_embeds=torch.zeros(1, 0, 512)), ValueError,
     r"`identity_embeds` is empty: got shape \(1, 0, 512\)"),
    ("empty template tokens", dict(expression_embeds=torch.zeros(1, 0, 32)), ValueError,
     r"`expression_embeds` is empty"),
    ("zero-norm identity", dict(identity_embeds=torch.zeros(1, 1, 512)), ValueError,
     r"`identity_embeds`\[0, 0\] is a zero vector"),
    ("one zero-norm reference", dict(identity_embeds=TWO_REFS_ONE_ZERO), ValueError,
     r"`identity_embeds`\[0, 1\] is a zero vector"),
    ("integer identity", dict(identity_embeds=torch.ones(1, 1, 512, dtype=torch.int64)), ValueError,
     r"`identity_embeds` must be a floating-point tensor, got dtype torch.int64"),
    ("bool expression", dict(expression_embeds=torch.ones(1, 17, 32, dtype=torch.bool)), ValueError,
     r"`expression_embeds` must be a floating-point tensor, got dtype torch.bool"),
    ("identity scale inf", dict(identity_embeds=ID, identity_scale=INF), ValueError,
     r"`identity_scale` must be a finite number >= 0, got inf"),
    ("identity scale NaN", dict(identity_embeds=ID, identity_scale=NAN), ValueError,
     r"`identity_scale` must be a finite number >= 0, got nan"),
    ("expression scale -inf", dict(expression_image=TPL, expression_scale=-INF), ValueError,
     r"`expression_scale` must be a finite number"),
    ("numpy scale negative", dict(identity_embeds=ID, identity_scale=np.float32(-0.5)), ValueError,
     r"`identity_scale` must be >= 0, got -0.5"),
    ("numpy bool scale", dict(identity_embeds=ID, identity_scale=np.bool_(True)), ValueError,
     r"`identity_scale` must be a number or a per-block dict"),
    ("block dict inf", dict(identity_embeds=ID, identity_scale={"up": INF}), ValueError,
     r"`identity_scale` must hold finite numbers, got inf at up.block_0\[0\]"),
    ("block list NaN", dict(expression_image=TPL, expression_scale={"up": {"block_0": [1.0, NAN, 1.0]}}), ValueError,
     r"`expression_scale` must hold finite numbers, got nan at up.block_0\[1\]"),
    ("block dict negative", dict(identity_embeds=ID, identity_scale={"down": {"block_1": -1.0}}), ValueError,
     r"`identity_scale` must be >= 0, got -1.0 for layer 'down_blocks.1"),
    ("typo expression_image", dict(expresion_image=TPL), TypeError,
     r"unexpected keyword argument `expresion_image`\. Did you mean `expression_image`\?"),
    ("typo identity_scale", dict(identity_embeds=ID, identiy_scale=0.0), TypeError,
     r"`identiy_scale`\. Did you mean `identity_scale`\?"),
    ("typo parent argument", dict(negative_promt="blurry"), TypeError,
     r"`negative_promt`\. Did you mean `negative_prompt`\?"),
    ("unrelated name", dict(qqqq=1), TypeError, r"unexpected keyword argument `qqqq`\. Valid names: \["),
    ("init image", dict(image=TPL), TypeError,
     r"EmojiDiffPipeline is text-to-image and takes no init image.*\(`image`\)"),
    ("img2img strength", dict(strength=0.5), TypeError, r"takes no init image or inpainting input \(`strength`\)"),
    ("inpainting mask", dict(mask_image=TPL), TypeError, r"\(`mask_image`\)"),
    ("controlnet image", dict(control_image=TPL), TypeError, r"has no ControlNet, so it takes no `control_image`"),
    ("controlnet scale", dict(controlnet_conditioning_scale=0.5), TypeError,
     r"takes no `controlnet_conditioning_scale`"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, error, message", [c[1:] for c in CALL_CASES], ids=[c[0] for c in CALL_CASES])
def test_wrong_call_inputs_are_refused(pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        call(pipe, **kwargs)


def test_unknown_argument_refused_without_adapter():
    plain = EmojiDiffPipeline(**tiny_components())
    with pytest.raises(TypeError, match=r"`num_inference_step`\. Did you mean `num_inference_steps`\?"):
        plain("a face", num_inference_step=1)


@pytest.mark.parametrize(
    "scale",
    [np.float32(0.5), np.float64(0.5), {"up": np.float32(0.5), "down": np.float16(0.5)}],
    ids=["float32", "float64", "block dict of numpy"],
)
def test_numpy_scalars_are_scales(pipe, scale):
    inputs = dict(identity_embeds=ID, expression_image=TPL)
    expected = 0.5 if not isinstance(scale, dict) else {"up": 0.5, "down": 0.5}
    reference = call(pipe, identity_scale=expected, expression_scale=expected, **inputs)
    assert torch.equal(call(pipe, identity_scale=scale, expression_scale=scale, **inputs), reference)


# ----------------------------------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base, recognizer and collection, and a finished 4-step run with checkpoints 2 and 4."""
    root = tmp_path_factory.mktemp("runs")
    EmojiDiffPipeline(**tiny_components()).save_pretrained(root / "base")
    make_arcface_standin(root / "arcface.onnx", seed=1)
    write_tiny_collection(root, num_identities=2, photos_per_identity=3)
    losses = train_decoupled.main(args_for(root, root / "run", "--max_steps", "4"))
    return root, losses


def args_for(root, out, *extra):
    folders = ["--pretrained_model", str(root / "base"), "--same_identity_from", str(root / "train.jsonl")]
    folders += ["--recognizer", str(root / "arcface.onnx"), "--output_dir", str(out)]
    sizes = "--resolution 64 --batch_size 2 --checkpointing_steps 2 --learning_rate 1e-3 --resampler_depth 1"
    sizes += " --num_expression_tokens 4"
    return train_decoupled.parse_args([*folders, *sizes.split(), *extra])


@pytest.fixture
def run_copy(world, tmp_path):
    """The finished run, moved: its triplets.jsonl (paths relative to the run) rewritten as the script would."""
    root, _ = world
    shutil.copytree(root / "run", tmp_path / "run")
    write_triplets(read_triplets(root / "run" / "triplets.jsonl"), tmp_path / "run" / "triplets.jsonl")
    return tmp_path / "run"


def make(*names):
    def mutate(run: Path):
        for name in names:
            path = run / name
            if name.endswith(".jsonl"):
                path.write_text('{"step": 0, "loss": 1.0}\n')
            else:
                path.mkdir()
                (path / "config.json").write_text("{}")

    return mutate


# (case id, what an existing folder holds, regex the message must match)
FRESH_RUN_CASES = [
    ("checkpoints", make("checkpoint-8"), r"already holds a training run \(checkpoint-8\)"),
    ("adapter", make("adapter"), r"\(adapter\)"),
    ("loss log", make("loss_log.jsonl"), r"\(loss_log.jsonl\)"),
    ("validation log and best adapter", make("val_log.jsonl", "best_adapter"), r"\(best_adapter, val_log.jsonl\)"),
    ("half-saved checkpoint", make("checkpoint-4.tmp"), r"\(checkpoint-4.tmp\)"),
]


@pytest.mark.parametrize("fill, message", [c[1:] for c in FRESH_RUN_CASES], ids=[c[0] for c in FRESH_RUN_CASES])
def test_fresh_run_into_a_used_folder_is_refused(world, tmp_path, fill, message):
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    fill(out)
    before = snapshot(out)
    with pytest.raises(FileExistsError, match=message) as info:
        train_decoupled.main(args_for(world[0], out, "--max_steps", "2"))
    assert str(out) in str(info.value) and "--overwrite_output_dir" in str(info.value)
    assert snapshot(out) == before


def test_finished_run_is_refused_then_overwritten_only_when_asked(world, run_copy):
    before = snapshot(run_copy)
    with pytest.raises(FileExistsError, match=r"adapter, checkpoint-2, checkpoint-4, loss_log.jsonl"):
        train_decoupled.main(args_for(world[0], run_copy, "--max_steps", "2"))
    assert snapshot(run_copy) == before
    losses = train_decoupled.main(args_for(world[0], run_copy, "--max_steps", "2", "--overwrite_output_dir"))
    assert losses == world[1][:2]
    assert not (run_copy / "checkpoint-4").exists() and (run_copy / "checkpoint-2").is_dir()
    assert [json.loads(x)["step"] for x in (run_copy / "loss_log.jsonl").read_text().splitlines()] == [0, 1]
    final, ckpt = (load_file(run_copy / p / WEIGHTS) for p in ("adapter", "checkpoint-2/adapter"))
    assert all(torch.equal(final[k], ckpt[k]) for k in final)  # the new run's adapter, not the old one


def spoil(path: str, how):
    return lambda run: how(run / path)


def torn_middle_line(path: Path):
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:12]
    path.write_text("\n".join(lines) + "\n")


def drop_files(*paths):
    def mutate(run: Path):
        for p in paths:
            (run / p).unlink()

    return mutate


LATEST = ("--resume_from_checkpoint", "latest")
# (case id, how the finished run is spoiled, extra arguments, error type, regex the message must match)
RESUME_CASES = [
    ("truncated optimizer", spoil("checkpoint-4/optimizer.safetensors", truncate), LATEST, OSError,
     r"checkpoint-4/optimizer.safetensors cannot be read"),
    ("truncated state.json", spoil("checkpoint-4/state.json", truncate), LATEST, ValueError,
     r"checkpoint-4/state.json is not a valid state file"),
    ("truncated adapter weights", spoil(f"checkpoint-4/adapter/{WEIGHTS}", truncate), LATEST, OSError,
     rf"checkpoint-4/adapter/{WEIGHTS} cannot be read"),
    ("another adapter configuration", lambda run: None, (*LATEST, "--num_expression_tokens", "8"), ValueError,
     rf"checkpoint-4/adapter/{WEIGHTS} .*this run's adapter"),
    ("torn middle log line", spoil("loss_log.jsonl", torn_middle_line), LATEST, ValueError,
     r"loss_log.jsonl:2: cannot read this log line"),
    ("every checkpoint incomplete", drop_files("checkpoint-2/state.json", "checkpoint-4/optimizer.safetensors"),
     LATEST, FileNotFoundError, r"every checkpoint-\* folder in .* is incomplete"),
]  # fmt: skip


@pytest.mark.parametrize(
    "mutate, extra, error, message", [c[1:] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES]
)
def test_broken_resume_names_the_file_and_changes_nothing(world, run_copy, mutate, extra, error, message):
    mutate(run_copy)
    before = snapshot(run_copy)
    with pytest.raises(error, match=message):
        train_decoupled.main(args_for(world[0], run_copy, "--max_steps", "4", *extra))
    assert snapshot(run_copy) == before


def test_explicit_incomplete_checkpoint_is_named(world, run_copy):
    (run_copy / "checkpoint-2" / "optimizer.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"checkpoint-2'? is not a complete checkpoint folder: it has no optimizer"
    ):
        train_decoupled.main(
            args_for(
                world[0], run_copy, "--max_steps", "4", "--resume_from_checkpoint", str(run_copy / "checkpoint-2")
            )
        )


def test_resume_tolerates_a_torn_last_line_and_skips_an_incomplete_checkpoint(world, run_copy, caplog):
    (run_copy / "checkpoint-4" / "optimizer.safetensors").unlink()
    log = run_copy / "loss_log.jsonl"
    log.write_text("\n".join(log.read_text().splitlines()[:3]) + '\n{"step": 3, "lo')  # killed while appending
    with caplog.at_level(logging.WARNING, logger="emojidiff_pipeline.train"):
        resumed = train_decoupled.main(args_for(world[0], run_copy, "--max_steps", "4", *LATEST))
    assert resumed == world[1][2:]  # from checkpoint-2, bit-identical to the uninterrupted run
    assert any("checkpoint-4" in r.getMessage() and "optimizer.safetensors" in r.getMessage() for r in caplog.records)
    assert [json.loads(x)["loss"] for x in log.read_text().splitlines()] == world[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": []}, "`prompt` is an empty list"),
        ({"expression_image": np.zeros((0, 0, 3), np.uint8)}, "`expression_image` is empty"),
        ({"expression_image": PIL.Image.new("RGB", (0, 0))}, "`expression_image` is empty"),
        ({"expression_mask": np.ones((64, 64), np.float32)}, "`expression_mask` was given without an expression"),
    ],
)
def test_edge_inputs_are_refused_before_library_internals(kwargs, match):
    """Issue 11, class 11: edge inputs get an error naming the argument, not a tokenizer or transformers error."""
    components = tiny_components()
    pipe = EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))
    call = {"prompt": "a face", "identity_embeds": random_identity(), "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(**call)


@pytest.mark.parametrize("spec", ["a@exp=-1", "a@exp=nan", "a@exp=inf", "a@exp=x"])
def test_evaluate_row_scales_are_checked_at_parse_time(spec):
    """Issue 11, class 13: a bad '@exp=' scale is refused before any model loads, naming the --row spec."""
    import evaluate

    with pytest.raises(SystemExit):
        evaluate.parse_args(["--row", f"r={spec}"])
    with pytest.raises(ValueError, match=f"--row spec '{spec}'"):
        evaluate.parse_row_spec(spec)


@pytest.mark.parametrize("path", ["runs_here/missing_adapter", "./missing", "/nonexistent/run/adapter", "a/b/c"])
def test_missing_local_adapter_folder_fails_at_once_without_hub_lookup(path, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs_here").mkdir()
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a) or 1 / 0)
    with pytest.raises(FileNotFoundError, match="this local path does not exist"):
        EmojiDiffAdapter.from_pretrained(path)
    assert calls == []
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file, not an adapter folder"):
        EmojiDiffAdapter.from_pretrained("f.txt")
