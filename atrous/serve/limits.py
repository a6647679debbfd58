"""What keeps the server's memory and work bounded: a cap on request bodies, and admission
of at most `concurrency + queue` prediction requests at once (the rest get 503)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """A request body longer than the limit (raised while it is being read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {_size(limit)} (see --max-upload-mb)")


class BodyLimit:
    """ASGI middleware: a request whose Content-Length exceeds `max_bytes` is answered 413
    before its body is read; a body that turns out longer while it streams in (chunked
    uploads, a lying header) raises BodyTooLarge where it is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, str(BodyTooLarge(self.max_bytes)), close=True)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class Admission:
    """Counts the prediction requests inside the server (being uploaded, waiting for a
    worker, or running); `try_enter` refuses beyond `limit`. Used from the event loop only,
    so a plain counter is enough."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inside = 0

    def try_enter(self) -> bool:
        if self.inside >= self.limit:
            return False
        self.inside += 1
        return True

    def leave(self) -> None:
        self.inside -= 1


async def _send_json(send: Send, status: int, message: str, *, close: bool = False) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the unread body makes the connection unusable for another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:g} MiB" if num_bytes >= 2**20 else f"{num_bytes} bytes"
