"""A writing instance measures its clock against the object store's and refuses to
write while they are further apart than `max_clock_skew`: a writer ahead of time
would stamp records no honest delete can outrank until real time catches up.

The store's clock is moved by `ClockSkewedStore`, which shifts the modification
times a store reports; nothing in the layer is patched.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from brainy.core.config import ConfigError, load_settings
from brainy.core.errors import ClockSkewed
from brainy.service.app import PROBES_PREFIX, Brainy
from brainy.storage import open_store
from faults import ClockSkewedStore
from helpers import declare, make_app

RECORDS = {"collection": "docs", "records": [{"id": "a", "vector": [1.0] * 8}]}


def skewed_app(tmp_path: Path, offset: float, role: str = "cli", **env: str) -> Brainy:
    """An instance whose store's clock is `offset` seconds from this machine's, with
    the `docs` collection declared."""
    url = f"memory://clock-{uuid.uuid4().hex}"
    declare(make_app(url, tmp_path))
    store = ClockSkewedStore(open_store(url), offset)
    full_env = {"BRAINY_STORE": url, "BRAINY_CACHE_DIR": str(tmp_path / "cache"), **env}
    settings, _ = load_settings(full_env, role=role, store=store)
    return Brainy(settings, store)


def clock_gauge(app: Brainy) -> float:
    [value] = [
        sample.value
        for family in text_string_to_metric_families(app.metrics.render().decode())
        for sample in family.samples
        if sample.name == "brainy_clock_skew_seconds"
    ]
    return value


def clock_probes(app: Brainy) -> int:
    """Probe objects the instance has written so far."""
    assert isinstance(app.store, ClockSkewedStore)
    return sum(
        1
        for call in app.store.calls
        if call.op == "put" and call.key.startswith(f"{PROBES_PREFIX}clock-")
    )


def test_a_clock_within_bounds_writes_and_reports_its_skew(tmp_path: Path) -> None:
    app = skewed_app(tmp_path, offset=-10.0)  # this machine 10 s ahead: tolerated

    outcome = app.ingest(RECORDS)
    assert app.index_key(outcome.batch).status == "applied"

    ok, body = app.health()
    assert ok and body["status"] == "ok"
    clock = body["checks"]["clock"]
    assert clock["ok"] and clock["max_skew_s"] == 30.0
    assert 8.0 <= clock["skew_s"] <= 10.0
    assert clock_gauge(app) == pytest.approx(clock["skew_s"], abs=0.001)
    assert list(app.store.list(PROBES_PREFIX)) == []


@pytest.mark.parametrize("offset", [-120.0, 120.0], ids=["clock-ahead", "clock-behind"])
def test_a_skewed_clock_refuses_to_write_and_says_why(tmp_path: Path, offset: float) -> None:
    app = skewed_app(tmp_path, offset)

    with pytest.raises(ClockSkewed) as refused:
        app.ingest(RECORDS)
    error = refused.value
    assert error.status == 503 and error.to_dict()["error"]["field"] == "clock"
    direction = "ahead of" if offset < 0 else "behind"
    assert f"s {direction} the object store's" in str(error)
    assert "max_clock_skew (30s)" in str(error)
    assert abs(error.skew + offset) <= 2.0
    assert list(app.store.list("docs/wal/")) == []

    ok, body = app.health()
    assert not ok and body["status"] == "degraded"
    assert body["checks"]["clock"]["ok"] is False
    assert abs(body["checks"]["clock"]["skew_s"] + offset) <= 2.0
    assert abs(clock_gauge(app) + offset) <= 2.0
    # The indexer and the compactor stand down too: their commits carry the clock.
    with pytest.raises(ClockSkewed):
        app.maintain("docs")


def test_the_limit_is_a_setting(tmp_path: Path) -> None:
    app = skewed_app(tmp_path, offset=-120.0, BRAINY_MAX_CLOCK_SKEW="5m")

    assert app.ingest(RECORDS).accepted == 1
    assert app.health()[1]["checks"]["clock"]["max_skew_s"] == 300.0


def test_the_clock_is_measured_again_each_interval(tmp_path: Path) -> None:
    fixed = skewed_app(tmp_path, offset=-120.0, BRAINY_CLOCK_CHECK_INTERVAL="0")
    with pytest.raises(ClockSkewed):
        fixed.ingest(RECORDS)
    assert isinstance(fixed.store, ClockSkewedStore)
    fixed.store.offset = 0.0  # NTP put the clock right
    assert fixed.ingest(RECORDS).accepted == 1

    # Within the default interval of 5 minutes the measurement stands.
    steady = skewed_app(tmp_path, offset=0.0)
    for _ in range(3):
        steady.ingest(RECORDS)
    steady.health()
    assert clock_probes(steady) == 1


def test_a_read_only_instance_does_not_measure(tmp_path: Path) -> None:
    app = skewed_app(tmp_path, offset=-120.0, role="search")

    ok, body = app.health()

    assert ok and "clock" not in body["checks"]
    assert math.isnan(clock_gauge(app))
    assert clock_probes(app) == 0


def test_a_writing_instance_measures_at_start_up(tmp_path: Path) -> None:
    app = make_app(f"memory://clock-start-{uuid.uuid4().hex}", tmp_path, role="ingest")

    assert clock_gauge(app) == 0.0


@pytest.mark.parametrize("var", ["BRAINY_MAX_CLOCK_SKEW", "BRAINY_CLOCK_CHECK_INTERVAL"])
def test_clock_settings_are_validated_by_name(var: str) -> None:
    with pytest.raises(ConfigError, match=f"{var}: expected a duration"):
        load_settings({"BRAINY_STORE": "memory://clock-settings", var: "soon"})


def test_a_gc_grace_of_zero_is_refused_by_name() -> None:
    """Half the grace bounds how old an upload may be at its commit (older ones are
    made again): at 0 an indexer would upload forever and never commit."""
    with pytest.raises(ConfigError, match="BRAINY_GC_GRACE: must be more than 0"):
        load_settings({"BRAINY_STORE": "memory://gc-grace", "BRAINY_GC_GRACE": "0"})
    settings, _ = load_settings({"BRAINY_STORE": "memory://gc-grace", "BRAINY_GC_GRACE": "2s"})
    assert settings.gc_grace == 2.0
