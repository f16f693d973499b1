"""Configuration: built-in defaults < `_brainy/config.json` < `_brainy/instances/<id>.json`
< environment (DESIGN §8). Every value is validated at start-up with a message that
names its key; a collection's schema is frozen once it holds data."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import xxhash

from brainy.storage import ObjectStore, open_store
from brainy.storage.cas import Contention, Current, compare_and_swap, read_current

CONFIG_KEY = "_brainy/config.json"
INSTANCES_PREFIX = "_brainy/instances/"

METRICS = ("angular", "euclidean", "dot")
# hash: xxh64 of the id picks the partition (every search probes them all);
# semantic: the nearest centroid does (a search probes `nprobe`), DESIGN §6.
STRATEGIES = ("hash", "semantic")
AUTO = "auto"
MODES = ("read-only", "write-only", "read-write")
ROLES = ("search", "ingest", "indexer", "compactor", "bluesky", "github", "cli")
DEFAULT_MODE = {
    "search": "read-only",
    "ingest": "write-only",
    "bluesky": "write-only",
    "github": "write-only",
    "indexer": "read-write",
    "compactor": "read-write",
    "cli": "read-write",
}
# Schema fields that decide where and how data was written: changing them once a
# collection holds data would silently corrupt it (vectors of another embedder live
# in another space: its queries would match nothing the old one wrote).
FROZEN_FIELDS = ("dimension", "metric", "partitions", "strategy", "seed", "hash", "embedder")
# Text embedders (brainy.write.embedders): hash is built in, minilm needs the `minilm`
# extra, openai the embeddings API of `openai_base_url`.
EMBEDDERS = ("hash", "minilm", "openai")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


class SchemaFrozen(ConfigError):
    """A schema field of a collection that holds data was changed."""


def parse_size(value: Any, key: str) -> int:
    """`'2GB'`, `'512MiB'`, `'1000'` or an int → bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as '2GB' or an integer, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and (m.group(2) or "").upper() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").upper()])
    raise ConfigError(f"{key}: expected a size such as '2GB' or an integer, got {value!r}")


