"""Checks on adapter weight files before anything loads: tensor names and shapes read from safetensors headers
(single file or sharded), and local paths that do not exist refused at once instead of after Hub retries."""

from __future__ import annotations

import json
import os


def check_tensor_shapes(expected: dict, found: dict, where: str, source, model: str) -> None:
    """Raise ``ValueError`` naming the first tensor that `source` (the file(s) holding `found`) lacks, holds in
    excess, or holds at another shape than `model` (whose tensors are `expected`); both map name -> shape."""
    missing = [k for k in expected if k not in found]
    if missing:
        raise ValueError(
            f"{where}: {source} lacks the tensor {missing[0]!r} (shape {tuple(expected[missing[0]])}) that {model} "
            f"has ({len(missing)} missing in all). The weights are incomplete or belong to another adapter "
            "configuration."
        )
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        raise ValueError(
            f"{where}: {source} holds the tensor {unexpected[0]!r}, which {model} does not have ({len(unexpected)} "
            "unexpected in all). The weights belong to another adapter configuration."
        )
    wrong = [k for k in expected if tuple(found[k]) != tuple(expected[k])]
    if wrong:
        raise ValueError(
            f"{where}: the tensor {wrong[0]!r} has shape {tuple(found[wrong[0]])} in {source} but "
            f"{tuple(expected[wrong[0]])} in {model} ({len(wrong)} mismatched in all)."
        )


# from_pretrained keyword arguments that only say where the files are (passed on to diffusers' file resolution)
HUB_KWARGS = ("subfolder", "cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def safetensors_shapes(pretrained_model_name_or_path, variant: str | None, hub: dict):
    """(file(s), {tensor name: shape}) read from the safetensors header(s) of a model folder (single file or
    sharded with an index), without loading any tensor; None when there is no weights file."""
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, _add_variant, _get_model_file
    from safetensors import safe_open

    def resolve(name):
        try:
            return _get_model_file(pretrained_model_name_or_path, weights_name=name, **hub)
        except OSError:
            return None

    files = [resolve(_add_variant(SAFETENSORS_WEIGHTS_NAME, variant))]
    if files[0] is None:
        index = resolve(_add_variant(SAFE_WEIGHTS_INDEX_NAME, variant))
        if index is None:
            return None
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise OSError(f"{index} is not a valid safetensors index ({err}).") from err
        files = [resolve(shard) or os.path.join(os.path.dirname(index), shard) for shard in shards]
    shapes = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as err:  # SafetensorError and OSError: the header cannot be read
            raise OSError(f"{file} cannot be read as safetensors ({err}).") from err
    return files[0] if len(files) == 1 else files, shapes


def refuse_missing_local_folder(path, where: str) -> None:
    """A path meant as a local folder that does not exist fails here, at once, instead of after huggingface_hub's
    network retries. Local means: starts with ``.``, ``/`` or ``~``, has two or more ``/``, or its first component is
    an existing local folder (``runs/x`` where ``runs/`` exists). ``owner/name`` alone stays a Hub id."""
    text = os.fspath(path)
    if os.path.isdir(os.path.expanduser(text)):
        return
    first = text.split("/")[0]
    local = (
        text.startswith((".", "/", "~"))
        or text.count("/") >= 2
        or "\\" in text
        or ("/" in text and first != "" and os.path.isdir(first))
    )
    if local or os.path.isfile(os.path.expanduser(text)):
        what = "is a file, not an adapter folder" if os.path.isfile(os.path.expanduser(text)) else "does not exist"
        raise FileNotFoundError(
            f"{where}: this local path {what}. Pass the adapter's folder (with config.json and "
            "diffusion_pytorch_model.safetensors) or a Hub id `owner/name`."
        )
