"""The GitHub crawler behind `brainy source github`: every public repository, in
the order of its numeric id, as one record each.

`GET /repositories?since=<id>` lists repositories after an id (following the
`Link: <...>; rel="next"` header page by page); the listing holds only the
name, owner and description, so each repository costs two more requests:
`GET /repos/{owner}/{repo}` for the stars, language, topics and `pushed_at` the
record's metadata carries, and `GET /repos/{owner}/{repo}/readme` (raw) for its
text. That is about 2.01 requests a repository, so one token's 5,000 requests an
hour crawl about 2,490 repositories an hour: the hourly limit, not the token
bucket (10 a second), is what bounds a crawl, and the crawler sleeps until the
reset when it is spent.

The position is `since`: the id of the last repository whose record is in a
durable batch. Records come out in id order, so resuming from a checkpoint
neither skips a repository nor (apart from the batch that was durable but not
yet checkpointed, which the idempotent batch key absorbs) writes one twice.

Requests follow GitHub's guidance ("Rate limits for the REST API", "Best
practices for using the REST API"): one at a time, never concurrently; paced by a
token bucket; when `x-ratelimit-remaining` reaches 0, nothing is sent until
`x-ratelimit-reset`; a 403/429 secondary limit waits `retry-after` seconds if
given, else until the reset if the budget is spent, else at least a minute,
doubling while it repeats; 5xx and dropped connections are retried with backoff.
GETs are conditional: a response's ETag (and body) are kept in a bounded LRU and
sent back as `If-None-Match`; an authorised 304 does not count against the
hourly limit. That pays where the crawler asks again for what it asked before:
the empty page at the head of the id space, polled while waiting for new
repositories. The cache lives in memory only: after a restart the crawl goes on
past everything it read, so stored ETags would hardly ever match again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

from brainy.core.errors import BrainyError
from brainy.write.sources.ratelimit import (
    Clock,
    Interrupted,
    SystemClock,
    TokenBucket,
    backoff_delay,
)
from brainy.write.sources.writer import UPSERT, SourceRecord, SourceWriter

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "brainy-github-crawler"
RAW = "application/vnd.github.raw"
JSON = "application/vnd.github+json"

DEFAULT_RATE = 10.0  # requests a second (the seed's token bucket)
DEFAULT_BURST = 20
README_CHARS = 2_000  # the part of a README that goes into a record's text
MAX_BODY = 4 * 1024 * 1024  # a README larger than this is cut (only its start is used)
SECONDARY_WAIT = 60.0  # GitHub: "wait for at least one minute before retrying"
MAX_SECONDARY_WAIT = 3600.0
SECONDARY_ATTEMPTS = 8  # consecutive secondary limits before giving up
SERVER_ATTEMPTS = 8  # consecutive 5xx / connection failures before giving up
SERVER_BACKOFF = (1.0, 60.0)  # base and cap of the backoff after a 5xx
RESET_MARGIN = 1.0  # seconds past x-ratelimit-reset before the next request
HEAD_POLL_INTERVAL = 60.0  # seconds between polls once the crawl reached the newest repository


class GitHubError(BrainyError):
    """GitHub refused or kept failing a request; `field` names what to fix (the
    token, the API URL). The crawl stops; its cursor stays at the last durable batch."""

    status = 502
    code = "github"


def check_api_url(api: str) -> str:
    """`api` if it is an http(s) URL with a host.

    Raises:
        GitHubError: naming `--api`.
    """
    parts = urlsplit(api)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GitHubError("--api", f"expected an http(s) URL, got {api!r}")
    return api


# --------------------------------------------------------------------- transport


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


# (method, url, headers) -> response; raises OSError for a failed connection.
Transport = Callable[[str, str, Mapping[str, str]], HttpResponse]


class Urllib3Transport:
    """Pooled keep-alive connections. Redirects (a renamed or transferred
    repository answers 301/307) are followed; nothing is retried here (the
    client decides); a body is cut at `MAX_BODY`."""

    def __init__(self, timeout: float = 30.0) -> None:
        import urllib3

        self._errors = urllib3.exceptions.HTTPError
        retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)
        self._pool = urllib3.PoolManager(
            retries=retries, timeout=urllib3.Timeout(connect=10.0, read=timeout)
        )

    def __call__(self, method: str, url: str, headers: Mapping[str, str]) -> HttpResponse:
        try:
            resp = self._pool.request(method, url, headers=dict(headers), preload_content=False)
        except self._errors as e:
            raise ConnectionError(f"{method} {url}: {e}") from e
        try:
            body = resp.read(MAX_BODY)
        except self._errors as e:
            resp.close()
            raise ConnectionError(f"{method} {url}: reading the body: {e}") from e
        if resp.length_remaining:
            resp.close()  # the rest of an oversized body is not worth reading
        resp.release_conn()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)


# -------------------------------------------------------------------- etag cache


class ETagCache:
    """The ETag and body of recent responses, least recently used evicted beyond
    `max_bytes` (bodies larger than `max_entry` are not kept): bounded whatever
    the crawl's length, so memory does not grow with history."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024, max_entry: int = 256 * 1024) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self._entries: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[str, bytes] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, etag: str, body: bytes) -> None:
        with self._lock:
            self._drop(key)
            if len(body) > self.max_entry:
                return
            self._entries[key] = (etag, body)
            self._bytes += len(key) + len(etag) + len(body)
            while self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(key) + len(old[0]) + len(old[1])


