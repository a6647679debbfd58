"""Images of any number of bands and any bit depth, read without loss; models of N bands
from RGB weights (checked against smp's adaptation); per-band normalisation from the
options to the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import atrous
from atrous.backbones.base import adapt_input_conv
from atrous.data import DataError, normalise, read_image
from atrous.data.io import decode_image

tifffile = pytest.importorskip("tifffile")


# --- reading ---------------------------------------------------------------------------------

def test_a_16_bit_png_keeps_its_values(tmp_path):
    values = np.array([[0, 1, 300], [4095, 40000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = read_image(str(tmp_path / "deep.png"))
    assert image.dtype == torch.float32 and image.shape == (1, 2, 3)
    assert image[0].numpy().tolist() == values.astype(np.float32).tolist()


@pytest.mark.parametrize("planar", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_a_multiband_tiff_keeps_every_band_and_value(tmp_path, dtype, planar):
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 250, (5, 7, 9)).astype(dtype)  # (C, H, W)
    path = tmp_path / "scene.tif"
    if planar:
        tifffile.imwrite(path, bands, planarconfig="separate", compression="zlib")
    else:
        tifffile.imwrite(path, np.moveaxis(bands, 0, -1), planarconfig="contig", compression="zlib")
    image = read_image(str(path))
    assert image.dtype == torch.float32 and image.shape == (5, 7, 9)
    assert torch.equal(image, torch.from_numpy(bands.astype(np.float32)))


def test_npy_images_in_either_band_order(tmp_path):
    bands = np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8) - 100
    np.save(tmp_path / "first.npy", bands)
    np.save(tmp_path / "last.npy", np.moveaxis(bands, 0, -1))
    for name in ("first.npy", "last.npy"):
        assert torch.equal(read_image(str(tmp_path / name)), torch.from_numpy(bands.astype(np.float32)))


def test_an_8_bit_rgb_tiff_is_a_photograph_as_before(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    from_tiff, from_png = read_image(str(tmp_path / "rgb.tif")), read_image(str(tmp_path / "rgb.png"))
    assert from_tiff.dtype == torch.uint8 and torch.equal(from_tiff, from_png)
    assert torch.equal(from_png, torch.from_numpy(rgb).permute(2, 0, 1))


def test_uploaded_bytes_decode_as_the_file_reads(tmp_path):
    bands = np.random.default_rng(2).random((4, 5, 6), dtype=np.float32) * 1000
    tifffile.imwrite(tmp_path / "up.tif", np.moveaxis(bands, 0, -1), photometric="minisblack")
    np.save(tmp_path / "up.npy", bands)
    for name in ("up.tif", "up.npy"):
        data = (tmp_path / name).read_bytes()
        assert torch.equal(decode_image(data, name), read_image(str(tmp_path / name)))
    with pytest.raises(DataError, match="megapixels"):
        decode_image((tmp_path / "up.tif").read_bytes(), "up.tif", max_pixels=10)


@pytest.mark.parametrize("content, message", [
    (b"II*\x00garbage", "cannot read image"),
    (b"\x93NUMPYbroken", "cannot read image"),
])
def test_a_damaged_raster_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / ("bad.tif" if content.startswith(b"II") else "bad.npy")
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as caught:
        read_image(str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_non_finite_values_are_refused_with_what_to_do(tmp_path):
    values = np.ones((3, 3, 4), np.float32)
    values[1, 1, 2] = np.nan
    np.save(tmp_path / "holes.npy", values)
    with pytest.raises(DataError, match="NaN or infinite"):
        read_image(str(tmp_path / "holes.npy"))


# --- normalisation ---------------------------------------------------------------------------

def test_normalisation_by_hand():
    mean, std = torch.tensor([0.5, 100.0]), torch.tensor([0.25, 50.0])
    floats = torch.tensor([[[1.0]], [[200.0]]])  # (2, 1, 1): stored units
    assert normalise(floats, mean, std).flatten().tolist() == [2.0, 2.0]
    photo = torch.tensor([[[255]], [[0]], [[51]]], dtype=torch.uint8)  # scaled to 0-1 first
    out = normalise(photo, torch.tensor([0.5, 0.5, 0.1]), torch.tensor([0.5, 0.5, 0.1]))
    assert torch.allclose(out.flatten(), torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(DataError, match="3 bands but the normalisation"):
        normalise(photo, mean, std)


# --- models of N bands from RGB weights ------------------------------------------------------

@pytest.mark.parametrize("bands", [1, 2, 4, 6, 13])
def test_the_first_convolution_is_adapted_as_smp_does(bands):
    from segmentation_models_pytorch.encoders._utils import patch_first_conv

    conv = torch.nn.Conv2d(3, 8, 3)
    torch.nn.init.normal_(conv.weight)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    reference[0].weight.data.copy_(conv.weight.data)
    patch_first_conv(reference, new_in_channels=bands, pretrained=True)
    assert torch.allclose(adapt_input_conv(conv.weight.data, bands), reference[0].weight.data, atol=1e-6)


def test_six_bands_made_of_rgb_twice_give_the_rgb_models_output(tmp_path):
    """A pretrained backbone file (RGB) loaded into a 6-band model: the image's RGB bands
    repeated give exactly the 3-band model's scores."""
    torch.manual_seed(0)
    rgb_model = atrous.create_model("deeplab_v3plus", 4, backbone="resnet18").eval()
    weights = tmp_path / "resnet18.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in rgb_model.backbone.body.state_dict().items()}, str(weights))
    three = atrous.create_model("deeplab_v3plus", 4, backbone="resnet18", pretrained_backbone=str(weights)).eval()
    six = atrous.create_model("deeplab_v3plus", 4, backbone="resnet18", in_channels=6,
                              pretrained_backbone=str(weights)).eval()
    six.load_state_dict({k: v for k, v in three.state_dict().items() if k != "backbone.body.conv1.weight"},
                        strict=False)  # the same head (the decoder is not pretrained)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(six(torch.cat([image, image], 1)), three(image), atol=1e-5)


def test_init_from_an_rgb_checkpoint_adapts_the_first_convolution(tmp_path):
    torch.manual_seed(0)
    rgb = atrous.create_model("fcn32s", 3, backbone="vgg16").eval()
    atrous.save_checkpoint(rgb, str(tmp_path / "rgb.safetensors"))
    six = atrous.create_model("fcn32s", 3, backbone="vgg16", in_channels=6).eval()
    report = atrous.load_weights(six, str(tmp_path / "rgb.safetensors"))
    assert report.adapted == ["backbone.features.0.weight"] and not report.reinitialised
    assert "first convolution adapted" in report.line()
    image = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(six(torch.cat([image, image], 1)), rgb(image), atol=1e-4)
