"""Models people can share: a pretrained folder (model.safetensors, config.json and a README.md
model card), read back by `from_pretrained` from the folder or a Hub repository, and
`push_to_hub` through huggingface_hub, as smp and timm do.

    model.save_pretrained("camvid-deeplab")            # or atrous.save_pretrained(model, ...)
    model = atrous.from_pretrained("camvid-deeplab")    # a folder or "owner/name" on the Hub
    model = atrous.from_pretrained("owner/name", num_classes=5)   # new classifier, reported

model.safetensors is an ordinary atrous checkpoint: every command's --checkpoint takes the
file, its folder or the Hub id.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from atrous.checkpoints.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    read_checkpoint_header,
    save_checkpoint,
)
from atrous.checkpoints.sources import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    hub_error,
    resolve_source,
)
from atrous.checkpoints.weights import load_weights
from atrous.errors import UserError
from atrous.models import SegmentationModel, create_model, model_summaries
from atrous.outputs import write_text_atomic


def save_pretrained(model: SegmentationModel, directory: str, *, metrics: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None, notes: str | None = None) -> str:
    """Write `model` to `directory` as a pretrained folder. The model card also gets `metrics`
    (an evaluation as metrics.json holds it: scalars, per_class_iou, and optionally the
    `split` it was scored on), `training` (the recipe) and `notes` (a paragraph of markdown).
    Returns the folder."""
    if not getattr(model, "config", None):
        raise ValueError(f"save_pretrained needs a model that records how it is rebuilt (`config`): "
                         f"{type(model).__name__} is not a registered model class (atrous.models.register_model)")
    os.makedirs(directory, exist_ok=True)
    save_checkpoint(model, os.path.join(directory, WEIGHTS_FILE))
    header = read_checkpoint_header(os.path.join(directory, WEIGHTS_FILE))
    config: dict[str, Any] = {"atrous_format": FORMAT_VERSION, "model": header["model"], "meta": header["meta"]}
    stride = header["model"].get("output_stride") or getattr(getattr(model, "backbone", None), "output_stride", None)
    if stride:
        config["output_stride"] = stride  # the stride it runs at, also where the model chose its paper's default
    for key, value in (("training", training), ("metrics", metrics), ("notes", notes)):
        if value:
            config[key] = value
    write_text_atomic(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2))
    write_text_atomic(os.path.join(directory, CARD_FILE), model_card(config))
    return directory


def from_pretrained(source: str, *, num_classes: int | None = None, strict: bool | None = None) -> SegmentationModel:
    """The model saved in a pretrained folder, a checkpoint file or a Hub repository. With
    another `num_classes`, the same architecture is built for that many classes and every
    tensor that fits is loaded (the classifier starts anew; `model.load_report` says which);
    `strict=True` refuses that."""
    path = resolve_source(source)
    header = read_checkpoint_header(path)
    config = header["model"]
    if num_classes is None or num_classes == config["num_classes"]:
        return load_checkpoint(path)
    if strict:
        raise UserError(f"{source} predicts {config['num_classes']} classes, not {num_classes} (strict)")
    model = create_model(config["name"], num_classes, in_channels=config.get("in_channels", 3),
                         backbone=config.get("backbone"), output_stride=config.get("output_stride"),
                         **config.get("options", {}))
    model.load_report = load_weights(model, path)
    meta = dict(header.get("meta", {}))
    for key in ("class_names", "palette", "crf"):  # they described the old classes
        meta.pop(key, None)
    model.meta = meta
    return model.eval()


def push_to_hub(model: SegmentationModel, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "atrous model", **card: Any) -> str:
    """save_pretrained into a temporary folder and upload it to the Hub repository `repo_id`
    (created if needed); `card` takes save_pretrained's metrics, training and notes. Returns the
    repository's URL."""
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, **card)
        return upload_pretrained(folder, repo_id, private=private, token=token, commit_message=commit_message)


