"""The files a model lives in: atrous checkpoints (.safetensors with the metadata that rebuilds
the model), what they say besides weights (classes, palette, normalisation), and exported
ONNX graphs read back as models."""

from atrous.checkpoints.checkpoint import load_checkpoint, read_checkpoint_header, save_checkpoint
from atrous.checkpoints.meta import model_meta, normalisation, palette_of

__all__ = ["load_checkpoint", "model_meta", "normalisation", "palette_of", "read_checkpoint_header",
           "save_checkpoint"]
