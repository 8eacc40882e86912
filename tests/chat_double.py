"""A strict local stand-in for an OpenAI-compatible chat-completions endpoint.

It is a real HTTP server on 127.0.0.1 that the real ``openai`` client talks
to. It checks every request the way a vision endpoint would (path, model,
messages, text + ``image_url`` parts with inline JPEG data URLs, one
``Image k`` label per image) and refuses a bad one with an OpenAI-shaped 400.
Replies come from recorded exchanges under ``tests/data/chat/`` (status,
headers, body), played in order from a script, so tests can serve good,
malformed, rate-limited, failing and slow answers. Once the script is empty a
``responder`` (when given) answers from the images the request actually
carried, so a whole simulated log can be labelled over HTTP; see
``tests/pixel_judge.py``.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

RECORDINGS = Path(__file__).parent / "data" / "chat"
DATA_URL = re.compile(r"^data:image/jpeg;base64,(.+)$", re.DOTALL)
IMAGE_LABEL = re.compile(r"^Image (\d+)$")


@dataclass
class Reply:
    status: int = 200
    body: object = None  # dict -> JSON, str -> text
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (timeouts)


def completion(content: str, prompt_tokens: int, completion_tokens: int, model: str = "chat-double") -> Reply:
    """A 200 reply in OpenAI's chat.completion shape carrying ``content`` as the assistant's text."""
    return Reply(body={
        "id": "chatcmpl-double", "object": "chat.completion", "created": 1714557600, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def recorded(name: str, delay: float = 0.0) -> Reply:
    """The recorded exchange ``tests/data/chat/<name>.json``."""
    data = json.loads((RECORDINGS / f"{name}.json").read_text(encoding="utf-8"))
    return Reply(status=data["status"], body=data["body"], headers=data.get("headers", {}), delay=delay)


@dataclass
class SeenRequest:
    model: str
    n_images: int
    authorization: str | None
    received_at: float
    image_sizes: list[tuple[int, int]]  # (width, height) of each image as sent


# (number of images, the decoded images in request order) -> the reply to send.
Responder = Callable[[int, list[Image.Image]], Reply]


class ChatDouble:
    """``ChatDouble(script=[...], responder=fn, default=Reply)``; ``url`` is the base URL for ``--base-url``.

    Each valid request is answered by the next scripted reply; when the script
    is empty, by ``responder(n_images, images)``; without a responder, by
    ``default``; without that, by a 500 saying the script ran out.
    """

    def __init__(self, script: list[Reply] | None = None, default: Reply | None = None,
                 responder: Responder | None = None):
        self.script = list(script or [])
        self.default = default
        self.responder = responder
        self.requests: list[SeenRequest] = []
        self.errors: list[str] = []  # malformed requests and responder failures: tests assert it stays empty
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def start(self) -> ChatDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ChatDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_reply(self, images: list[Image.Image]) -> Reply:
        with self._lock:
            if self.script:
                return self.script.pop(0)
        if self.responder is not None:
            try:
                return self.responder(len(images), images)
            except Exception as exc:  # noqa: BLE001 - a broken responder is a test bug: record it, answer 500
                message = f"chat double: responder failed: {type(exc).__name__}: {exc}"
                with self._lock:
                    self.errors.append(message)
                return Reply(500, {"error": {"message": message, "type": "server_error"}})
        if self.default is None:
            return Reply(500, {"error": {"message": "chat double: script exhausted", "type": "server_error"}})
        return self.default

    def check(self, path: str, raw: bytes) -> tuple[str, list[Image.Image]]:
        """Validate one request; returns (model, the fully decoded images in order) or raises ValueError."""
        if path != "/v1/chat/completions":
            raise ValueError(f"unknown path {path}")
        body = json.loads(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("'model' must be a non-empty string")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        images, labels, texts = [], [], 0
        for message in messages:
            if message.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"bad role {message.get('role')!r}")
            content = message.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                if part.get("type") == "text":
                    texts += 1
                    match = IMAGE_LABEL.match(part.get("text", ""))
                    if match:
                        labels.append(int(match.group(1)))
                elif part.get("type") == "image_url":
                    url = part.get("image_url", {}).get("url", "")
                    match = DATA_URL.match(url)
                    if not match:
                        raise ValueError(f"image_url must be an inline JPEG data URL, got {url[:40]!r}")
                    try:
                        data = base64.b64decode(match.group(1), validate=True)
                    except binascii.Error as exc:
                        raise ValueError(f"bad base64 in data URL: {exc}") from None
                    if not data.startswith(b"\xff\xd8"):
                        raise ValueError("data URL does not hold a JPEG")
                    try:
                        image = Image.open(io.BytesIO(data))
                        image.load()
                    except OSError as exc:
                        raise ValueError(f"data URL holds no decodable JPEG: {exc}") from None
                    images.append(image)
                else:
                    raise ValueError(f"unknown content part type {part.get('type')!r}")
        if not texts:
            raise ValueError("no text part with the instructions")
        if not images:
            raise ValueError("no image in the request")
        if labels != list(range(1, len(images) + 1)):
            raise ValueError(f"image labels {labels} do not number the {len(images)} images 1..N")
        return model, images

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, reply: Reply) -> None:
                payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                data = payload.encode("utf-8")
                self.send_response(reply.status)
                content_type = "application/json" if not isinstance(reply.body, str) else "text/plain"
                self.send_header("Content-Type", content_type)
                for key, value in reply.headers.items():
                    self.send_header(key, str(value))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    model, images = double.check(self.path, raw)
                except (ValueError, AttributeError, TypeError) as exc:
                    with double._lock:
                        double.errors.append(str(exc))
                    self._send(Reply(400, {"error": {"message": str(exc), "type": "invalid_request_error"}}))
                    return
                with double._lock:
                    double.requests.append(SeenRequest(model, len(images), self.headers.get("Authorization"),
                                                       time.monotonic(), [image.size for image in images]))
                    double.in_flight += 1
                    double.max_in_flight = max(double.max_in_flight, double.in_flight)
                try:
                    reply = double._next_reply(images)
                    if reply.delay:
                        time.sleep(reply.delay)
                    try:
                        self._send(reply)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client gave up (timeout): that is what the slow reply tests
                finally:
                    with double._lock:
                        double.in_flight -= 1

        return Handler
