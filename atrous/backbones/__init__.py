"""Feature extractors with a known output stride: timm encoders and a dilatable VGG16."""

from atrous.backbones.base import Backbone
from atrous.backbones.factory import create_backbone
from atrous.backbones.timm_backbone import TimmBackbone, cascaded_blocks
from atrous.backbones.vgg import VGG16

__all__ = ["Backbone", "TimmBackbone", "VGG16", "cascaded_blocks", "create_backbone"]
