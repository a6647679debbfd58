"""Deployment: a checkpoint exported to ONNX or TorchScript with its metadata inside, and int8
ONNX calibrated on training images."""
