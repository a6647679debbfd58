"""Where a model's weights come from: a file, a pretrained folder (model.safetensors beside
config.json and a model card), or a Hugging Face Hub repository id, fetched through
huggingface_hub (its cache, and HF_HUB_OFFLINE, apply)."""

from __future__ import annotations

import os
import re

from atrous.errors import UserError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


_FILE_SUFFIXES = (".safetensors", ".onnx", ".xml", ".pt", ".pth", ".bin", ".ckpt", ".torchscript")


def is_repo_id(source: str) -> bool:
    """'owner/name' that is not a path on this machine, nor a file name (runs/model.safetensors)."""
    return (bool(_REPO_ID.match(source)) and not os.path.exists(source)
            and not source.lower().endswith(_FILE_SUFFIXES))


def resolve_source(source: str) -> str:
    """The weights file that `source` names: the file itself, a folder's model.safetensors,
    or a Hub repository's, downloaded (or found in the cache). One-line errors."""
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        path = os.path.join(source, WEIGHTS_FILE)
        if not os.path.isfile(path):
            raise UserError(f"{source} is a folder without {WEIGHTS_FILE}: not a pretrained folder "
                            "(write one with model.save_pretrained)")
        return path
    if is_repo_id(source):
        return os.path.join(_download(source), WEIGHTS_FILE)
    raise UserError(f"not found: {source} (give a checkpoint file, a pretrained folder or a Hub repo id)")


def _download(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - installed with timm
        raise UserError(f"{repo_id}: loading from the Hub needs huggingface_hub (pip install huggingface_hub)") from err
    try:
        folder = snapshot_download(repo_id, allow_patterns=[WEIGHTS_FILE, CONFIG_FILE, CARD_FILE])
    except Exception as err:  # offline, unknown repository, no access: one line
        raise UserError(f"{repo_id}: cannot fetch it from the Hub ({hub_error(err)})") from err
    if not os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
        raise UserError(f"{repo_id}: the repository holds no {WEIGHTS_FILE} (not an atrous model)")
    return folder


def hub_error(err: BaseException) -> str:
    """The first line of a Hub failure (offline, unknown repository, no access), or its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
