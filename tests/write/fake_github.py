"""A fake GitHub REST API on a loopback port, for the crawler's tests.

It serves `GET /repositories?since=` (pages linked by `Link: rel="next"`),
`GET /repos/{owner}/{repo}` and `GET /repos/{owner}/{repo}/readme` (raw), and
behaves as GitHub does where the crawler must cope:

* a primary limit: `limit` requests a window, with `x-ratelimit-*` headers; a
  request while the budget is spent gets 403 and is recorded as a violation;
* secondary limits: 403 with `retry-after` at chosen request numbers (or
  without, which means "wait at least a minute"); a request sooner than asked
  is recorded as a violation;
* 5xx at chosen request numbers; ETags on every 200, and 304 (free) to a
  matching `If-None-Match`;
* a restart: `stop()` and `start()` on the same port keep the state (the
  repositories, the budget, the log).

Time is read from a clock given to it: in-process tests share a `FakeClock` with
the crawler, so every recorded time is in the crawler's own (fake) time.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from brainy.write.sources.ratelimit import Clock

LOOPBACK = "127.0.0.1"
TOKEN = "ghp_test_token"


class FakeClock:
    """A clock that moves only when something sleeps on it (tests). Thread-safe:
    a fake server may read it while the crawler sleeps.

    Attributes:
        slept: every sleep asked for, in order (seconds).
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        return self.time()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self._now += max(0.0, seconds)


@dataclass
class FakeRepo:
    id: int
    full_name: str
    description: str | None
    readme: str | None  # None: no README (404)
    stars: int = 0
    language: str | None = "Python"
    topics: list[str] = field(default_factory=list)
    pushed_at: str = "2026-01-01T00:00:00Z"
    updated_at: str = "2026-01-02T00:00:00Z"
    created_at: str = "2020-01-01T00:00:00Z"
    status: int = 200  # 404: deleted after being listed, 451: blocked
    listed_as: str | None = None  # renamed after being listed: the old name redirects

    @property
    def live(self) -> bool:
        return self.status == 200


def make_repos(n: int, start: int = 1, step: int = 3) -> list[FakeRepo]:
    """`n` repositories with sparse ids; every 5th without a README, every 7th
    without a description, one gone (404) and one blocked (451)."""
    repos = []
    for i in range(n):
        rid = start + i * step
        words = ["vector", "search", "bucket", "firehose", "crawler", "index", "annoy"]
        repos.append(
            FakeRepo(
                id=rid,
                full_name=f"owner{i % 4}/repo-{rid}",
                description=None if i % 7 == 3 else f"a {words[i % 7]} tool number {rid}",
                readme=None if i % 5 == 2 else f"# repo {rid}\n\n" + f"{words[i % 7]} " * 600,
                stars=i * 11,
                language=["Python", "Go", None][i % 3],
                topics=[words[i % 7], "demo"] if i % 2 else [],
                pushed_at=f"2026-01-{1 + i % 28:02d}T00:00:00Z",
                updated_at=f"2026-01-{1 + i % 20:02d}T12:00:00Z",
                created_at=f"2019-{1 + i % 12:02d}-01T00:00:00Z",
            )
        )
    if n > 12:
        repos[9].status = 404
        repos[12].status = 451
        repos[4].listed_as = f"former/{repos[4].full_name.split('/')[1]}"
    return repos


@dataclass
class Seen:
    """One request as the server saw it."""

    at: float  # the server clock's time
    path: str
    status: int
    conditional: bool