# ------------------------------------------------------------------------ client


@dataclass
class CrawlStats:
    """Counters of one crawler, exported by the source's `/metrics`."""

    requests: int = 0  # sent, retries included
    budget_requests: int = 0  # answered other than 304: what counts against the hourly limit
    not_modified: int = 0  # 304s: answered from the ETag cache, free
    rate_limit_waits: int = 0  # waits for a primary reset or a secondary limit
    rate_limit_wait_seconds: float = 0.0
    server_retries: int = 0  # 5xx and dropped connections retried
    repositories: int = 0  # records produced
    without_readme: int = 0
    unavailable: int = 0  # listed, then gone (404), blocked (403/451) before its details
    pages: int = 0


@dataclass(frozen=True)
class Answer:
    """A response as the crawler uses it: a 304 carries the cached body and status 200."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    not_modified: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


class GitHubClient:
    """GETs against the GitHub REST API, paced and retried as GitHub asks.

    Args:
        api: the API's base URL (GitHub Enterprise: `https://HOST/api/v3`).
        token: sent as `Authorization: Bearer`; None crawls unauthenticated (60
            requests an hour: only for trying it out).
        clock: every wait goes through it.
        transport: sends one request (default: pooled urllib3).
        rate, burst: the token bucket.
        etags: the conditional-request cache.
    """

    def __init__(
        self,
        api: str = DEFAULT_API,
        token: str | None = None,
        *,
        clock: Clock | None = None,
        transport: Transport | None = None,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        etags: ETagCache | None = None,
        stats: CrawlStats | None = None,
        count: Callable[[str], object] | None = None,
    ) -> None:
        self.api = check_api_url(api).rstrip("/") + "/"
        self.token = token
        self.clock = clock or SystemClock()
        self.transport = transport or Urllib3Transport()
        self.bucket = TokenBucket(rate, burst, self.clock)
        self.etags = etags if etags is not None else ETagCache()
        self.stats = stats or CrawlStats()
        # The source runner's shared counters: "rate_limit_waits", "reconnects".
        self.count = count or (lambda name: None)
        self._blocked_until = 0.0  # wall time: the primary budget is spent until then

    def url(self, path: str) -> str:
        return urljoin(self.api, path.lstrip("/"))

    def get(self, url: str, accept: str = JSON) -> Answer:
        """GET `url` (absolute, or a path under the API), conditionally when its
        ETag is known. Returns 2xx, 304 (as the cached body) and 4xx answers other
        than rate limits and 401 to the caller.

        Raises:
            GitHubError: the token is refused (401), or rate limits or server
                failures persisted beyond their retry budget.
        """
        if "://" not in url:
            url = self.url(url)
        cache_key = f"{accept} {url}"
        secondary = 0
        failures = 0
        while True:
            self._wait_for_reset()
            self.bucket.acquire()
            headers = {
                "Accept": accept,
                "User-Agent": USER_AGENT,
                "X-GitHub-Api-Version": API_VERSION,
            }
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            cached = self.etags.get(cache_key)
            if cached is not None:
                headers["If-None-Match"] = cached[0]
            self.stats.requests += 1
            try:
                resp = self.transport("GET", url, headers)
            except OSError as e:
                self.count("reconnects")
                failures = self._server_failure(url, failures, f"{type(e).__name__}: {e}")
                continue
            self._note_budget(resp.headers)
            if resp.status == 304 and cached is not None:
                self.stats.not_modified += 1
                return Answer(200, resp.headers, cached[1], not_modified=True)
            self.stats.budget_requests += 1
            if resp.status >= 500:
                failures = self._server_failure(url, failures, f"HTTP {resp.status}")
                continue
            if resp.status in (403, 429) and _rate_limited(resp):
                self._wait_rate_limit(url, resp, secondary)
                secondary += 1
                continue
            if resp.status == 401:
                raise GitHubError("GITHUB_TOKEN", f"refused by {self.api} (401): {_message(resp)}")
            etag = resp.headers.get("etag")
            if resp.status == 200 and etag:
                self.etags.put(cache_key, etag, resp.body)
            return Answer(resp.status, resp.headers, resp.body)

    # ---- pacing

    def _note_budget(self, headers: Mapping[str, str]) -> None:
        """When a response says the hourly budget is spent, send nothing more
        until its reset (the response itself may still be good)."""
        if headers.get("x-ratelimit-remaining") == "0":
            reset = _number(headers.get("x-ratelimit-reset"))
            if reset is not None:
                self._blocked_until = max(self._blocked_until, reset + RESET_MARGIN)

    def _wait_for_reset(self) -> None:
        wait = self._blocked_until - self.clock.time()
        if wait > 0:
            log.warning("GitHub rate limit spent: waiting %.0fs for its reset", wait)
            self._sleep_for_limit(wait)

    def _wait_rate_limit(self, url: str, resp: HttpResponse, attempt: int) -> None:
        if attempt >= SECONDARY_ATTEMPTS:
            raise GitHubError(
                "rate limit", f"GET {url}: still rate-limited after {attempt} waits: "
                f"{_message(resp)}"
            )  # fmt: skip
        retry_after = _number(resp.headers.get("retry-after"))
        spent = resp.headers.get("x-ratelimit-remaining") == "0"
        if retry_after is not None:
            wait = retry_after
        elif spent and _number(resp.headers.get("x-ratelimit-reset")) is not None:
            return  # `_note_budget` set the reset: the next attempt waits for it
        else:
            wait = min(MAX_SECONDARY_WAIT, SECONDARY_WAIT * 2**attempt)
        log.warning("GitHub secondary rate limit on %s: waiting %.0fs", url, wait)
        self._sleep_for_limit(wait)

    def _sleep_for_limit(self, seconds: float) -> None:
        self.stats.rate_limit_waits += 1
        self.stats.rate_limit_wait_seconds += seconds
        self.count("rate_limit_waits")
        self.clock.sleep(seconds)

    def _server_failure(self, url: str, failures: int, what: str) -> int:
        if failures + 1 >= SERVER_ATTEMPTS:
            raise GitHubError("--api", f"GET {url}: {what}, {failures + 1} times in a row")
        self.stats.server_retries += 1
        wait = backoff_delay(failures, *SERVER_BACKOFF)
        log.warning("GET %s: %s; retrying in %.1fs", url, what, wait)
        self.clock.sleep(wait)
        return failures + 1


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _message(resp: HttpResponse) -> str:
    try:
        return str(json.loads(resp.body).get("message", ""))[:300]
    except (ValueError, AttributeError):
        return resp.body[:300].decode(errors="replace")


def _rate_limited(resp: HttpResponse) -> bool:
    """A 403/429 that is a rate limit, not a refusal (a blocked repository is a
    403 too): a 429, a `retry-after`, a spent budget, or GitHub's message."""
    return (
        resp.status == 429
        or "retry-after" in resp.headers
        or resp.headers.get("x-ratelimit-remaining") == "0"
        or "rate limit" in _message(resp).lower()
    )


