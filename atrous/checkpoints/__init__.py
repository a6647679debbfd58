"""The files a model lives in: atrous checkpoints (.safetensors with the metadata that rebuilds
the model), what they say besides weights (classes, palette, normalisation), pretrained folders
and Hub repositories people share, loading trained weights into a model, and exported ONNX
graphs read back as models. Importing it gives every model `save_pretrained` and `push_to_hub`
(atrous.checkpoints.hub)."""

from atrous.checkpoints.checkpoint import load_checkpoint, read_checkpoint_header, save_checkpoint
from atrous.checkpoints.hub import HubMixin, attach_hub_mixin
from atrous.checkpoints.meta import model_meta, normalisation, palette_of
from atrous.checkpoints.pretrained import from_pretrained, push_to_hub, save_pretrained
from atrous.checkpoints.weights import LoadReport, load_weights

attach_hub_mixin()

__all__ = ["HubMixin", "LoadReport", "attach_hub_mixin", "from_pretrained", "load_checkpoint", "load_weights",
           "model_meta", "normalisation", "palette_of", "push_to_hub", "read_checkpoint_header", "save_checkpoint",
           "save_pretrained"]
