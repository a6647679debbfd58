"""Model families (one file each), the registry and the shared base class.

Importing this package imports every family so that its models register themselves.
"""

from atrous.models import (  # noqa: F401  (registers the models)
    attention,
    deeplab,
    fcn,
    lraspp,
    pspnet,
    refinenet,
    segnet,
    unet,
)
from atrous.models.base import SegmentationModel
from atrous.models.registry import (
    create_model,
    list_models,
    model_options,
    model_summaries,
    register_model,
)

__all__ = [
    "SegmentationModel",
    "create_model",
    "list_models",
    "model_options",
    "model_summaries",
    "register_model",
]
