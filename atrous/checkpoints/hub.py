"""The hub mixin: `model.save_pretrained(directory)` and `model.push_to_hub(repo_id)` on every
segmentation model, as smp's models carry them. The methods live here, beside the pretrained
folders they write (atrous.checkpoints.pretrained, whose functions do the work, as timm's
`save_for_hf` / `push_to_hf_hub` do), and `attach_hub_mixin` puts them on SegmentationModel,
the floor below, which never imports this one: importing atrous.checkpoints attaches them, and
`import atrous` imports it, so every model has them, built by create_model or by its class."""

from __future__ import annotations

from typing import Any

from atrous.checkpoints.pretrained import push_to_hub, save_pretrained
from atrous.models import SegmentationModel


class HubMixin:
    """The methods a model shares itself with; `self` is a SegmentationModel."""

    def save_pretrained(self, directory: str, **card: Any) -> str:
        """Write this model to `directory` as a pretrained folder (model.safetensors,
        config.json and a README.md model card; `card`: metrics=..., training=..., notes=...,
        see atrous.checkpoints.pretrained.save_pretrained). Returns the folder."""
        return save_pretrained(self, directory, **card)  # type: ignore[arg-type]

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload this model as a pretrained folder to the Hub repository `repo_id` (`options`:
        private, token, commit_message and the card's, see atrous.checkpoints.pretrained.push_to_hub).
        Returns the repository's URL."""
        return push_to_hub(self, repo_id, **options)  # type: ignore[arg-type]


def attach_hub_mixin(cls: type[SegmentationModel] = SegmentationModel) -> None:
    """Give `cls` (and so every model class below it) the hub mixin's methods."""
    for name in ("save_pretrained", "push_to_hub"):
        setattr(cls, name, vars(HubMixin)[name])
