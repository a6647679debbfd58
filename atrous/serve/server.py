"""`atrous serve`: load the checkpoint and the CRFs once, bind the socket, run uvicorn.

Everything that can be wrong with the options (a bad checkpoint, CRF parameters, a port in
use) is reported in one line before the server starts listening."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from atrous.data.display import display_bands_option
from atrous.data.options import threshold_option
from atrous.errors import UserError
from atrous.inference.engines import engine_option
from atrous.options import check_options, option
from atrous.runtime.device import PRECISIONS
from atrous.runtime.options import device_option

EXTRA_HINT = "pip install 'atrous[serve]'"


@dataclass(frozen=True)
class ServeOptions:
    """`atrous serve`'s options, declared once (atrous.options)."""

    checkpoint: str = option(help="the checkpoint served")
    host: str = option("127.0.0.1", "address to listen on (the default: this machine only)")
    port: int = option(8000, "port (0: any free port)", ge=0, le=65535)
    crf_params: str | None = option(None, "YAML/JSON file of CRF parameters; its 'kind' (dense, the default, "
                                    "or conv) says which CRF they set")
    max_upload_mb: float = option(20.0, "largest upload accepted, in MB", gt=0)
    max_megapixels: float = option(4.0, "larger images are refused from their header, before decoding", gt=0)
    concurrency: int = option(1, "inferences running at once", ge=1)
    queue: int = option(8, "prediction requests waiting beyond those; more are answered 503", ge=0)
    precision: str = option("fp32", "auto: bf16 where the CPU has native bf16 and on CUDA, fp32 elsewhere",
                            choices=PRECISIONS)
    device: str | None = device_option()  # a frozen dataclass: the shared declaration, not the mixin
    engine: str = engine_option()  # torch, openvino, onnxruntime or auto (atrous.inference.engines)
    display_bands: list[int] | None = display_bands_option()  # overlays of images that are not 8-bit RGB
    threshold: float | None = threshold_option()  # binary and multilabel models
    output_stride: int | None = option(None, "run the model at this output stride with its own weights; default: "
                                       "as trained", choices=(8, 16, 32))


ServeConfig = ServeOptions  # its earlier name


def require_serve_extra() -> None:
    """One line naming the install command when the optional server libraries are absent."""
    missing = []
    for module, package in (("starlette", "starlette"), ("uvicorn", "uvicorn"), ("multipart", "python-multipart")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise UserError(f"atrous serve needs {', '.join(missing)}: {EXTRA_HINT}")


def check_config(config: ServeConfig) -> None:
    check_options(config)


def build_app(config: ServeConfig) -> Any:
    """The Starlette app for `config`: the checkpoint loaded, the CRFs built."""
    require_serve_extra()
    check_config(config)
    import os

    from atrous.checkpoints.checkpoint import load_checkpoint
    from atrous.inference.engines import on_engine
    from atrous.inference.refinement import build_crf
    from atrous.options import read_mapping_file
    from atrous.runtime.device import resolve_device
    from atrous.serve.app import Limits, create_app
    from atrous.serve.segment import Segmenter

    model = load_checkpoint(config.checkpoint, output_stride=config.output_stride).to(resolve_device(config.device))
    model = on_engine(model, config.engine, config.precision)
    params_kind = None
    if config.crf_params:
        params_kind = read_mapping_file(config.crf_params, "crf_params").get("kind", "dense")
        if params_kind not in ("dense", "conv"):
            raise UserError(f"crf_params {config.crf_params}: kind must be dense or conv, got '{params_kind}'",
                            argument="crf_params")
    kinds = () if model.meta.get("task") == "multilabel" else ("dense", "conv")  # no CRF for overlapping labels
    crfs = {kind: build_crf(kind, model, config.crf_params if kind == params_kind else None) for kind in kinds}
    segmenter = Segmenter(model, crfs, name=os.path.basename(config.checkpoint), concurrency=config.concurrency,
                          precision=config.precision, max_pixels=int(config.max_megapixels * 1e6),
                          display_bands=config.display_bands, threshold=config.threshold)
    limits = Limits(max_upload_bytes=int(config.max_upload_mb * 2**20), concurrency=config.concurrency,
                    queue=config.queue)
    return create_app(segmenter, limits)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free port), or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise UserError(f"host {host}: {err.strerror}", argument="host") from err
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)  # from here on, connections wait in the backlog until uvicorn accepts them
    except OSError as err:
        sock.close()
        raise UserError(f"host {host} port {port}: cannot listen there ({err.strerror})", argument=("host", "port")) from err
    return sock


def serve(config: ServeConfig, *, log_level: str = "info") -> None:
    """Load, bind, then serve until interrupted."""
    app = build_app(config)
    sock = bind(config.host, config.port)
    import uvicorn

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"atrous serve: {config.checkpoint} on http://{shown}:{port}/ (Ctrl+C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