def validate_name(name: Any, key: str = "collection") -> str:
    """A collection name: letters, digits, `_ . -`, at most 63 characters, no `/` or `..`."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{key}: expected a non-empty name, got {name!r}")
    if not _NAME_RE.match(name) or ".." in name:
        raise ConfigError(
            f"{key}: {name!r} is not a valid name (1-63 characters from letters, digits, "
            "'_', '.', '-'; starting with a letter or digit; no '/' or '..')"
        )
    return name


@dataclass(frozen=True)
class CollectionSchema:
    """A collection's schema and its tunables.

    The fields in `FROZEN_FIELDS` cannot change once the collection holds data;
    the others (index build and search tunables) can.
    """

    name: str
    dimension: int
    metric: str = "angular"
    partitions: int | str = 1  # or "auto" (semantic only)
    strategy: str = "hash"
    seed: int = 0
    hash: str = "xxh64"
    embedder: str = "hash"
    n_trees: int = 16
    search_k_factor: int = 512
    exact_threshold: int = 10_000
    nprobe: int | None = None

    def probes(self, partitions: int) -> int:
        """Partitions a search of a semantic collection of `partitions` probes when
        its centroids carry no calibration: `nprobe`, or ceil(3 * sqrt(partitions)),
        capped at the partition count.

        Measured on 30,000 real 384-d MiniLM vectors (bench/partitions.py,
        recall@10 through `Brainy.search`): partitions // 8 probes reach only 0.61
        to 0.92 (8 to 128 partitions); 3 * sqrt(partitions) reaches 0.993, 0.968
        and 0.957 at 16, 64 and 128 partitions (12, 24 and 34 probed). Centroids
        trained since carry the probes each recall level needs, measured at
        training (see `brainy.format.calibration.calibrate_probes`).
        """
        if self.nprobe is not None:
            return min(self.nprobe, partitions)
        return min(partitions, math.ceil(3 * math.sqrt(partitions)))

    @property
    def fixed_partitions(self) -> int | None:
        """The configured partition count; None for `"auto"` (decided at the
        first compaction, then fixed by the centroids)."""
        return None if self.partitions == AUTO else int(self.partitions)

    @classmethod
    def from_dict(cls, name: str, raw: Any, key: str | None = None) -> CollectionSchema:
        key = key or f"collections.{name}"
        validate_name(name, key)
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{key}: expected an object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: unknown setting (known: {sorted(known)})")
        if "dimension" not in raw:
            raise ConfigError(f"{key}.dimension: required")
        values = {k: v for k, v in raw.items() if k != "name"}
        auto = values.get("partitions") == AUTO
        if auto and values.get("strategy", "hash") != "semantic":
            raise ConfigError(
                f'{key}.partitions: "auto" needs strategy "semantic" (hash partitions are '
                "fixed by the id's hash, so their count cannot follow the collection's size)"
            )
        for int_key, low, high in (
            ("dimension", 1, 65_536),
            ("partitions", 1, 4096),
            ("seed", 0, 2**63 - 1),
            ("n_trees", 1, 1000),
            ("search_k_factor", 1, 100_000),
            ("exact_threshold", 0, 10_000_000),
        ):
            if int_key in values and not (int_key == "partitions" and auto):
                v = values[int_key]
                if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                    raise ConfigError(
                        f"{key}.{int_key}: expected an integer in [{low}, {high}]"
                        + (' or "auto"' if int_key == "partitions" else "")
                        + f", got {v!r}"
                    )
        nprobe = values.get("nprobe")
        if nprobe is not None:
            partitions = 4096 if auto else values.get("partitions", 1)
            if (
                isinstance(nprobe, bool)
                or not isinstance(nprobe, int)
                or not 1 <= nprobe <= partitions
            ):
                raise ConfigError(
                    f"{key}.nprobe: expected an integer in [1, {partitions}] (the partition "
                    f"count) or null for the default, got {nprobe!r}"
                )
        for str_key, allowed in (
            ("metric", METRICS),
            ("strategy", STRATEGIES),
            ("hash", ("xxh64",)),
            ("embedder", EMBEDDERS),
        ):
            if str_key in values and values[str_key] not in allowed:
                raise ConfigError(
                    f"{key}.{str_key}: expected one of {list(allowed)}, got {values[str_key]!r}"
                )
        return cls(name=name, **values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("name")
        return d

    def frozen(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FROZEN_FIELDS}

    def check_compatible(self, stored: Mapping[str, Any]) -> None:
        """Raise `SchemaFrozen` if a frozen field differs from the schema the data was
        written with (`stored`, as recorded in the collection's manifest)."""
        for k in FROZEN_FIELDS:
            if k in stored and stored[k] != getattr(self, k):
                raise SchemaFrozen(
                    f"collections.{self.name}.{k}: cannot change from {stored[k]!r} to "
                    f"{getattr(self, k)!r}: the collection holds data written with "
                    f"{k}={stored[k]!r}"
                )


SINK_TYPES = ("sns", "pubsub", "webhook")
# The fields each sink type takes, the required ones first.
_SINK_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sns": (("topic_arn",), ("endpoint_url", "region")),
    "pubsub": (("topic",), ()),
    "webhook": (("url",), ("timeout",)),
}
_TOPIC_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
_PUBSUB_TOPIC_RE = re.compile(r"^projects/[^/\s]+/topics/[^/\s]+$")


@dataclass(frozen=True)
class EventSink:
    """Where index-updated events go: an SNS topic, a Pub/Sub topic or a webhook.

    Attributes:
        type: "sns", "pubsub" or "webhook".
        target: the topic ARN, the topic path (`projects/p/topics/t`) or the URL.
        endpoint_url: SNS only: an endpoint other than AWS's (moto, LocalStack);
            the `BRAINY_SNS_ENDPOINT_URL` setting applies where this is unset.
        region: SNS only: the topic's region (else the one in its ARN).
        timeout: webhook only: seconds to wait for an answer.
    """

    type: str
    target: str
    endpoint_url: str | None = None
    region: str | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class EventsConfig:
    """The `events` setting: sinks for index-updated events, how many events may
    wait for them (beyond that, events are dropped and counted, never waited for),
    and how long a function's request (indexing, compaction), its commits landed,
    waits for its events to be sent before it answers: serverless platforms may
    freeze a function between requests, which would hold its events until the
    next one (0: answer at once)."""

    sinks: tuple[EventSink, ...] = ()
    queue_size: int = 1000
    flush_timeout: float = 2.0


