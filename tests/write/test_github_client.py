"""The GitHub crawler against a fake GitHub API on a loopback port, in the
crawler's own (fake) time: every repository comes out once, in id order, through
pagination, primary and secondary rate limits, 5xx answers and a server restart,
and the server's log shows the request budget kept."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from tests.write.fake_github import TOKEN, FakeClock, FakeGitHub, make_repos

from brainy.write.sources.github import (
    README_CHARS,
    ETagCache,
    GitHubClient,
    GitHubCrawler,
    GitHubError,
    Repository,
    next_link,
)
from brainy.write.sources.ratelimit import Interrupted, StoppableClock, TokenBucket

RATE, BURST = 10.0, 20


def _crawler(fake: FakeGitHub, clock: FakeClock, token: str = TOKEN) -> GitHubCrawler:
    return GitHubCrawler(GitHubClient(fake.url, token, clock=clock, rate=RATE, burst=BURST))


def _crawl(crawler: GitHubCrawler, since: int = 0) -> list[Repository]:
    return list(crawler.repositories(since, lambda: False, follow_head=False))


def _records(repos: list[Repository]) -> list[str]:
    return [r.id for r in repos if not r.gone]


def _bucket_kept(times: list[float], rate: float, burst: int) -> list[str]:
    """Every stretch of requests that came faster than the bucket allows."""
    bad = []
    for i in range(len(times)):
        for j in range(i + burst, len(times)):
            allowed = burst + rate * (times[j] - times[i]) + 1e-6
            if j - i + 1 > allowed:
                bad.append(f"requests {i}..{j}: {j - i + 1} in {times[j] - times[i]:.3f}s")
    return bad


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeGitHub]:
    # 45 repositories in 5 pages of 10; 40 requests every 10 minutes while the
    # crawl needs about 95; secondary limits at requests 7 (retry-after 30 s) and
    # 20 (none given: at least a minute); 502 and 503 at requests 12 and 13.
    server = FakeGitHub(
        make_repos(45),
        clock,
        page_size=10,
        limit=40,
        window=600.0,
        secondary={7: 30.0, 20: None},
        failures={12: 502, 13: 503},
    )
    with server:
        yield server


@pytest.fixture
def plain(clock: FakeClock) -> Iterator[FakeGitHub]:
    """The same repositories, without limits or failures."""
    with FakeGitHub(make_repos(45), clock, page_size=10) as server:
        yield server


def test_every_repository_once_in_id_order_within_the_request_budget(fake, clock):
    crawler = _crawler(fake, clock)
    repos = _crawl(crawler)

    live = [r for r in fake.repos if r.live]
    assert _records(repos) == [f"gh:{r.full_name}" for r in live]
    assert [r.position for r in repos] == [r.id for r in fake.repos]  # gone ones too
    assert {r.id for r in repos if r.gone} == {
        f"gh:{r.full_name}" for r in fake.repos if not r.live
    }
    # The budget: no request while the hourly budget was spent or before a
    # retry-after (or the minute a secondary limit without one asks for) ...
    assert fake.violations == []
    # ... the crawl did have to wait for resets and limits ...
    assert crawler.stats.rate_limit_waits >= 4
    assert crawler.stats.server_retries == 2
    assert sum(1 for s in fake.log if s.status == 403) == 2  # the two secondary limits only
    # ... and never outran the token bucket.
    assert _bucket_kept(fake.times(), RATE, BURST) == []
    # Two requests a repository (details, README) plus a page per ten.
    live_n = len(live)
    gone_n = len(fake.repos) - live_n
    assert crawler.stats.budget_requests == 2 * live_n + gone_n + 5 + 1 + 2 + 2


def test_a_record_holds_name_description_readme_start_and_metadata(fake, clock):
    repos = {r.id: r for r in _crawl(_crawler(fake, clock))}
    with_readme = next(r for r in fake.repos if r.live and r.readme and r.description)
    rec = repos[f"gh:{with_readme.full_name}"]
    head = f"{with_readme.full_name}: {with_readme.description}"
    assert rec.text.startswith(head + "\n\n# repo")
    assert len(rec.text) <= len(head) + 2 + README_CHARS
    assert rec.metadata == {
        "stars": with_readme.stars,
        "language": with_readme.language,
        "topics": with_readme.topics,
        "url": f"https://github.com/{with_readme.full_name}",
        "pushed_at": with_readme.pushed_at,
    }
    bare = next(r for r in fake.repos if r.live and r.readme is None and r.description is None)
    assert repos[f"gh:{bare.full_name}"].text == f"{bare.full_name}:"


def test_resuming_from_a_position_lists_exactly_the_repositories_after_it(fake, clock):
    since = fake.repos[17].id
    repos = _crawl(_crawler(fake, clock), since)
    assert [r.position for r in repos] == [r.id for r in fake.repos if r.id > since]


def test_a_second_pass_is_answered_by_304s_that_cost_no_budget(plain, clock):
    fake = plain
    crawler = _crawler(fake, clock)
    first = _crawl(crawler)
    spent = crawler.stats.budget_requests
    logged = len(fake.log)
    second = _crawl(crawler)

    assert [(r.id, r.text, r.metadata) for r in second] == [
        (r.id, r.text, r.metadata) for r in first
    ]
    again = fake.log[logged:]
    # Everything that answered 200 the first time is a free 304 now; only what
    # has no ETag is asked again: gone repositories, missing READMEs, the
    # redirect of a renamed repository.
    assert sum(1 for s in again if s.status == 200) == 0
    assert all(s.conditional for s in again if s.status == 304)
    assert crawler.stats.not_modified == sum(1 for s in again if s.status == 304)
    assert {s.status for s in again if s.status != 304} == {301, 404, 451}
    assert crawler.stats.budget_requests - spent == sum(1 for s in again if s.status in (404, 451))


def test_a_continuous_crawl_polls_the_newest_page_conditionally(plain, clock):
    fake = plain
    crawler = _crawler(fake, clock)
    crawler.poll_interval = 30.0

    def stop() -> bool:
        heads = [s for s in fake.log if s.path == f"/repositories?since={fake.repos[-1].id}"]
        return len(heads) >= 4

    repos = list(crawler.repositories(0, stop))
    polls = [s for s in fake.log if s.path == f"/repositories?since={fake.repos[-1].id}"]
    assert len(repos) == len(fake.repos)
    assert [s.status for s in polls] == [200, 304, 304, 304]
    assert all(b.at - a.at >= 30.0 for a, b in itertools.pairwise(polls))


def test_a_restarted_server_loses_nothing(plain, clock):
    fake = plain
    crawler = _crawler(fake, clock)
    restarts = []

    def sleep_then_restart(seconds: float) -> None:
        FakeClock.sleep(clock, seconds)
        # A backoff after a refused connection (the token bucket's waits are
        # shorter than its first half second).
        if not fake.running and seconds >= 0.5:
            restarts.append(seconds)
            fake.start()  # the same port, the same state

    clock.sleep = sleep_then_restart  # type: ignore[method-assign]
    got: list[Repository] = []
    for repo in crawler.repositories(0, lambda: False, follow_head=False):
        got.append(repo)
        if len(got) == 17:
            fake.stop()  # down between two requests: the next one is refused
    assert restarts and crawler.stats.server_retries >= 1
    assert [r.position for r in got] == [r.id for r in fake.repos]


def test_a_budget_spent_by_another_client_is_waited_for_until_its_reset(plain, clock):
    fake = plain
    fake._remaining = 0  # another client of the same token spent it
    reset = fake._reset
    repos = _crawl(_crawler(fake, clock))
    assert [r.position for r in repos] == [r.id for r in fake.repos]
    refused = [s for s in fake.log if s.status == 403]
    assert len(refused) == 1 and refused[0] is fake.log[0]  # the one it could not foresee
    assert fake.log[1].at >= reset


def test_a_refused_token_names_github_token(fake, clock):
    with pytest.raises(GitHubError) as e:
        _crawl(_crawler(fake, clock, token="wrong"))
    assert e.value.field == "GITHUB_TOKEN" and "401" in e.value.reason


def test_persistent_server_failures_give_up_naming_the_api(clock):
    with FakeGitHub(make_repos(3), clock, failures={n: 500 for n in range(1, 50)}) as fake:
        with pytest.raises(GitHubError) as e:
            _crawl(_crawler(fake, clock))
        assert e.value.field == "--api" and "HTTP 500" in e.value.reason


def test_an_api_url_that_is_not_http_is_refused():
    with pytest.raises(GitHubError) as e:
        GitHubClient("ftp://example")
    assert e.value.field == "--api"


def test_a_stoppable_clock_ends_waits_on_stop_and_at_its_deadline():
    stop = threading.Event()
    budget = StoppableClock(stop, deadline=time.monotonic() + 5.0)
    with pytest.raises(Interrupted, match="time budget"):
        budget.sleep(3600.0)  # a reset an hour away: not waited for at all
    stop.set()
    with pytest.raises(Interrupted, match="stopping"):
        StoppableClock(stop).sleep(3600.0)


def test_link_header_next():
    link = '<https://api.github.com/repositories?since=369>; rel="next", <x>; rel="first"'
    assert next_link({"link": link}) == "https://api.github.com/repositories?since=369"
    assert next_link({"link": '<x>; rel="first"'}) is None
    assert next_link({}) is None


def test_the_etag_cache_stays_within_its_bytes():
    cache = ETagCache(max_bytes=1000, max_entry=300)
    for i in range(50):
        cache.put(f"k{i}", '"e"', b"x" * 200)
    assert len(cache) <= 5 and cache.get("k49") is not None and cache.get("k0") is None
    cache.put("big", '"e"', b"x" * 301)
    assert cache.get("big") is None


def test_the_token_bucket_allows_a_burst_then_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20, clock)
    waits = [bucket.acquire() for _ in range(40)]
    assert waits[:20] == [0.0] * 20 and all(w > 0 for w in waits[20:])
    assert clock.monotonic() - 1_800_000_000.0 == pytest.approx(2.0)
