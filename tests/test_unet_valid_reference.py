"""The published (valid) U-Net against an independent reference: its weights in the padded
network, which computes the same convolutions where no padding reaches; and one CLI training
step with all of U-Net's own parts at once (valid network, elastic deformation, weight map)."""

from __future__ import annotations

import pytest
import torch

import atrous
from atrous.cli import main

TILE = 204  # a valid input side (16k + 12): 20 x 20 scores
MARGIN = 92  # what the valid network consumes on each side (572 -> 388)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    valid = atrous.create_model("unet", 3, in_channels=1, padding="valid", base_channels=4).eval()
    padded = atrous.create_model("unet", 3, in_channels=1, padding="same", base_channels=4).eval()
    padded.load_state_dict(valid.state_dict())  # the same tensors: only the convolutions' padding differs
    image = torch.randn(1, 1, 256, 256)
    with torch.no_grad():
        return valid, padded, image, padded(image)


def _gap(pair, offset: int) -> float:
    """The valid network on the tile at `offset` of the image against the padded network's
    scores over the whole image, cropped where the tile's scores lie (offset + 92)."""
    valid, _, image, padded_scores = pair
    with torch.no_grad():
        scores = valid.valid_scores(image[..., offset:offset + TILE, offset:offset + TILE])
    side = scores.shape[-1]
    crop = padded_scores[..., offset + MARGIN:offset + MARGIN + side, offset + MARGIN:offset + MARGIN + side]
    return float((scores - crop).abs().max())


@pytest.mark.parametrize("offset", [18, 34])
def test_valid_scores_are_the_padded_networks_where_the_pooling_grids_align(pair, offset):
    """The valid network pools maps its convolutions have cropped by 2, 4, 8 and 16 pixels at
    the four levels (in input pixels): its grids fall on the padded network's where the tile
    starts at 2 + 4 + 8 + 16 = 30, i.e. 2 modulo 16. There it computes the same numbers
    (measured 9.5e-7)."""
    assert _gap(pair, offset) <= 1e-5


@pytest.mark.parametrize("offset", [16, 24, 32, 8])
def test_at_other_offsets_the_grids_differ(pair, offset):
    assert _gap(pair, offset) > 0.05  # measured 0.22 to 0.26: the check above has teeth


def test_one_training_step_with_the_valid_network_elastic_deformation_and_the_weight_map(tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--model", "unet", "--model-opt", "padding=valid", "--model-opt", "base_channels=4",
                 "--model-opt", "tile=20", "--dataset", "synthetic", "--synthetic-size", "32",
                 "--synthetic-length", "4", "--crop-size", "32", "--batch-size", "2", "--iters", "1",
                 "--elastic", "10", "--loss", "unet_weight_map", "--eval-split", "", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    model = atrous.load_checkpoint(str(out / "model.safetensors"))
    assert model.config["options"]["padding"] == "valid"
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, model.num_classes, 32, 32)
