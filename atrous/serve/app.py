"""The HTTP API (Starlette): `GET /` the page, `GET /health`, `POST /predict`.

Every error is a 4xx/5xx with one line of JSON, `{"error": "..."}`, and the server goes on
serving. Inference runs in worker threads, at most `concurrency` at once; at most `queue`
more prediction requests wait, the rest are answered 503 at once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import QueryParams, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from atrous.data import DataError, ImageTooLarge
from atrous.serve.limits import Admission, BodyLimit, BodyTooLarge
from atrous.serve.segment import CRF_KINDS, OUTPUTS, Options, Segmenter, Timer

FIELD = "image"  # the multipart field holding the upload
MAX_SCALES, MAX_SCALE = 8, 2.0  # per request: what one upload may cost


class ApiError(Exception):
    """An error answered as `status` with `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 2**20
    concurrency: int = 1  # inferences running at once
    queue: int = 8  # prediction requests waiting beyond those

    def describe(self, max_pixels: int | None) -> dict[str, Any]:
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": max_pixels,
                "concurrency": self.concurrency, "queue": self.queue}


def create_app(segmenter: Segmenter, limits: Limits = Limits()) -> Starlette:
    """The ASGI application serving `segmenter` within `limits`."""
    page = resources.files("atrous.serve").joinpath("static", "index.html").read_text(encoding="utf-8")
    admission = Admission(limits.concurrency + limits.queue)
    workers = anyio.CapacityLimiter(limits.concurrency)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **segmenter.describe(),
                             "limits": limits.describe(segmenter.max_pixels)})

    async def predict(request: Request) -> Response:
        options = parse_options(request.query_params, segmenter)
        if not admission.try_enter():
            await _discard_body(request)
            raise ApiError(503, f"the server is busy ({admission.limit} requests in progress); retry shortly")
        try:
            timer = Timer()
            with timer.step("upload"):
                data, what = await read_upload(request)
            waiting = time.perf_counter()
            async with workers:
                timer.ms["queue"] = 1000 * (time.perf_counter() - waiting)
                result = await anyio.to_thread.run_sync(segmenter.run, data, what, options, timer)
        except ImageTooLarge as err:
            raise ApiError(413, str(err)) from err
        except DataError as err:
            raise ApiError(400, str(err)) from err
        finally:
            admission.leave()
        timing = ", ".join(f"{name};dur={ms:.1f}" for name, ms in result.timings_ms.items())
        return Response(result.body, media_type=result.media_type, headers={"Server-Timing": timing})

    app = Starlette(
        routes=[Route("/", index), Route("/health", health), Route("/predict", predict, methods=["POST"])],
        middleware=[Middleware(BodyLimit, max_bytes=limits.max_upload_bytes)],
        exception_handlers={ApiError: _api_error, BodyTooLarge: _body_too_large, HTTPException: _http_error,
                            Exception: _internal_error},
    )
    app.state.segmenter, app.state.limits = segmenter, limits  # for inspection (tests, embedding)
    return app


async def _api_error(request: Request, err: Exception) -> Response:
    return _error(getattr(err, "status", 400), str(err))


async def _body_too_large(request: Request, err: Exception) -> Response:
    return _error(413, str(err), close=True)


async def _http_error(request: Request, err: Exception) -> Response:  # 404, 405, ...
    return _error(getattr(err, "status_code", 500), str(getattr(err, "detail", err)))


async def _internal_error(request: Request, err: Exception) -> Response:
    return _error(500, f"internal error: {type(err).__name__}: {err}")


def parse_options(query: QueryParams, segmenter: Segmenter) -> Options:
    """The query string of /predict as Options; unknown names and bad values are 400s."""
    known = ("output", "crf", "scales", "flip", "opacity", "masks")
    unknown = sorted(set(query.keys()) - set(known))
    if unknown:
        raise ApiError(400, f"unknown query parameter '{unknown[0]}'; known: {', '.join(known)}")
    output = _choice(query, "output", OUTPUTS, Options.output)
    crf = _choice(query, "crf", CRF_KINDS, Options.crf)
    if crf != "none" and crf not in segmenter.crfs:
        raise ApiError(400, f"crf={crf} is not available on this server")
    try:
        opacity = float(query.get("opacity", Options.opacity))
    except ValueError:
        opacity = -1.0
    if not 0.0 <= opacity <= 1.0:
        raise ApiError(400, f"opacity must be a number from 0 to 1, got '{query.get('opacity')}'")
    return Options(output=output, crf=crf, scales=_scales(query.get("scales", "1")), flip=_flag(query, "flip"),
                   opacity=opacity, masks=_flag(query, "masks"))


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(value) for value in text.split(","))
    except ValueError:
        scales = ()
    if not 1 <= len(scales) <= MAX_SCALES or not all(0 < s <= MAX_SCALE for s in scales):
        raise ApiError(400, f"scales must be 1 to {MAX_SCALES} comma-separated numbers in (0, {MAX_SCALE:g}], "
                            f"e.g. 0.75,1,1.25; got '{text}'")
    return scales


def _flag(query: QueryParams, name: str) -> bool:
    return _choice(query, name, ("true", "false", "1", "0"), "false") in ("true", "1")


def _choice(query: QueryParams, name: str, choices: tuple[str, ...], default: str) -> str:
    value = query.get(name, default)
    if value not in choices:
        raise ApiError(400, f"{name} must be one of {'|'.join(choices)}, got '{value}'")
    return value


async def read_upload(request: Request) -> tuple[bytes, str]:
    """The bytes of the file in the multipart field `image`, and how to name it in errors."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, f"send the image as multipart/form-data in the field '{FIELD}' "
                            f"(e.g. curl -F {FIELD}=@photo.jpg)")
    try:
        form = await request.form(max_files=1, max_fields=16)
    except HTTPException as err:  # Starlette's report of a malformed multipart body
        raise ApiError(400, f"cannot read the multipart upload: {err.detail}") from err
    except ClientDisconnect as err:
        raise ApiError(400, "the client went away during the upload") from err
    try:
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            fields = ", ".join(sorted(set(form.keys()))) or "none"
            raise ApiError(400, f"no file in the multipart field '{FIELD}' (fields sent: {fields})")
        data = await upload.read()
        name = _one_line(upload.filename or "")[:120]
        return data, f"the upload '{name}'" if name else "the upload"
    finally:
        await form.close()


async def _discard_body(request: Request) -> None:
    """Reads and drops the body (at most the upload limit), so that a refusal reaches the
    client cleanly instead of a reset connection."""
    try:
        async for _ in request.stream():
            pass
    except BodyTooLarge:
        pass


def _error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    headers = {"Connection": "close"} if close else {}
    if status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


def _one_line(text: str) -> str:
    return " ".join(text.split())
