"""Building blocks shared by the model families (depends on torch only)."""

from atrous.layers.aspp import ASPP, ASPPPooling
from atrous.layers.conv import ConvBNReLU, SeparableConv2d, conv_bn_relu
from atrous.layers.upsample import BilinearConvTranspose2d, bilinear_kernel, resize_like

__all__ = [
    "ASPP",
    "ASPPPooling",
    "BilinearConvTranspose2d",
    "ConvBNReLU",
    "SeparableConv2d",
    "bilinear_kernel",
    "conv_bn_relu",
    "resize_like",
]
