"""atrous: semantic segmentation from FCN to DeepLab v3+, with the dense CRF and ConvCRF.

    import atrous
    model = atrous.create_model("deeplab_v3plus", num_classes=11, backbone="resnet50")
    logits = model(images)  # (N, 11, H, W) for any H, W
    scores = atrous.infer(model, images, scales=(0.75, 1.0, 1.25), flip=True)  # averaged views
    x = atrous.normalise_for(model, atrous.data.read_image("tile.tif"))  # as the model was trained
"""

from __future__ import annotations

import importlib
from typing import Any

# every model's save_pretrained and push_to_hub: the checkpoints floor attaches them (atrous.checkpoints.hub)
import atrous.checkpoints  # noqa: F401
from atrous.models import SegmentationModel, create_model, list_models

__version__ = "0.1.0"

# names resolved on first use, so that `import atrous` stays light
_LAZY = {
    "save_checkpoint": "atrous.checkpoints",
    "load_checkpoint": "atrous.checkpoints",
    "load_weights": "atrous.checkpoints",
    "save_pretrained": "atrous.checkpoints",
    "from_pretrained": "atrous.checkpoints",
    "push_to_hub": "atrous.checkpoints",
    "from_torchvision": "atrous.models.torchvision_compat",
    "infer": "atrous.inference.infer",
    "normalise_for": "atrous.checkpoints.meta",
    "evaluate": "atrous.inference.evaluate",
}
_LAZY_MODULES = ("crf", "metrics", "data", "layers", "backbones", "losses", "options", "checkpoints", "training",
                 "inference", "deployment", "runtime", "commands", "engine")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"atrous.{name}")
    raise AttributeError(f"module 'atrous' has no attribute '{name}'")


__all__ = [
    "SegmentationModel",
    "__version__",
    "create_model",
    "evaluate",
    "from_pretrained",
    "from_torchvision",
    "infer",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "normalise_for",
    "push_to_hub",
    "save_checkpoint",
    "save_pretrained",
]
