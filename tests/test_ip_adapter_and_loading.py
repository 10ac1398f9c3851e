"""diffusers' IP-Adapter beside EmojiDiff (both load orders, unloading either), the loader API (load_emoji_adapter,
dtype/device), `DiffusionPipeline.from_pretrained` on a saved folder, and the model card."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from tiny_models import random_identity, random_template, tiny_adapter, tiny_components, write_tiny_ip_adapter

from emojidiff_pipeline import EmojiDiffAttnProcessor, EmojiDiffImg2ImgPipeline, EmojiDiffPipeline

INPUTS = dict(identity_embeds=random_identity(), expression_image=random_template())
IP_IMAGE = PIL.Image.fromarray(random_template(9, 32))


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", "a smiling face")
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def ip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ip")
    write_tiny_ip_adapter(folder, tiny_components()["unet"])
    return folder


def load_ip(pipe, folder):
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name="ip_adapter.safetensors", image_encoder_folder=None)


@pytest.fixture(scope="module")
def reference(ip_folder, one_torch_thread):
    """Outputs of plain SDXL + IP-Adapter, and of EmojiDiff alone, on the same tiny components."""
    components = tiny_components()
    sdxl = StableDiffusionXLPipeline(**components)
    load_ip(sdxl, ip_folder)
    ip_only = run(sdxl, ip_adapter_image=IP_IMAGE)
    emoji = EmojiDiffPipeline(**tiny_components(), emoji_adapter=tiny_adapter(components["unet"]))
    return {"ip": ip_only, "emoji": run(emoji, **INPUTS), "base": run(emoji)}


@pytest.mark.parametrize("order", ["ip_adapter_first", "emojidiff_first"])
def test_ip_adapter_beside_emojidiff(order, ip_folder, reference):
    components = tiny_components()
    adapter = tiny_adapter(components["unet"])
    if order == "ip_adapter_first":
        pipe = EmojiDiffPipeline(**components)
        load_ip(pipe, ip_folder)
        pipe.set_emoji_adapter(adapter)
    else:
        pipe = EmojiDiffPipeline(**components, emoji_adapter=adapter)
        load_ip(pipe, ip_folder)
    procs = pipe.unet.attn_processors
    adapted = set(adapter.identity_layer_names) | set(adapter.expression_layer_names)
    assert all(
        isinstance(procs[n], EmojiDiffAttnProcessor) and isinstance(procs[n], IPAdapterAttnProcessor2_0)
        for n in adapted
    )
    # the IP-Adapter weights stay in the UNet, under diffusers' own names
    assert any(k.endswith("attn2.processor.to_k_ip.0.weight") for k in pipe.unet.state_dict())

    both = run(pipe, ip_adapter_image=IP_IMAGE, **INPUTS)
    assert (
        np.abs(
            run(pipe, ip_adapter_image=IP_IMAGE, identity_scale=0.0, expression_scale=0.0, **INPUTS) - reference["ip"]
        ).max()
        <= 1e-5
    )
    pipe.set_ip_adapter_scale(0.0)
    assert np.abs(run(pipe, ip_adapter_image=IP_IMAGE, **INPUTS) - reference["emoji"]).max() <= 1e-5
    pipe.set_ip_adapter_scale(1.0)
    assert np.abs(both - reference["ip"]).max() > 1e-3 and np.abs(both - reference["emoji"]).max() > 1e-3

    if order == "ip_adapter_first":  # unloading EmojiDiff leaves the IP-Adapter working
        pipe.unload_emoji_adapter()
        assert np.abs(run(pipe, ip_adapter_image=IP_IMAGE) - reference["ip"]).max() <= 1e-5
        assert all(type(p) is IPAdapterAttnProcessor2_0 for n, p in pipe.unet.attn_processors.items() if n in adapted)
    else:  # unloading the IP-Adapter leaves EmojiDiff working, image encoder included
        pipe.unload_ip_adapter()
        assert pipe.image_encoder is not None
        assert np.abs(run(pipe, **INPUTS) - reference["emoji"]).max() <= 1e-5


def test_load_emoji_adapter_subfolder_weight_name_and_errors(tmp_path, one_torch_thread):
    components = tiny_components()
    adapter = tiny_adapter(components["unet"])
    EmojiDiffPipeline(**tiny_components(), emoji_adapter=adapter).save_pretrained(tmp_path / "pipe")
    adapter.save_pretrained(tmp_path / "renamed")
    (tmp_path / "renamed" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "renamed" / "emoji.safetensors")

    pipe = EmojiDiffImg2ImgPipeline(**components)
    loaded = pipe.load_emoji_adapter(tmp_path / "pipe", subfolder="emoji_adapter")
    assert pipe.emoji_adapter is loaded
    expected = {k: v.clone() for k, v in loaded.state_dict().items()}
    pipe.unload_emoji_adapter()
    assert pipe.emoji_adapter is None
    assert not any(isinstance(p, EmojiDiffAttnProcessor) for p in pipe.unet.attn_processors.values())
    renamed = pipe.load_emoji_adapter(tmp_path / "renamed", weight_name="emoji.safetensors")
    for k, v in renamed.state_dict().items():
        torch.testing.assert_close(v, expected[k])
    with pytest.raises(FileNotFoundError, match=r"pass `subfolder='emoji_adapter'`"):
        pipe.load_emoji_adapter(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"`weight_name` must name a \.safetensors file"):
        pipe.load_emoji_adapter(tmp_path / "renamed", weight_name="emoji.bin")
    with pytest.raises(OSError, match=r"missing\.safetensors"):
        pipe.load_emoji_adapter(tmp_path / "renamed", weight_name="missing.safetensors")


@pytest.mark.parametrize("adapter_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pipe_dtype", [torch.float32, torch.bfloat16])
def test_adapter_follows_the_unet_dtype(tmp_path, adapter_dtype, pipe_dtype, one_torch_thread):
    components = tiny_components()
    tiny_adapter(components["unet"]).to(adapter_dtype).save_pretrained(tmp_path / "adapter")
    # .to() before attaching: the adapter takes the UNet's dtype and device
    pipe = EmojiDiffPipeline(**components).to(pipe_dtype)
    pipe.load_emoji_adapter(tmp_path / "adapter")
    assert pipe.emoji_adapter.dtype == pipe_dtype and pipe.emoji_adapter.device == pipe.unet.device
    out = run(pipe, num_inference_steps=1, output_type="pt", **INPUTS)
    assert torch.isfinite(out).all()
    # .to() after attaching moves the adapter with the rest
    pipe.to(torch.float32)
    assert pipe.emoji_adapter.dtype == torch.float32
    # an explicit torch_dtype keeps the adapter in it; key/values still reach the UNet in its dtype
    pipe.to(pipe_dtype)
    pipe.load_emoji_adapter(tmp_path / "adapter", torch_dtype=torch.float32)
    assert pipe.emoji_adapter.dtype == torch.float32
    assert torch.isfinite(run(pipe, num_inference_steps=1, output_type="pt", **INPUTS)).all()


def test_diffusion_pipeline_from_pretrained_after_import(tmp_path, one_torch_thread):
    components = tiny_components()
    EmojiDiffImg2ImgPipeline(**components, emoji_adapter=tiny_adapter(components["unet"])).save_pretrained(tmp_path)
    for first in ("import emojidiff_pipeline\nimport diffusers\n", "import diffusers\nimport emojidiff_pipeline\n"):
        code = first + (
            "import sys\n"
            "assert 'emojidiff_pipeline.pipeline' not in sys.modules  # announced lazily\n"
            f"pipe = diffusers.DiffusionPipeline.from_pretrained({str(tmp_path)!r})\n"
            "print(type(pipe).__name__, type(pipe.emoji_adapter).__name__)\n"
            # the Hub path (download) checks every component library before fetching: ours must pass
            "import json, os\n"
            "from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders\n"
            f"root = {str(tmp_path)!r}\n"
            "config = json.load(open(os.path.join(root, 'model_index.json')))\n"
            "files = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]\n"
            "custom, folders = _get_custom_components_and_folders('me/emojidiff', config, files)\n"
            "assert custom == {} and 'emoji_adapter' in folders, (custom, folders)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": ""},
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.split()[-2:] == ["EmojiDiffImg2ImgPipeline", "EmojiDiffAdapter"]


def test_model_card_is_filled_and_its_snippet_runs(tmp_path, monkeypatch, one_torch_thread):
    components = tiny_components()
    pipe = EmojiDiffImg2ImgPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))
    pipe.save_pretrained(tmp_path / "pipe", training_data="Two tiny synthetic identities, for a test.")
    card = (tmp_path / "pipe" / "README.md").read_text()
    for expected in (
        "library_name: diffusers",
        "license: other",
        "emojidiff",
        "EmojiDiffImg2ImgPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "identity branch: ",
        "up_blocks.0 x",
        "expression streams: `image`",
        "Two tiny synthetic identities",
        "non-commercial research",
        "## Limitations",
        "not recorded (built from a local folder)",
    ):
        assert expected in card, expected
    assert "{" + "training_data}" not in card and "TODO" not in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet.replace("num_inference_steps=30", "num_inference_steps=2"), "snippet", "exec"), {})
    assert (tmp_path / "emojidiff.png").exists()

    # push_to_hub writes the same card and uploads the folder (Hub calls patched: offline)
    import diffusers.pipelines.pipeline_utils as pipeline_utils
    from diffusers.utils.hub_utils import PushToHubMixin

    uploaded = {}
    monkeypatch.setattr(pipeline_utils, "create_repo", lambda repo_id, **kw: type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr(
        PushToHubMixin,
        "_upload_folder",
        lambda self, folder, repo_id, **kw: uploaded.update(
            repo=repo_id, files=sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
        ),
    )
    pipe.save_pretrained(
        tmp_path / "push",
        push_to_hub=True,
        repo_id="me/emojidiff-tiny",
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
    )
    assert uploaded["repo"] == "me/emojidiff-tiny"
    assert {"README.md", "model_index.json", "emoji_adapter/config.json"} <= set(uploaded["files"])
    pushed = (tmp_path / "push" / "README.md").read_text()
    assert "base_model: stabilityai/stable-diffusion-xl-base-1.0" in pushed
    assert "EmojiDiffImg2ImgPipeline.from_pretrained('me/emojidiff-tiny')" in pushed
    with pytest.raises(ValueError, match=r"`base_model` must be a Hub id"):
        pipe.save_pretrained(tmp_path / "bad", base_model="./local")


def test_load_emoji_adapter_after_cpu_offload_offloads_it_too(tmp_path, one_torch_thread):
    pytest.importorskip("accelerate")
    components = tiny_components()
    tiny_adapter(components["unet"]).save_pretrained(tmp_path / "adapter")
    expected_pipe = EmojiDiffPipeline(**tiny_components())
    expected_pipe.load_emoji_adapter(tmp_path / "adapter")
    expected = run(expected_pipe, **INPUTS)
    pipe = EmojiDiffPipeline(**components)
    pipe.enable_model_cpu_offload(device="cpu")
    pipe.load_emoji_adapter(tmp_path / "adapter")
    assert hasattr(pipe.emoji_adapter, "_hf_hook")  # offload hooks re-applied, the adapter's included
    assert np.abs(run(pipe, **INPUTS) - expected).max() <= 1e-5


def test_remote_code_pipeline_file_imports_every_module_its_modules_import():
    """diffusers' remote-code loader copies only the modules pipeline.py imports itself: every module reachable from
    it (inputs.py's, face.py's, expression.py's lazy imports too) must be among them, and all are in the folder."""
    from diffusers.utils.dynamic_modules_utils import get_relative_imports

    import emojidiff_pipeline.pipeline as pipeline_module

    source = Path(pipeline_module.__file__).parent
    direct = set(get_relative_imports(str(source / "pipeline.py")))
    for name in sorted(direct):
        assert set(get_relative_imports(str(source / f"{name}.py"))) <= direct | {"pipeline"}, name
    assert direct | {"pipeline"} == set(pipeline_module.EmojiDiffMixin._REMOTE_CODE_FILES)


def test_remote_code_folder_loads_where_the_library_is_not_installed(tmp_path, one_torch_thread):
    components = tiny_components()
    pipe = EmojiDiffImg2ImgPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))
    pipe.save_pretrained(tmp_path / "pipe", remote_code=True)
    init = PIL.Image.fromarray(random_template(3, 64))
    init.save(tmp_path / "init.png")
    np.save(tmp_path / "expected.npy", run(pipe, image=init, strength=1.0, identity_embeds=INPUTS["identity_embeds"]))
    torch.save(INPUTS["identity_embeds"], tmp_path / "id.pt")
    assert "trust_remote_code=True" in (tmp_path / "pipe" / "README.md").read_text()
    code = (
        "import sys\n"
        "sys.modules['emojidiff_pipeline'] = None  # as on a machine without the library\n"
        "import numpy as np, PIL.Image, torch\n"
        "from diffusers import DiffusionPipeline\n"
        f"root = {str(tmp_path)!r}\n"
        "pipe = DiffusionPipeline.from_pretrained(root + '/pipe', trust_remote_code=True)\n"
        "assert type(pipe).__name__ == 'EmojiDiffImg2ImgPipeline', type(pipe)\n"
        "assert type(pipe.emoji_adapter).__name__ == 'EmojiDiffAdapter'\n"
        "out = pipe('a smiling face', image=PIL.Image.open(root + '/init.png'), strength=1.0, num_inference_steps=2,\n"
        "           output_type='np', identity_embeds=torch.load(root + '/id.pt'),\n"
        "           generator=torch.Generator().manual_seed(0)).images\n"
        "print('max diff', float(np.abs(out - np.load(root + '/expected.npy')).max()))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split()[-1]) <= 1e-5
    # without trusting the folder's code, diffusers refuses (nothing runs silently)
    refuse = code.replace(", trust_remote_code=True", "")
    out = subprocess.run([sys.executable, "-c", refuse], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0 and "trust_remote_code" in out.stderr
