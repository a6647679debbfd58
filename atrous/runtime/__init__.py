"""Where and how a run computes: the device, the precision and autocast, and the process group
of a torchrun launch."""
