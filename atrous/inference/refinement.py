"""The CRF that refines a model's scores (`--crf dense|conv`): parameters from a file, else
those fitted and saved in the checkpoint by `atrous fit-crf`, else the layer's defaults."""

from __future__ import annotations

from typing import Any

import torch

from atrous.errors import UserError
from atrous.models import SegmentationModel
from atrous.options import read_mapping_file

CRF_KINDS = ("none", "dense", "conv")


def _read_params(path: str) -> dict[str, Any]:
    return read_mapping_file(path, "--crf-params")


def build_crf(kind: str, model: SegmentationModel, params_path: str | None = None) -> torch.nn.Module | None:
    """The CRF for `--crf kind`: parameters from `--crf-params`, else those fitted and saved
    in the checkpoint (meta["crf"][kind] = {"init": kwargs, "state": state_dict as lists}, as
    written by `atrous fit-crf`), else the layer's published defaults. `num_classes` is the
    model's unless given."""
    if kind == "none":
        if params_path:
            raise UserError("--crf-params needs --crf dense or --crf conv")
        return None
    from atrous.crf import ConvCRF, DenseCRF

    def from_params(params: dict[str, Any], where: str) -> torch.nn.Module:
        params = {str(k).replace("-", "_"): v for k, v in params.items() if k != "kind"}
        given = params.setdefault("num_classes", model.num_classes)
        if given is not None and given != model.num_classes:
            raise UserError(f"{where}: num_classes {given} does not match the model's {model.num_classes}")
        try:
            return layer(**params)
        except (TypeError, ValueError) as err:
            raise UserError(f"{where}: {err}") from err

    layer = {"dense": DenseCRF, "conv": ConvCRF}[kind]
    saved = (model.meta.get("crf") or {}).get(kind)
    if params_path:
        crf = from_params(_read_params(params_path), f"--crf-params {params_path}")
    elif saved:
        where = f"the checkpoint's fitted {kind} CRF"
        if not isinstance(saved, dict) or not isinstance(saved.get("init", {}), dict):
            raise UserError(f"{where} is damaged (expected {{'init': ..., 'state': ...}})")
        crf = from_params(saved.get("init", {}), where)
        try:
            state = {k: torch.tensor(v, dtype=torch.float32) for k, v in saved.get("state", {}).items()}
            crf.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{where} is damaged: {str(err).strip().splitlines()[0]}") from err
    else:
        crf = layer(num_classes=model.num_classes)
    return crf.to(next(model.parameters()).device).eval()