def parse_events(value: Any, key: str) -> EventsConfig:
    """`{"sinks": [{"type": "sns", "topic_arn": ...}, ...], "queue_size": 1000,
    "flush_timeout": 2.0}`; the environment's form (`BRAINY_EVENTS`) is the same
    object as JSON."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ConfigError(f"{key}: expected a JSON object ({e})") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected an object with sinks, got {value!r}")
    known = {"sinks", "queue_size", "flush_timeout"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown setting (known: {sorted(known)})")
    raw_sinks = value.get("sinks", [])
    if not isinstance(raw_sinks, list):
        raise ConfigError(f"{key}.sinks: expected a list, got {raw_sinks!r}")
    sinks = tuple(_parse_sink(raw, f"{key}.sinks[{i}]") for i, raw in enumerate(raw_sinks))
    queue_size = _int_in(1, 1_000_000)(value.get("queue_size", 1000), f"{key}.queue_size")
    flush = _float_in(0.0, 60.0)(value.get("flush_timeout", 2.0), f"{key}.flush_timeout")
    return EventsConfig(sinks, queue_size, flush)


def _parse_sink(raw: Any, key: str) -> EventSink:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected an object, got {raw!r}")
    kind = raw.get("type")
    if kind not in SINK_TYPES:
        raise ConfigError(f"{key}.type: expected one of {list(SINK_TYPES)}, got {kind!r}")
    required, optional = _SINK_FIELDS[kind]
    unknown = sorted(set(raw) - {"type", *required, *optional})
    if unknown:
        known = sorted(["type", *required, *optional])
        raise ConfigError(f"{key}.{unknown[0]}: unknown setting for a {kind} sink (known: {known})")
    for name in required:
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise ConfigError(f"{key}.{name}: required for a {kind} sink")
    target = raw[required[0]]
    if kind == "sns" and not _TOPIC_ARN_RE.match(target):
        raise ConfigError(
            f"{key}.topic_arn: expected arn:aws:sns:<region>:<account>:<topic>, got {target!r}"
        )
    if kind == "pubsub" and not _PUBSUB_TOPIC_RE.match(target):
        raise ConfigError(
            f"{key}.topic: expected projects/<project>/topics/<topic>, got {target!r}"
        )
    for name in ("url", "endpoint_url"):
        if name in raw and not _is_http_url(raw[name]):
            raise ConfigError(f"{key}.{name}: expected an http(s) URL, got {raw[name]!r}")
    if "region" in raw and not isinstance(raw["region"], str):
        raise ConfigError(f"{key}.region: expected a string, got {raw['region']!r}")
    timeout = _float_in(0.1, 300.0)(raw.get("timeout", 5.0), f"{key}.timeout")
    return EventSink(kind, target, raw.get("endpoint_url"), raw.get("region"), timeout)


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and re.match(r"^https?://[^/\s]+", value) is not None


@dataclass(frozen=True)
class Settings:
    """One instance's effective configuration."""

    store: str = "file://./.brainy/data"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    instance_id: str = ""
    role: str = "cli"
    mode: str = "read-write"
    cache_dir: str = ""
    cache_size: int = 2 * 10**9
    refresh_interval: float = 1.0
    min_version_timeout: float = 10.0
    max_body_size: int = 32 * 10**6
    max_records: int = 100_000
    max_id_length: int = 512
    max_metadata_size: int = 16_384
    max_k: int = 1000
    download_threads: int = 8
    query_threads: int = 4
    # Collections a search instance loads into its cache at start-up, in the
    # background (("*",): every declared collection).
    warmup: tuple[str, ...] = ()
    # After a query that probed only part of a collection, load the rest of it
    # into the cache in the background, one segment at a time.
    background_warm: bool = True
    # The fraction of queries a search instance re-runs exactly in the background
    # to measure its recall (exported in /metrics); 0 measures none.
    recall_sample: float = 0.01
    # The share of one core those exact re-runs may take: after a re-run of t
    # seconds no query is sampled for t x (1 / recall_budget - 1); 1 never rests.
    recall_budget: float = 0.02
    # Old manifest versions (and what they reference) stay readable this long.
    retention: float = 3600.0
    # Applied batches are kept this long (repair rebuilds segments from them).
    batch_retention: float = 7 * 86400.0
    # Unreferenced objects younger than this may belong to a commit in flight.
    gc_grace: float = 3600.0
    # A tombstone is dropped once its delete is older than this and the sweeper has
    # indexed every batch that existed before it: no older copy can still arrive.
    tombstone_grace: float = 86400.0
    lease_ttl: float = 300.0
    # Compaction: merge level-0 segments once there are this many, and keep at most
    # this many segments per partition (size-tiered merges beyond it).
    compact_min_segments: int = 8
    max_segments_per_partition: int = 4
    # A writing instance refuses to write while its clock is further than this from
    # the object store's: records are ordered by their writer's timestamp, so a
    # writer ahead of time makes its records outrank honest deletes for as long.
    max_clock_skew: float = 30.0
    # How often that distance is measured again (it is measured at start-up too).
    clock_check_interval: float = 300.0
    # The `openai` embedder: any OpenAI-compatible embeddings API (key from
    # OPENAI_API_KEY), its model, texts per request (the API takes at most 2,048)
    # and the `dimensions` asked for (None: the collection's dimension).
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "text-embedding-3-small"
    openai_batch_size: int = 100
    openai_dimensions: int | None = None
    # Keep computed embeddings in the bucket (`_brainy/embeddings/`), so a text
    # embedded once (a retried batch, a re-crawled README) is not paid for again.
    cache_embeddings: bool = False
    collections: dict[str, CollectionSchema] = field(default_factory=dict)
    # Where a writing instance publishes index-updated events after each commit.
    events: EventsConfig = field(default_factory=EventsConfig)
    # SNS sinks without an endpoint_url of their own reach SNS here (moto, LocalStack).
    sns_endpoint_url: str | None = None

    @property
    def read_only(self) -> bool:
        return self.mode == "read-only"

    @property
    def can_search(self) -> bool:
        return self.mode != "write-only"


