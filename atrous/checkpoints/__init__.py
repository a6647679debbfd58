"""The files a model lives in: atrous checkpoints (.safetensors with the metadata that rebuilds
the model), what they say besides weights (classes, palette, normalisation), pretrained folders
and Hub repositories people share, loading trained weights into a model, and exported ONNX
graphs read back as models."""

from atrous.checkpoints.checkpoint import load_checkpoint, read_checkpoint_header, save_checkpoint
from atrous.checkpoints.meta import model_meta, normalisation, palette_of
from atrous.checkpoints.pretrained import from_pretrained, push_to_hub, save_pretrained
from atrous.checkpoints.weights import LoadReport, load_weights

__all__ = ["LoadReport", "from_pretrained", "load_checkpoint", "load_weights", "model_meta", "normalisation",
           "palette_of", "push_to_hub", "read_checkpoint_header", "save_checkpoint", "save_pretrained"]
