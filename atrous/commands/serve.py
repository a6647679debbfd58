"""`atrous serve`: an HTTP API and a browser page for a checkpoint (the optional extra `serve`)."""

from __future__ import annotations

from atrous.serve.server import ServeConfig

HELP = "an HTTP API and a browser page for a checkpoint (pip install 'atrous[serve]')"
Options = ServeConfig


def run(opts: ServeConfig) -> int:
    from atrous.serve import serve

    serve(opts)
    return 0
