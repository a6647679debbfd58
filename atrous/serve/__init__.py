"""`atrous serve`: an HTTP API and a browser page for any checkpoint (the optional extra
`serve`: `pip install 'atrous[serve]'`).

    from atrous.serve import ServeConfig, build_app, serve
    serve(ServeConfig("runs/demo/model.safetensors", port=8000))   # blocks; Ctrl+C stops
    app = build_app(ServeConfig(...))                               # the ASGI app, for tests or another server

Importing this package needs none of the server libraries; building the app does.
"""

from atrous.serve.server import EXTRA_HINT, ServeConfig, build_app, require_serve_extra, serve

__all__ = ["EXTRA_HINT", "ServeConfig", "build_app", "require_serve_extra", "serve"]
