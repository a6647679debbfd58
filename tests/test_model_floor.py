"""A model built by its class is as complete as one built by create_model: it records what
rebuilds it (`config`), saves and loads, shares itself (save_pretrained, attached by the
checkpoints floor) and changes its output stride by rebuilding its own modules."""

from __future__ import annotations

import pytest
import torch

import atrous
from atrous.checkpoints.hub import HubMixin
from atrous.models.deeplab import DeepLabV3Plus

TINY = dict(backbone="resnet18", decoder_channels=32, aspp_channels=32)


def direct(num_classes: int = 5, **options) -> DeepLabV3Plus:
    torch.manual_seed(0)
    return DeepLabV3Plus(num_classes, **{**TINY, **options}).eval()


def test_a_model_built_by_its_class_records_what_create_model_records():
    model = direct()
    assert model.config == atrous.create_model("deeplab_v3plus", 5, **TINY).config
    assert model.config["name"] == "deeplab_v3plus" and model.config["options"] == {"decoder_channels": 32,
                                                                                   "aspp_channels": 32}


def test_a_model_built_by_its_class_saves_and_loads_with_identical_outputs(tmp_path):
    model = direct()
    atrous.save_checkpoint(model, str(tmp_path / "m.safetensors"))
    again = atrous.load_checkpoint(str(tmp_path / "m.safetensors"))
    assert type(again) is DeepLabV3Plus
    x = torch.randn(2, 3, 41, 57)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    model.save_pretrained(str(tmp_path / "folder"))
    with torch.no_grad():
        assert torch.equal(model(x), atrous.from_pretrained(str(tmp_path / "folder"))(x))


def test_every_model_class_carries_the_hub_methods_of_the_checkpoints_floor():
    assert atrous.SegmentationModel.save_pretrained is HubMixin.save_pretrained
    assert atrous.SegmentationModel.push_to_hub is HubMixin.push_to_hub
    assert "save_pretrained" not in vars(DeepLabV3Plus)  # inherited from the base class


def test_a_class_that_is_not_registered_cannot_be_saved(tmp_path):
    class Mine(DeepLabV3Plus):
        pass

    model = Mine(3, **TINY)
    assert model.config == {}
    with pytest.raises(ValueError, match="Mine is not a registered model class"):
        atrous.save_checkpoint(model, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="Mine is not a registered model class"):
        model.save_pretrained(str(tmp_path / "folder"))


def test_set_output_stride_of_a_model_built_by_its_class():
    model = direct(output_stride=16)
    reference = direct(output_stride=8)
    reference.load_state_dict(model.state_dict())
    model.meta = {"dataset": "mine"}
    x = torch.randn(1, 3, 45, 61)
    assert model.set_output_stride(8) is model
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert not model.training and model.meta == {"dataset": "mine"} and model.config["output_stride"] == 8


def test_a_stride_the_model_cannot_run_at_leaves_it_as_it_was():
    model = direct(output_stride=16)
    model.meta = {"dataset": "mine"}
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        before = model(x)
    with pytest.raises(ValueError, match="model 'deeplab_v3plus' cannot run at output stride 4"):
        model.set_output_stride(4)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert not model.training and model.meta == {"dataset": "mine"} and model.config["output_stride"] == 16
