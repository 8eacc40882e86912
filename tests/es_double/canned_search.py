"""A minimal HTTP stand-in for one ``_search`` call, for the plumbing of ``imagescore query --es-url``.

It records the request and answers a canned Elasticsearch-shaped response. It
computes no scores (Elasticsearch's own arithmetic is checked against a real
cluster when ``$ES_URL`` is set); it only lets a test see what the real client
sent and how the command prints what came back. Anything but a search is a 400.
"""
from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CannedSearch:
    """``with CannedSearch(response) as server: ...``; ``server.requests`` holds (method, path, params, body)."""

    def __init__(self, response: dict[str, Any]):
        self.response = response
        self.requests: list[tuple[str, str, dict, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _answer(self):
                parsed = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                params = dict(urllib.parse.parse_qsl(parsed.query))
                outer.requests.append((self.command, parsed.path, params, body))
                if parsed.path.endswith("/_search") and self.command in ("GET", "POST"):
                    status, payload = 200, outer.response
                else:
                    status, payload = 400, {"error": {"type": "illegal_argument_exception",
                                                      "reason": f"this stand-in answers _search only, not {parsed.path}"},
                                            "status": 400}
                data = json.dumps(payload).encode()
                accept = self.headers.get("Accept", "")
                compat = accept.split("compatible-with=")[-1] if "compatible-with=" in accept else None
                self.send_response(status)
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Type", f"application/vnd.elasticsearch+json;compatible-with={compat}"
                                 if compat else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CannedSearch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