# ----------------------------------------------------------------------- crawler


@dataclass(frozen=True)
class Repository:
    """One crawled repository: its position (the numeric id) and its record's
    parts. `gone` repositories (deleted or blocked after being listed) have no
    record but still move the position past them."""

    position: int
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    updated_us: int | None = None  # the newer of pushed_at and updated_at
    created_us: int | None = None
    gone: bool = False

    def record(self) -> SourceRecord:
        """The record written for it. Its timestamp is the repository's own
        (the newer of `pushed_at` and `updated_at`): a later crawl that finds it
        changed outranks the earlier record, and re-reading an unchanged
        repository after a restart gives the very same record (and batch key)."""
        return SourceRecord(
            self.id, UPSERT, text=self.text, metadata=self.metadata, timestamp_us=self.updated_us
        )


def next_link(headers: Mapping[str, str]) -> str | None:
    """The `rel="next"` URL of a `Link` header, if any."""
    for part in headers.get("link", "").split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", ""):
            return url.strip().strip("<>")
    return None


def record_text(full_name: str, description: str | None, readme: str | None) -> str:
    """`owner/name: description`, then the README's first `README_CHARS`
    characters (cut at a word boundary when there is one near the end)."""
    text = f"{full_name}: {description or ''}".strip()
    if readme:
        part = readme[:README_CHARS]
        if len(readme) > README_CHARS:
            cut = part.rfind(" ", README_CHARS - 200)
            part = part[:cut] if cut > 0 else part
        text = f"{text}\n\n{part.strip()}"
    return text