# Settings keys that may appear in config.json / instance overrides, with their parser.
def _float_in(low: float, high: float):
    def parse(value: Any, key: str) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (low <= value <= high)
        ):
            raise ConfigError(f"{key}: expected a number in [{low}, {high}], got {value!r}")
        return float(value)

    return parse


def _int_in(low: int, high: int):
    def parse(value: Any, key: str) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}: expected an integer in [{low}, {high}], got {value!r}")
        return value

    return parse


def _choice(allowed: tuple[str, ...]):
    def parse(value: Any, key: str) -> str:
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {list(allowed)}, got {value!r}")
        return value

    return parse


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _FLAGS:
        return _FLAGS[value.strip().lower()]
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _collection_names(value: Any, key: str) -> tuple[str, ...]:
    """A list of collection names, or `"*"` for all; the environment's form is a
    comma-separated string."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of collection names or '*', got {value!r}")
    if "*" in value:
        return ("*",)
    for name in value:
        validate_name(name, key)
    return tuple(dict.fromkeys(value))


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any, key: str) -> float:
    """`'90s'`, `'15m'`, `'1h'`, `'7d'` or a number of seconds → seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ConfigError(
        f"{key}: expected a duration such as '15m', '1h', '7d' or seconds, got {value!r}"
    )


def _positive_duration(value: Any, key: str) -> float:
    """A duration above zero: `gc_grace`, whose half bounds how old an upload may
    be at its commit (an older one is uploaded again), so 0 would never commit."""
    seconds = parse_duration(value, key)
    if seconds <= 0:
        raise ConfigError(
            f"{key}: must be more than 0 (an upload older than half of it is made again "
            f"before its commit, so 0 would never commit), got {value!r}"
        )
    return seconds


