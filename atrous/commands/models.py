"""`atrous models [NAME]`: every registered model with its summary, or one model's options."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.errors import UserError
from atrous.models import describe_model, list_models, model_summaries
from atrous.options import option

HELP = "list the registered models; with NAME, that model's paper, options and defaults"


@dataclass(kw_only=True)
class ModelsOptions:
    name: str | None = option(None, "a model name: print its documentation and options", positional=True,
                              nargs="?")


def run(opts: ModelsOptions) -> int:
    if opts.name is not None:
        if opts.name not in list_models():
            raise UserError(f"unknown model '{opts.name}'; choose one of: {', '.join(list_models())}")
        print(describe_model(opts.name))
        return 0
    summaries = model_summaries()
    width = max(len(n) for n in summaries)
    for name, summary in summaries.items():
        print(f"{name:<{width}}  {summary}")
    return 0


Options = ModelsOptions
