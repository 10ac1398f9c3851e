"""Saving an EmojiDiff pipeline: diffusers' `save_pretrained` plus the filled model card, the Hub upload, and the
remote-code layout (the library's code copied into the folder so it loads where the library is not installed)."""

import os


class EmojiDiffSavingMixin:
    """`save_pretrained` for the EmojiDiff pipelines (see :class:`~.mixin.EmojiDiffMixin`)."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *args,
        push_to_hub: bool = False,
        base_model: str | None = None,
        training_data: str | None = None,
        remote_code: bool = False,
        **kwargs,
    ):
        """diffusers' `save_pretrained`, plus a filled model card (README.md: base model, adapter layers, training
        data, limitations, face-model licences, a usage snippet), also when pushing to the Hub.

        Args:
            base_model: Hub id of the base model, for the card's metadata; default the pipeline's own when it is a
                Hub id.
            training_data: one paragraph on the adapter's training data for the card.
            remote_code: also write this library's pipeline code into the folder (diffusers' custom-pipeline
                layout), so that `DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)` loads it
                where emojidiff_pipeline is not installed. Such a folder then always needs `trust_remote_code=True`.
        """
        from .model_card import emojidiff_model_card

        if not isinstance(remote_code, bool):
            raise ValueError(f"`remote_code` must be True or False, got {remote_code!r}.")
        hub = {k: kwargs.pop(k) for k in ("commit_message", "private", "create_pr", "token", "repo_id") if k in kwargs}
        super().save_pretrained(save_directory, *args, push_to_hub=False, **kwargs)
        if remote_code:
            self._write_remote_code(save_directory)
        repo_id = None
        if push_to_hub:
            from diffusers.pipelines import pipeline_utils

            repo_id = hub.get("repo_id") or os.fspath(save_directory).rstrip(os.path.sep).split(os.path.sep)[-1]
            repo_id = pipeline_utils.create_repo(
                repo_id, exist_ok=True, private=hub.get("private"), token=hub.get("token")
            ).repo_id
        if self.emoji_adapter is not None:
            card = emojidiff_model_card(
                self,
                repo_id=repo_id or os.fspath(save_directory),
                base_model=base_model,
                training_data=training_data,
                remote_code=remote_code,
            )
            card.save(os.path.join(save_directory, "README.md"))
        elif push_to_hub:  # no adapter: a base folder, carded as diffusers does
            from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card

            card = populate_model_card(load_or_create_model_card(repo_id, token=hub.get("token"), is_pipeline=True))
            card.save(os.path.join(save_directory, "README.md"))
        if push_to_hub:
            self._upload_folder(
                save_directory,
                repo_id,
                token=hub.get("token"),
                commit_message=hub.get("commit_message"),
                create_pr=hub.get("create_pr", False),
            )

    # the library modules a remote-code folder holds: pipeline.py's relative imports. diffusers' loader copies only the
    # modules pipeline.py itself imports, so pipeline.py also imports every module its modules import (tested)
    _REMOTE_CODE_FILES = (
        "pipeline",
        "mixin",
        "saving",
        "inputs",
        "adapter",
        "weight_checks",
        "attention",
        "layers",
        "tokens",
        "face",
        "face_loading",
        "face_geometry",
        "hooks",
        "expression",
        "guidance",
        "model_card",
        "recognizers",
    )

    def _write_remote_code(self, save_directory) -> None:
        """Copy the pipeline's code into `save_directory` in diffusers' custom-pipeline layout: `pipeline.py` and the
        modules it imports at the top level (model_index.json `_class_name` ["pipeline", <class>]), and the adapter's
        module beside its weights (`emoji_adapter/adapter.py` with `layers.py`, `tokens.py` and `weight_checks.py`,
        component entry ["adapter", "EmojiDiffAdapter"])."""
        import json
        import shutil

        source = os.path.dirname(os.path.abspath(__file__))
        for name in self._REMOTE_CODE_FILES:
            shutil.copyfile(os.path.join(source, f"{name}.py"), os.path.join(save_directory, f"{name}.py"))
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        index["_class_name"] = ["pipeline", type(self).__name__]
        if self.emoji_adapter is not None:
            for name in ("adapter", "layers", "tokens", "weight_checks"):  # adapter.py and what it imports
                shutil.copyfile(
                    os.path.join(source, f"{name}.py"), os.path.join(save_directory, "emoji_adapter", f"{name}.py")
                )
            index["emoji_adapter"] = ["adapter", "EmojiDiffAdapter"]
        with open(index_path, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