_PARSERS = {
    "cache_dir": _text,
    "cache_size": parse_size,
    "refresh_interval": _float_in(0.0, 3600.0),
    "min_version_timeout": _float_in(0.0, 300.0),
    "max_body_size": parse_size,
    "max_records": _int_in(1, 10_000_000),
    "max_id_length": _int_in(1, 4096),
    "max_metadata_size": parse_size,
    "max_k": _int_in(1, 100_000),
    "download_threads": _int_in(1, 256),
    "query_threads": _int_in(1, 256),
    "warmup": _collection_names,
    "background_warm": _flag,
    "recall_sample": _float_in(0.0, 1.0),
    "recall_budget": _float_in(0.001, 1.0),
    "retention": parse_duration,
    "batch_retention": parse_duration,
    "gc_grace": _positive_duration,
    "tombstone_grace": parse_duration,
    "lease_ttl": parse_duration,
    "compact_min_segments": _int_in(2, 10_000),
    "max_segments_per_partition": _int_in(1, 1000),
    "max_clock_skew": parse_duration,
    "clock_check_interval": parse_duration,
    "events": parse_events,
    "openai_base_url": _text,
    "openai_model": _text,
    "openai_batch_size": _int_in(1, 2048),
    "openai_dimensions": _int_in(1, 65_536),
    "cache_embeddings": _flag,
}

# Environment variables: the original design's names, plus one per tunable.
_ENV = {
    "BRAINY_INSTANCE_ID": "instance_id",
    "BRAINY_ROLE": "role",
    "BRAINY_MODE": "mode",
    "BRAINY_S3_ENDPOINT_URL": "s3_endpoint_url",
    "BRAINY_S3_REGION": "s3_region",
    "BRAINY_SNS_ENDPOINT_URL": "sns_endpoint_url",
    **{f"BRAINY_{k.upper()}": k for k in _PARSERS},
}


def parse_layer(raw: Any, source: str) -> dict[str, Any]:
    """Validate one layer (a config.json or an instance override) into Settings values."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a JSON object")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "collections":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: collections: expected an object")
            out["collections"] = {
                name: CollectionSchema.from_dict(name, spec) for name, spec in value.items()
            }
        elif key in _PARSERS:
            out[key] = _PARSERS[key](value, key)
        else:
            raise ConfigError(f"{source}: {key}: unknown setting")
    return out


def store_url_from_env(env: Mapping[str, str]) -> str | None:
    """`BRAINY_STORE` wins over `BRAINY_S3_BUCKET` (with the region and endpoint beside it)."""
    if env.get("BRAINY_STORE"):
        return env["BRAINY_STORE"]
    if env.get("BRAINY_S3_BUCKET"):
        return f"s3://{env['BRAINY_S3_BUCKET']}"
    return None


def default_instance_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def read_json_object(store: ObjectStore, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object and its ETag, or (None, None) when absent."""
    current = read_current(store, key)
    return _parse_json(current.data, key), current.etag


