"""The CRF that refines a model's scores (`--crf dense|conv`): parameters from a file, else
those fitted and saved in the checkpoint by `atrous fit-crf`, else the layer's defaults."""

from __future__ import annotations

from typing import Any

import torch

from atrous.data.tasks import task_of
from atrous.errors import UserError
from atrous.models import SegmentationModel
from atrous.options import read_mapping_file

CRF_KINDS = ("none", "dense", "conv")


def _read_params(path: str) -> dict[str, Any]:
    return read_mapping_file(path, "crf_params")


def build_crf(kind: str, model: SegmentationModel, params_path: str | None = None) -> torch.nn.Module | None:
    """The CRF for `--crf kind`: parameters from `--crf-params`, else those fitted and saved
    in the checkpoint (meta["crf"][kind] = {"init": kwargs, "state": state_dict as lists}, as
    written by `atrous fit-crf`), else the layer's published defaults. `num_classes` is the
    model's unless given. A binary model's CRF refines two classes (`BinaryCRF`); a
    multilabel model's is refused."""
    if kind == "none":
        if params_path:
            raise UserError("crf_params needs crf dense or conv", argument=("crf_params", "crf"))
        return None
    task = task_of(model.meta)
    if task == "multilabel":
        raise UserError(f"crf {kind}: the CRFs refine one class per pixel (a distribution over classes); a "
                        "multilabel model's labels are independent and may overlap, so it has none to refine",
                        argument="crf")
    classes = 2 if task == "binary" else model.num_classes
    from atrous.crf import ConvCRF, DenseCRF

    def from_params(params: dict[str, Any], where: str, argument: str | None = None) -> torch.nn.Module:
        params = {str(k).replace("-", "_"): v for k, v in params.items() if k != "kind"}
        given = params.setdefault("num_classes", classes)
        if given is not None and given != classes:
            raise UserError(f"{where}: num_classes {given} does not match the model's {classes}", argument=argument)
        try:
            return layer(**params)
        except (TypeError, ValueError) as err:
            raise UserError(f"{where}: {err}", argument=argument) from err

    layer = {"dense": DenseCRF, "conv": ConvCRF}[kind]
    saved = (model.meta.get("crf") or {}).get(kind)
    if params_path:
        crf = from_params(_read_params(params_path), f"crf_params {params_path}", "crf_params")
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
        crf = layer(num_classes=classes)
    crf = BinaryCRF(crf) if task == "binary" else crf
    return crf.to(next(model.parameters()).device).eval()


class BinaryCRF(torch.nn.Module):
    """A CRF over a binary model's scores: the logit z as two classes' logits [0, z] (their
    softmax is [1 - sigmoid(z), sigmoid(z)]), refined, and given back as one logit, the
    refined foreground's minus the background's (its sigmoid the refined probability)."""

    def __init__(self, crf: torch.nn.Module) -> None:
        super().__init__()
        self.crf = crf

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        two = torch.cat([torch.zeros_like(logits), logits], dim=1)  # (N, 2, H, W)
        refined = self.crf(two, image)
        return refined[:, 1:] - refined[:, :1]  # (N, 1, H, W)

