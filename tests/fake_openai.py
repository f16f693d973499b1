"""A local fake of an OpenAI-compatible embeddings API (`POST /v1/embeddings`), on a
free loopback port, for the `openai` embedder's tests.

It answers with deterministic vectors (the hash embedder's, of the `dimensions`
asked for), records every request, and plays scripted failures first: each
`fail(status, body, headers)` is answered once, in order, before successes resume.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from brainy.write.embedders import HashEmbedder

LOOPBACK = "127.0.0.1"


@dataclass
class FakeOpenAI:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    script: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    # Answer vectors of this length whatever `dimensions` asks (a server ignoring it).
    force_dimension: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.script.append((status, body, headers or {}))

    @property
    def inputs(self) -> list[str]:
        """Every text of every successful request, in order."""
        return [t for r in self.requests if r.get("ok") for t in r["input"]]

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any, dict]:
        with self.lock:
            self.headers.append(headers)
            if self.script:
                self.requests.append({**body, "ok": False})
                return self.script.pop(0)
            self.requests.append({**body, "ok": True})
        dim = self.force_dimension or body.get("dimensions") or 1536
        vectors = HashEmbedder(dim).embed(body["input"])
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)]  # fmt: skip
        data.reverse()  # the API does not promise order: clients sort by index
        return 200, {"object": "list", "data": data, "model": body["model"]}, {}


@contextmanager
def serve_fake_openai() -> Iterator[FakeOpenAI]:
    """The fake, serving on a free loopback port until the block ends."""
    fake = FakeOpenAI()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            if self.path != "/v1/embeddings":
                status, answer, extra = 404, {"error": {"message": "no such route"}}, {}
            else:
                status, answer, extra = fake.answer(body, dict(self.headers))
            raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    fake.url = f"http://{LOOPBACK}:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
