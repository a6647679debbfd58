"""predict at scale: folders, globs and videos, batched, with saved scores; every input
checked before anything is written. References come from the model run image by image."""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest
import torch
from PIL import Image

import atrous
from atrous.errors import UserError
from atrous.inference.predict import predict
from tests.test_cli import assert_one_line_error, run


def video_library():
    """PyAV, for the video tests alone: without it, image input is still tested."""
    return pytest.importorskip("av", reason="PyAV (the video extra) is not installed: video input and output "
                               "are not tested")


@pytest.fixture(scope="module")
def model() -> atrous.SegmentationModel:
    torch.manual_seed(0)
    model = atrous.create_model("deeplab_v3plus", 4, backbone="resnet18", aspp_channels=32, decoder_channels=32)
    model.meta = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return model.eval()


def reference_logits(model: atrous.SegmentationModel, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (K, H, W): the model on this one image, normalised by hand."""
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        return model(x[None])[0].numpy()


def write_images(folder, sizes, seed=0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for index, size in enumerate(sizes):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"img{index}.png")
        images.append(image)
    return images


def write_video(path, frames: int, height: int, width: int, seed=1) -> list[np.ndarray]:
    """A small lossless (FFV1) video; returns its frames as decoded back."""
    av = video_library()
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        for _ in range(frames):
            frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_folder_and_glob_in_batches_with_saved_probabilities(tmp_path, model):
    images = write_images(tmp_path / "a", [(30, 40), (30, 40), (30, 40), (25, 31)])
    extra = write_images(tmp_path / "b" / "deep", [(21, 17)], seed=5)
    os.rename(tmp_path / "b" / "deep" / "img0.png", tmp_path / "b" / "deep" / "other.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    written = predict(model, [str(tmp_path / "a"), str(tmp_path / "b" / "**" / "*.png")], str(tmp_path / "out"),
                      batch_size=2, save="probs", precision="fp32", progress=False)
    assert len(written) == 5 * 3
    for stem, image in [("img0", images[0]), ("img2", images[2]), ("img3", images[3]), ("other", extra[0])]:
        expected = reference_logits(model, image)
        probs = np.load(tmp_path / "out" / f"{stem}_probs.npy")
        assert probs.shape == expected.shape and probs.dtype == np.float32
        np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(expected), 0).numpy(), atol=1e-5)
        labels = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        assert (labels == expected.argmax(0)).mean() > 0.999  # batching may flip an exact tie
        assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == image.shape[1::-1]


def test_a_video_gives_a_video_of_overlays_and_its_logits(tmp_path, model):
    frames = write_video(tmp_path / "clip.mkv", 5, 33, 45)  # odd sides: the MP4 is padded to even
    written = predict(model, [str(tmp_path / "clip.mkv")], str(tmp_path / "out"), batch_size=3, save="logits",
                      precision="fp32", progress=False)
    assert sorted(os.path.basename(p) for p in written) == ["clip_logits.npy", "clip_overlay.mp4"]
    logits = np.load(tmp_path / "out" / "clip_logits.npy")
    assert logits.shape == (5, 4, 33, 45) and logits.dtype == np.float32
    for index, frame in enumerate(frames):
        np.testing.assert_allclose(logits[index], reference_logits(model, frame), atol=1e-4)
    with video_library().open(str(tmp_path / "out" / "clip_overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 5
        overlays = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(overlays) == 5 and overlays[0].shape == (34, 46, 3)


def test_every_input_is_checked_before_anything_is_written(tmp_path, model):
    write_images(tmp_path / "in", [(20, 20), (20, 20)])
    (tmp_path / "in" / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(UserError, match="broken.mp4"):
        predict(model, [str(tmp_path / "in")], str(tmp_path / "out"), progress=False)
    (tmp_path / "in" / "broken.mp4").unlink()
    (tmp_path / "in" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 a truncated jpeg")
    with pytest.raises(UserError, match="truncated.jpg"):
        predict(model, [str(tmp_path / "in")], str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_input_errors_are_one_line(capsys, tmp_path, tiny_checkpoint):
    (tmp_path / "empty").mkdir()
    write_images(tmp_path / "in", [(12, 12)])
    cases = [
        ([str(tmp_path / "empty")], "no images or videos in this folder"),
        ([str(tmp_path / "nothing_*.png")], "no file matches this pattern"),
        ([str(tmp_path / "in"), "--batch-size", "0"], "--batch-size"),
        ([str(tmp_path / "in"), str(tmp_path / "in" / "img0.png"), str(tmp_path / "in" / "img0.png")], None),
    ]
    for argv, fragment in cases:
        code, out, err = run(capsys, "predict", "--checkpoint", str(tiny_checkpoint), *argv, "--out",
                             str(tmp_path / "out"), "--no-progress")
        if fragment is None:  # the same file reached twice is segmented once
            assert code == 0 and "wrote 2 files" in out
        else:
            assert code == 2
            assert_one_line_error(err, fragment)


def test_a_missing_video_library_is_a_one_line_error(capsys, tmp_path, tiny_checkpoint, monkeypatch):
    (tmp_path / "clip.mkv").write_bytes(b"a video file: never read, the library is missing")
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    code, _, err = run(capsys, "predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "clip.mkv"),
                       "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2
    assert_one_line_error(err, "clip.mkv", "pip install 'atrous[video]'")
    assert not (tmp_path / "out").exists()
