"""Weight initialisation of the layers atrous builds (smp's and torchvision's practice).

PyTorch's default for a convolution (Kaiming-uniform with a = sqrt(5)) keeps a third of the
signal variance per layer: through plain VGG16's thirteen convolutions and fc6/fc7 the
activations at init shrink to about 1/30 and conv1's gradients vanish (2e-8; 2e-3 with He
initialisation: docs/benchmarks.md). `he_init_` gives every convolution He's
initialisation (He et al., ICCV 2015: Kaiming-uniform, fan-in, ReLU gain) and a zero bias,
norms weight 1 and bias 0, and the classifiers (convolutions to `num_classes`) Xavier's,
as smp's decoders and heads do. Layers whose initialisation is part of their paper (FCN's
zero score layers, the bilinear transposed convolutions, DeepLab v2's N(0, 0.01)
classifiers) are marked with `keep_init` and left alone.
"""

from __future__ import annotations

from torch import nn

INIT_SCHEMES = ("he", "none")  # "none": what the constructors did (PyTorch's defaults)
_KEEP = "_atrous_keep_init"


def keep_init(module: nn.Module) -> nn.Module:
    """Mark `module` (and what it holds) as initialised on purpose."""
    setattr(module, _KEEP, True)
    return module


def he_init_(module: nn.Module, num_classes: int, skip: tuple[type, ...] = ()) -> None:
    """Initialise `module`'s convolutions, linear layers and norms in place, except inside
    modules marked with `keep_init` or of a type in `skip` (encoders with their own init)."""

    def visit(m: nn.Module) -> None:
        if getattr(m, _KEEP, False) or isinstance(m, skip):
            return
        if isinstance(m, nn.Conv2d | nn.Linear):
            out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            if out == num_classes:
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        for child in m.children():
            visit(child)

    visit(module)
