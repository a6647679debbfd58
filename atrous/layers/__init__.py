"""Building blocks shared by the model families (depends on torch only)."""

from atrous.layers.aspp import ASPP, ASPPPooling
from atrous.layers.aspp_sum import ASPPSum, SummedBranches
from atrous.layers.conv import BiasAfterConv2d, ConvBNReLU, SeparableConv2d, conv_bn_relu
from atrous.layers.fcn_head import FCNHead
from atrous.layers.init import INIT_SCHEMES, he_init_, keep_init
from atrous.layers.lraspp import LRASPPHead
from atrous.layers.pyramid_pooling import PyramidPooling
from atrous.layers.refinenet import (
    ChainedResidualPooling,
    MultiResolutionFusion,
    RefineNetBlock,
    ResidualConvUnit,
)
from atrous.layers.upsample import BilinearConvTranspose2d, bilinear_kernel, resize_like

__all__ = [
    "ASPP",
    "ASPPPooling",
    "ASPPSum",
    "BiasAfterConv2d",
    "BilinearConvTranspose2d",
    "ChainedResidualPooling",
    "ConvBNReLU",
    "FCNHead",
    "INIT_SCHEMES",
    "LRASPPHead",
    "MultiResolutionFusion",
    "PyramidPooling",
    "RefineNetBlock",
    "ResidualConvUnit",
    "SummedBranches",
    "SeparableConv2d",
    "bilinear_kernel",
    "conv_bn_relu",
    "he_init_",
    "keep_init",
    "resize_like",
]
