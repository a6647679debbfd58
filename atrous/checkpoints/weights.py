"""Starting from trained weights: `load_weights(model, source)` puts the tensors of an atrous
checkpoint, a pretrained folder, a Hub repository or a torchvision/timm state-dict file into
a model, matching by name and shape, and reports what matched.

A tensor whose shape differs (the classifier and auxiliary heads when the class count
changed) keeps the model's own initialisation and is reported as re-initialised; tensors of
the source the model does not have are reported as unused. `strict=True` refuses any of
these. A state-dict file whose names carry no atrous prefix (a timm or torchvision backbone)
is matched under the model's submodule prefix that fits it best ("backbone.", "encoder.").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from atrous.backbones.base import adapt_first_conv
from atrous.checkpoints.sources import resolve_source
from atrous.errors import UserError
from atrous.models import SegmentationModel, model_family


@dataclass
class LoadReport:
    """What `load_weights` did: tensor names matched, re-initialised (shape differs), missing
    from the source, and unused (in the source, not in the model)."""

    source: str
    matched: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # the first convolution, from the source's bands to the model's
    unused: list[str] = field(default_factory=list)
    prefix: str = ""  # the model prefix the source's names were matched under ("" = as named)

    def line(self) -> str:
        """The report in one line, for the console."""
        def some(names: list[str]) -> str:
            return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""

        where = f" under '{self.prefix}'" if self.prefix else ""
        bands = f" (first convolution adapted to the model's bands: {self.adapted[0]})" if self.adapted else ""
        return (f"weights from {self.source}{where}: {len(self.matched)} tensors matched{bands}, "
                f"{len(self.reinitialised)} re-initialised{some(self.reinitialised)}, "
                f"{len(self.missing)} kept the model's initialisation{some(self.missing)}, "
                f"{len(self.unused)} unused{some(self.unused)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


TORCHVISION = "torchvision:"


def read_source(source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, atrous header or None) of a checkpoint file, a pretrained folder, a Hub
    repo id, a plain state-dict file, or "torchvision:NAME[:WEIGHTS]" (torchvision's
    published weights, DEFAULT unless named, as the equivalent atrous model's tensors)."""
    if source.startswith(TORCHVISION):
        return _torchvision(source)
    path = resolve_source(source)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{source}: not a readable .safetensors file ({err})") from err
        if "atrous" in metadata:
            from atrous.checkpoints.checkpoint import read_checkpoint_header

            return state, read_checkpoint_header(path)
        return state, None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and the like: say which file, in one line
        raise UserError(f"{source}: cannot read weights ({str(err).strip().splitlines()[0]})") from err
    return _unwrap(loaded, source), None


def _torchvision(source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from atrous.models.torchvision_compat import from_torchvision

    name, _, weights = source.removeprefix(TORCHVISION).partition(":")
    try:
        model = from_torchvision(name, weights=weights or "DEFAULT")
    except ValueError as err:
        raise UserError(f"{source}: {err}") from err
    except Exception as err:  # the download failed (offline, no space): one line
        raise UserError(f"{source}: cannot fetch torchvision's weights ({str(err).strip().splitlines()[0]})") from err
    return model.state_dict(), {"model": model.config}


def _unwrap(loaded: Any, source: str) -> dict[str, torch.Tensor]:
    """The state dict in a training script's checkpoint ({"state_dict": ...}, {"model": ...})."""
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise UserError(f"{source}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_weights(model: SegmentationModel, source: str, *, strict: bool = False) -> LoadReport:
    """Copy the tensors of `source` into `model` where name and shape match; see the module's
    docstring. Returns the report; a source that matches nothing, or an atrous checkpoint of
    another architecture, is a one-line UserError."""
    state, header = read_source(source)
    name = (model.config or {}).get("name")
    if header is not None and name and not same_family(header["model"]["name"], name):
        raise UserError(f"{source} holds a '{header['model']['name']}' model, not '{name}'; "
                        "init_from needs the same architecture or its family (fcn32s -> fcn16s -> fcn8s)",
                        argument="init_from")
    own = model.state_dict()
    prefix = "" if any(k in own for k in state) else _best_prefix(own, state)
    report = LoadReport(source=source, prefix=prefix)
    state = {prefix + k: v for k, v in state.items()}
    adapted = adapt_first_conv(state, own)  # weights of a model of other bands: its first convolution adapted
    report.adapted = [adapted] if adapted else []
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    merged = dict(own)
    for key, tensor in state.items():
        target = prefix + key
        if target not in own:
            report.unused.append(key)
        elif own[target].shape != tensor.shape:
            report.reinitialised.append(target)
        else:
            merged[target] = tensor.to(own[target].dtype)
            report.matched.append(target)
    used = set(report.matched) | set(report.reinitialised)
    report.missing = [k for k in own if k not in used]
    if not report.matched:
        raise UserError(f"{source}: no tensor matches the model's (name and shape); is it another architecture?")
    if strict and (report.reinitialised or report.missing or report.unused):
        raise UserError(f"{source} does not fit exactly (strict): {report.line()}")
    model.load_state_dict(merged)
    return report


def same_family(source_name: str, model_name: str) -> bool:
    """The same model, or one of the same family file (FCN-32s -> 16s -> 8s, the papers'
    staged training; DeepLab v3 -> v3+), whose shared layers carry the same names."""
    if source_name == model_name:
        return True
    try:
        return model_family(source_name) == model_family(model_name)
    except ValueError:  # a model this installation does not know
        return False


def _best_prefix(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """The submodule prefix under which most of the source's names (and shapes) appear."""
    prefixes = {".".join(k.split(".")[:depth]) + "." for k in own for depth in range(1, k.count(".") + 1)}
    scores = {p: sum(1 for k, v in state.items() if p + k in own and own[p + k].shape == v.shape) for p in prefixes}
    best = max(scores, key=scores.get, default="")
    return best if scores.get(best, 0) else ""