def upload_pretrained(folder: str, repo_id: str, *, private: bool = False, token: str | None = None,
                      commit_message: str = "atrous model") -> str:
    """Upload the pretrained folder `folder` to the Hub repository `repo_id` (created if
    needed; the token from `huggingface-cli login` or HF_TOKEN unless given). Returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    except Exception as err:  # not logged in, no rights, offline: one line that says what to do
        raise UserError(f"{repo_id}: cannot upload to the Hub ({hub_error(err)}); log in with `huggingface-cli login` "
                        "or set HF_TOKEN, and check the name and your rights") from err
    return str(url)


def model_card(config: dict[str, Any]) -> str:
    """README.md of a pretrained folder: what the model is, its classes, how it was trained
    and scored, how to run it."""
    model, meta = config["model"], config.get("meta", {})
    name = model["name"]
    metrics = config.get("metrics") or {}
    lines = [
        "---", "library_name: atrous", "tags:", "- semantic-segmentation", f"- {name}", "---", "",
        f"# {name} ({model.get('backbone') or 'default backbone'}, {len(meta.get('class_names', []))} classes)", "",
        f"**Architecture**: {model_summaries().get(name, name)}.", "",
        f"Options: backbone `{model.get('backbone')}`, output stride {_stride(config)}, "
        f"input channels {model.get('in_channels', 3)}, " +
        (", ".join(f"`{k}={v!r}`" for k, v in (model.get("options") or {}).items()) or "no other options") + ".", "",
        *_classes(meta, metrics.get("per_class_iou")),
        f"Void label: {meta.get('ignore_index', 255)}.", "",
        *_task(meta),
        "## Input", "",
        f"{_input_kind(model.get('in_channels', 3))}, then normalised with mean {meta.get('mean')} and std "
        f"{meta.get('std')} per band; any height and width (the model pads and crops internally).", "",
        *_training(config.get("training"), meta),
        *_evaluation(metrics),
    ]
    if config.get("notes"):
        lines += ["## Notes", "", config["notes"].strip(), ""]
    lines += ["## Use", "", "```python", "import atrous", "",
              'model = atrous.from_pretrained("THIS_FOLDER_OR_REPO_ID")',
              "scores = atrous.infer(model, images)  # (N, K, H, W); images normalised as above",
              "labels = scores.argmax(1)", "```", "",
              "```bash", "atrous predict --checkpoint THIS_FOLDER_OR_REPO_ID photo.jpg --out predictions/",
              "atrous train --init-from THIS_FOLDER_OR_REPO_ID --dataset folder --data-root my_data ...  # fine-tune",
              "```", ""]
    return "\n".join(lines)


def _task(meta: dict[str, Any]) -> list[str]:
    """What the outputs mean, for binary and multilabel models (a multiclass card says nothing new)."""
    task = meta.get("task", "multiclass")
    if task == "multiclass":
        return []
    what = ("one logit, its sigmoid the foreground's probability" if task == "binary"
            else "one logit per label, each its own sigmoid (labels may overlap)")
    return [f"**Task**: {task}: {what}; a pixel has a label where its probability exceeds "
            f"{meta.get('threshold', 0.5)} (`torch.sigmoid(scores) > threshold`, not `argmax`).", ""]


def _stride(config: dict[str, Any]) -> str:
    given, runs_at = config["model"].get("output_stride"), config.get("output_stride")
    if runs_at and not given:
        return f"{runs_at} (the model's default)"
    return str(runs_at or given or "fixed by the architecture")


def _classes(meta: dict[str, Any], per_class_iou: list[float] | None) -> list[str]:
    """The class table; with the evaluation's per-class IoU where there is one."""
    scored = per_class_iou is not None and len(per_class_iou) == len(meta.get("class_names", []))
    palette = meta.get("palette", [])
    lines = ["## Classes", "", "| index | class | colour (RGB) |" + (" IoU |" if scored else ""),
             "|---|---|---|" + ("---|" if scored else "")]
    for index, class_name in enumerate(meta.get("class_names", [])):
        colour = tuple(palette[index]) if index < len(palette) and palette[index] else ""
        iou = f" {100 * per_class_iou[index]:.1f} |" if scored else ""  # type: ignore[index]
        lines.append(f"| {index} | {class_name} | {colour} |{iou}")
    return [*lines, ""]


def _training(training: dict[str, Any] | None, meta: dict[str, Any]) -> list[str]:
    if not training:
        return ["## Training", "", f"Dataset: `{meta.get('dataset', 'unknown')}` (no recipe was recorded).", ""]
    return ["## Training", "",
            f"Dataset `{training.get('dataset', meta.get('dataset'))}`, split `{training.get('train_split', '?')}`; "
            "the recipe as `atrous train --config` reads it (every other option at atrous's default):", "",
            "```yaml",
            *(f"{k}: {json.dumps(v)}" for k, v in training.items()), "```", ""]


def _evaluation(metrics: dict[str, Any]) -> list[str]:
    """The scalar metrics (percentages where they are fractions), the split and image count."""
    if not metrics:
        return ["## Evaluation", "", "Not recorded.", ""]
    where = f"On split `{metrics['split']}`" if metrics.get("split") else "On its evaluation data"
    count = f" ({metrics['images']} images)" if metrics.get("images") else ""
    lines = ["## Evaluation", "", f"{where}{count}; per-class IoU in the class table where recorded.", "",
             "| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if key in ("split", "images", "pixels") or isinstance(value, bool) or not isinstance(value, int | float):
            continue  # the counts are above; names and paths (an eval file's checkpoint) are not scores
        lines.append(f"| {key} | {100 * value:.2f} % |" if isinstance(value, float) and 0 <= value <= 1
                     else f"| {key} | {value} |")
    return [*lines, ""]


def _input_kind(bands: int) -> str:
    """How the images the model takes are scaled before the normalisation (atrous.data.normalise)."""
    if bands == 3:
        return "RGB images: 8-bit photographs scaled to 0-1 (16-bit or float RGB as stored)"
    return f"{bands}-band images, values as stored (8-bit images of other band counts too)"