class GitHubCrawler:
    """Repositories after a position, in id order, with their details and README.

    Args:
        client: the paced API client.
        poll_interval: seconds between polls of the newest page once the crawl
            has caught up (continuous runs).
    """

    def __init__(self, client: GitHubClient, poll_interval: float = HEAD_POLL_INTERVAL) -> None:
        self.client = client
        self.poll_interval = poll_interval

    @property
    def stats(self) -> CrawlStats:
        return self.client.stats

    def repositories(
        self, since: int, should_stop: Callable[[], bool], *, follow_head: bool = True
    ) -> Iterator[Repository]:
        """Every repository with an id above `since`, in id order, until
        `should_stop()` (checked before every request-costing step).

        Args:
            follow_head: once the listing is exhausted, keep polling it for new
                repositories (a continuous run); otherwise return.
        """
        url = self.client.url(f"/repositories?since={since}")
        while not should_stop():
            page = self.client.get(url)
            if page.status != 200:
                raise GitHubError("--api", f"GET {url}: HTTP {page.status}: {_page_error(page)}")
            self.stats.pages += 1
            listed = page.json()
            if not isinstance(listed, list):
                raise GitHubError("--api", f"GET {url}: expected a JSON list of repositories")
            fresh = [r for r in listed if int(r["id"]) > since]
            for summary in sorted(fresh, key=lambda r: int(r["id"])):
                if should_stop():
                    return
                repo = self.repository(summary)
                since = repo.position
                yield repo
            following = next_link(page.headers)
            if following is not None and fresh:
                url = following
                continue
            # The newest repository is behind us: ask again for what follows it.
            url = self.client.url(f"/repositories?since={since}")
            if not follow_head or should_stop():
                return
            self.client.clock.sleep(self.poll_interval)

    def repository(self, summary: Mapping[str, Any]) -> Repository:
        """A listed repository's record: its details, then its README."""
        position = int(summary["id"])
        full_name = str(summary["full_name"])
        details = self.client.get(f"/repos/{full_name}")
        if details.status != 200:
            # Deleted (404, 410), blocked (403, 451) or otherwise refused since it
            # was listed: there is nothing to index, and the crawl goes on.
            log.warning("GET /repos/%s: HTTP %d (%s): skipped", full_name, details.status,
                        _page_error(details))  # fmt: skip
            self.stats.unavailable += 1
            return Repository(position, f"gh:{full_name}", "", gone=True)
        repo = {**summary, **details.json()}
        # Renamed since it was listed, its details (reached through a redirect)
        # carry the name it has now: the record is filed under that one.
        full_name = str(repo.get("full_name") or full_name)
        readme = self.readme(full_name)
        self.stats.repositories += 1
        return Repository(
            position=position,
            id=f"gh:{full_name}",
            text=record_text(full_name, repo.get("description"), readme),
            metadata={
                "stars": repo.get("stargazers_count"),
                "language": repo.get("language"),
                "topics": repo.get("topics") or [],
                "url": repo.get("html_url"),
                "pushed_at": repo.get("pushed_at"),
            },
            updated_us=max(
                (t for t in map(_micros, (repo.get("pushed_at"), repo.get("updated_at"))) if t),
                default=None,
            ),
            created_us=_micros(repo.get("created_at")),
        )

    def readme(self, full_name: str) -> str | None:
        answer = self.client.get(f"/repos/{full_name}/readme", accept=RAW)
        if answer.status == 200:
            return answer.body.decode("utf-8", errors="replace")
        # No README (404), or one the repository's state hides or refuses: the
        # record carries the name and description alone.
        if answer.status != 404:
            log.warning("GET /repos/%s/readme: HTTP %d (%s)", full_name, answer.status,
                        _page_error(answer))  # fmt: skip
        self.stats.without_readme += 1
        return None


def _micros(value: Any) -> int | None:
    """An ISO 8601 time (`2026-01-01T00:00:00Z`) in microseconds since the epoch."""
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1_000_000)
    except ValueError:
        return None


def crawl(
    crawler: GitHubCrawler,
    writer: SourceWriter,
    since: int,
    should_stop: Callable[[], bool],
    *,
    follow_head: bool,
    on_repository: Callable[[Repository], None] | None = None,
) -> None:
    """Crawl from `since` into `writer` until `should_stop()`, the end of the
    listing (unless `follow_head`) or an interrupted wait. A repository that is
    gone is skipped, so the checkpoint can move past it with the next batch."""
    try:
        for repo in crawler.repositories(since, should_stop, follow_head=follow_head):
            if on_repository is not None:
                on_repository(repo)
            if repo.gone:
                writer.skip(repo.position)
            else:
                writer.add(repo.record(), repo.position)
    except Interrupted as e:
        log.info("github crawl stopped: %s", e)


def _page_error(answer: Answer) -> str:
    return _message(HttpResponse(answer.status, answer.headers, answer.body))