class FakeGitHub:
    """The state and the server. Use as a context manager, or start()/stop().

    Args:
        repos: the repositories, any order.
        clock: whose time stamps requests and defines the rate-limit window.
        page_size: repositories a listing page holds (GitHub: 100).
        limit, window: the primary budget: `limit` requests every `window` seconds.
        secondary: request numbers (1-based) answered with a secondary limit,
            mapped to their `retry-after` (None: no header).
        failures: request numbers answered with this 5xx status.
    """

    def __init__(
        self,
        repos: list[FakeRepo],
        clock: Clock,
        *,
        page_size: int = 10,
        limit: int = 5000,
        window: float = 3600.0,
        secondary: dict[int, float | None] | None = None,
        failures: dict[int, int] | None = None,
        port: int = 0,
    ) -> None:
        self.repos = sorted(repos, key=lambda r: r.id)
        self.by_name = {r.full_name: r for r in self.repos}
        self.renamed = {r.listed_as: r for r in self.repos if r.listed_as}
        self.clock = clock
        self.page_size = page_size
        self.limit = limit
        self.window = window
        self.secondary = dict(secondary or {})
        self.failures = dict(failures or {})
        self.port = port
        self.log: list[Seen] = []
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._reset = clock.time() + window
        self._remaining = limit
        self._not_before = 0.0  # set by a secondary limit

    # ---- lifecycle

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> FakeGitHub:
        server = ThreadingHTTPServer((LOOPBACK, self.port), _handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what the tests read

    def expected_ids(self) -> set[str]:
        return {f"gh:{r.full_name}" for r in self.repos if r.live}

    def times(self, *, counted_only: bool = False) -> list[float]:
        return [s.at for s in self.log if not counted_only or s.status != 304]

    # ---- answering

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            now = self.clock.time()
            number = len(self.log) + 1
            conditional = "if-none-match" in headers
            status, out, body = self._answer(number, now, path, headers)
            self.log.append(Seen(now, path, status, conditional))
            return status, out, body

    def _answer(
        self, number: int, now: float, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {}, _json({"message": "Bad credentials"})
        if now < self._not_before:
            self.violations.append(
                f"#{number} {path} at {now}: before retry-after {self._not_before}"
            )
        if now >= self._reset:
            self._reset = now + self.window
            self._remaining = self.limit
        if self._remaining <= 0:
            self.violations.append(f"#{number} {path} at {now}: budget spent until {self._reset}")
            return 403, self._budget(), _json({"message": "API rate limit exceeded"})
        if number in self.secondary:
            retry_after = self.secondary[number]
            out = self._budget()
            wait = 60.0 if retry_after is None else retry_after
            if retry_after is not None:
                out["retry-after"] = str(int(retry_after))
            self._not_before = now + wait
            return 403, out, _json({"message": "You have exceeded a secondary rate limit."})
        if number in self.failures:
            return self.failures[number], {}, b"<html>unicorn</html>"
        status, out, body = self._resource(path)
        if status == 200:
            etag = '"' + hashlib.sha1(body).hexdigest() + '"'
            out["etag"] = etag
            if headers.get("if-none-match") == etag:
                return 304, {**out, **self._budget()}, b""  # free: the budget is not touched
        self._remaining -= 1
        return status, {**out, **self._budget()}, body

    def _budget(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(max(0, self._remaining)),
            "x-ratelimit-reset": str(int(self._reset + 0.999)),
        }

    def _resource(self, path: str) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(path)
        if parts.path == "/repositories":
            since = int(parse_qs(parts.query).get("since", ["0"])[0])
            page = [r for r in self.repos if r.id > since][: self.page_size]
            out = {"content-type": "application/json"}
            if page:
                out["link"] = f'<{self.url}/repositories?since={page[-1].id}>; rel="next"'
            names = [r.listed_as or r.full_name for r in page]
            listed = [
                {"id": r.id, "full_name": name, "name": name.split("/")[1],
                 "owner": {"login": name.split("/")[0]}, "description": r.description,
                 "fork": False}
                for r, name in zip(page, names, strict=True)
            ]  # fmt: skip
            return 200, out, _json(listed)
        m = re.fullmatch(r"/repos/([^/]+/[^/]+)(/readme)?", parts.path)
        if m and m.group(1) in self.renamed:
            moved = f"{self.url}/repos/{self.renamed[m.group(1)].full_name}{m.group(2) or ''}"
            return 301, {"location": moved}, _json({"message": "Moved Permanently"})
        repo = self.by_name.get(m.group(1)) if m else None
        if repo is None:
            return 404, {}, _json({"message": "Not Found"})
        if repo.status != 200:
            return repo.status, {}, _json({"message": "Repository access blocked"})
        if m and m.group(2):
            if repo.readme is None:
                return 404, {}, _json({"message": "Not Found"})
            return 200, {"content-type": "text/plain"}, repo.readme.encode()
        details = {
            "id": repo.id, "full_name": repo.full_name, "description": repo.description,
            "stargazers_count": repo.stars, "language": repo.language, "topics": repo.topics,
            "html_url": f"https://github.com/{repo.full_name}", "pushed_at": repo.pushed_at,
            "updated_at": repo.updated_at, "created_at": repo.created_at,
        }  # fmt: skip
        return 200, {"content-type": "application/json"}, _json(details)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _handler(fake: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request a connection: a restart drops nothing open

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, out, body = fake.answer(self.path, headers)
            self.send_response(status)
            for name, value in out.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