def _parse_json(data: bytes | None, key: str) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        raise ConfigError(f"{key}: not valid JSON ({e})") from None


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    role: str | None = None,
    store: ObjectStore | None = None,
) -> tuple[Settings, ObjectStore]:
    """Resolve an instance's settings from all four layers and open its store.

    Args:
        env: the environment (defaults to `os.environ`).
        role: the caller's role when `BRAINY_ROLE` is unset.
        store: an already open store (tests); otherwise opened from the environment.

    Raises:
        ConfigError: naming the key of the first invalid value.
    """
    env = os.environ if env is None else env
    role = env.get("BRAINY_ROLE") or role or "cli"
    _choice(ROLES)(role, "BRAINY_ROLE")
    mode = env.get("BRAINY_MODE") or DEFAULT_MODE[role]
    _choice(MODES)(mode, "BRAINY_MODE")
    instance_id = env.get("BRAINY_INSTANCE_ID") or default_instance_id(role)
    validate_name(instance_id, "BRAINY_INSTANCE_ID")

    values: dict[str, Any] = {"role": role, "mode": mode, "instance_id": instance_id}
    url = store_url_from_env(env) or Settings.store
    values["store"] = url
    values["s3_endpoint_url"] = env.get("BRAINY_S3_ENDPOINT_URL") or None
    values["s3_region"] = env.get("BRAINY_S3_REGION") or None
    values["sns_endpoint_url"] = env.get("BRAINY_SNS_ENDPOINT_URL") or None
    if store is None:
        store = open_store(
            url,
            read_only=mode == "read-only",
            endpoint_url=values["s3_endpoint_url"],
            region=values["s3_region"],
        )

    source = env.get("BRAINY_CONFIG_SOURCE", "bucket")
    config_path = env.get("BRAINY_CONFIG_PATH") or CONFIG_KEY
    if source == "bucket":
        shared, _ = read_json_object(store, config_path)
    elif source == "file":
        try:
            shared = json.loads(Path(config_path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"BRAINY_CONFIG_PATH: no such file {config_path!r}") from None
        except ValueError as e:
            raise ConfigError(f"BRAINY_CONFIG_PATH: {config_path}: not valid JSON ({e})") from None
    elif source == "env":
        shared = None
    else:
        raise ConfigError(
            f"BRAINY_CONFIG_SOURCE: expected one of ['bucket', 'file', 'env'], got {source!r}"
        )
    if shared is not None:
        values.update(parse_layer(shared, config_path))
    instance_key = f"{INSTANCES_PREFIX}{instance_id}.json"
    override, _ = read_json_object(store, instance_key)
    if override is not None:
        layer = parse_layer(override, instance_key)
        collections = {**values.get("collections", {}), **layer.pop("collections", {})}
        values.update(layer)
        if collections:
            values["collections"] = collections

    for var, key in _ENV.items():
        if var in env and key in _PARSERS:
            values[key] = _PARSERS[key](env[var], var)
    if not values.get("cache_dir"):
        # Keyed by store and role, so warm restarts reuse what earlier ones downloaded.
        digest = xxhash.xxh64_hexdigest(url.encode())
        base = Path(env.get("TMPDIR", "/tmp")) / "brainy-cache"
        values["cache_dir"] = str(base / f"{digest}-{role}")
    return Settings(**values), store


def create_collection(
    store: ObjectStore,
    schema: CollectionSchema,
    *,
    stored: Mapping[str, Any] | None = None,
    attempts: int = 10,
) -> bool:
    """Declare a collection in `_brainy/config.json` by compare-and-swap.

    Args:
        stored: the frozen schema the collection's data was written with (from its
            newest manifest), if it holds data.

    Returns:
        False if an identical declaration already exists.

    Raises:
        SchemaFrozen: the schema differs from the one its data was written with.
        ConfigError: a different declaration exists (changing tunables goes
            through editing the config, not `create`).
    """
    if stored is not None:
        schema.check_compatible(stored)
    created = False

    def declare(current: Current) -> bytes | None:
        nonlocal created
        config = dict(_parse_json(current.data, CONFIG_KEY) or {})
        collections = dict(config.get("collections") or {})
        if schema.name in collections:
            existing = CollectionSchema.from_dict(schema.name, collections[schema.name])
            if existing == schema:
                created = False
                return None
            diff = [k for k, v in schema.to_dict().items() if existing.to_dict()[k] != v]
            raise ConfigError(
                f"collections.{schema.name}.{diff[0]}: the collection already exists with "
                f"{diff[0]}={getattr(existing, diff[0])!r}, not {getattr(schema, diff[0])!r}"
            )
        collections[schema.name] = schema.to_dict()
        config["collections"] = collections
        created = True
        return _config_json(config)

    _update_config(store, declare, attempts)
    return created


def _config_json(config: Mapping[str, Any]) -> bytes:
    return json.dumps(config, indent=2, sort_keys=True).encode()


def _update_config(
    store: ObjectStore, edit: Callable[[Current], bytes | None], attempts: int
) -> None:
    """`_brainy/config.json` edited by compare-and-swap (`edit` returns None: no change)."""
    try:
        compare_and_swap(store, CONFIG_KEY, edit, attempts=attempts)
    except Contention:
        raise ConfigError(f"{CONFIG_KEY}: too much contention updating the configuration") from None


def drop_collection(store: ObjectStore, name: str, *, attempts: int = 10) -> bool:
    """Remove a collection's declaration from `_brainy/config.json` by
    compare-and-swap (its objects are left as they are).

    Returns:
        False if it was not declared there.
    """
    dropped = False

    def forget(current: Current) -> bytes | None:
        nonlocal dropped
        config = dict(_parse_json(current.data, CONFIG_KEY) or {})
        collections = dict(config.get("collections") or {})
        dropped = collections.pop(name, None) is not None
        if not dropped:
            return None
        config["collections"] = collections
        return _config_json(config)

    _update_config(store, forget, attempts)
    return dropped
