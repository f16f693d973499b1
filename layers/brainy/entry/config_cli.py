"""`brainy config get|set|diff|apply`: read and change `_brainy/config.json` (or an
instance's overrides, `_brainy/instances/<id>.json`, with `--instance ID`).

Every change is validated with the parsers an instance runs at start-up
(`brainy.core.config.parse_layer`) and written by compare-and-swap: after a
lost race the change is made again on the document as it now stands, and
validated again, so a concurrent change is never overwritten. A collection that
holds data keeps its schema: a change to a frozen field (or the removal of its
declaration) is refused naming the field, as `collection create` refuses it.
Nothing is written when anything is refused.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from brainy.core.config import (
    CONFIG_KEY,
    INSTANCES_PREFIX,
    CollectionSchema,
    ConfigError,
    SchemaFrozen,
    Settings,
    parse_layer,
    validate_name,
)
from brainy.entry.commands import Subparsers, add_command
from brainy.storage import ObjectStore
from brainy.storage.cas import Contention, Current, compare_and_swap, read_current
from brainy.table.manifest import Manifests

Path_ = tuple[str, ...]
# A change to a document: path → the new value there, or `DELETE`.
Patch = dict[Path_, Any]


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()
_MISSING: Any = object()
_SCHEMA_FIELDS = {f.name for f in fields(CollectionSchema)} - {"name"}


def document_key(instance: str | None) -> str:
    """The object `--instance` names: the shared config, or one instance's overrides."""
    if instance is None:
        return CONFIG_KEY
    return f"{INSTANCES_PREFIX}{validate_name(instance, '--instance')}.json"


def parse_value(text: str) -> Any:
    """`set`'s VALUE: JSON when it parses (`8`, `true`, `{"dimension": 4}`), else the
    string itself (`2GB`, `15m`)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def encode(document: Mapping[str, Any]) -> bytes:
    """A document as stored (the form `create_collection` writes)."""
    return json.dumps(document, indent=2, sort_keys=True).encode()


def decode(data: bytes | None, source: str) -> dict[str, Any]:
    """A stored or given document; absent is empty."""
    if data is None:
        return {}
    try:
        document = json.loads(data)
    except ValueError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    return document


def read_document(store: ObjectStore, key: str) -> dict[str, Any]:
    return decode(read_current(store, key).data, key)


# ------------------------------------------------------------------ dotted paths


def resolve(document: Mapping[str, Any], dotted: str) -> Path_:
    """KEY (`cache_size`, `collections.docs.nprobe`) as a path into `document`.

    Collection names may hold dots: at each level the longest run of segments
    that names an existing key wins; a collection not declared yet takes every
    segment up to a schema field (`collections.my.docs.dimension`)."""
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"KEY: expected a dotted path such as cache_size, got {dotted!r}")
    path: list[str] = []
    node: Any = document
    i = 0
    while i < len(parts):
        j = next(
            (
                j
                for j in range(len(parts), i, -1)
                if isinstance(node, Mapping) and ".".join(parts[i:j]) in node
            ),
            None,
        )
        if j is None:
            rest = parts[i:]
            if path == ["collections"]:
                j = len(parts) - 1 if len(rest) > 1 and rest[-1] in _SCHEMA_FIELDS else len(parts)
            else:
                j = i + 1
        segment = ".".join(parts[i:j])
        path.append(segment)
        node = node.get(segment) if isinstance(node, Mapping) else None
        i = j
    return tuple(path)


def dotted(path: Path_) -> str:
    return ".".join(path)


def get_path(document: Any, path: Path_) -> Any:
    """The value at `path`, or `_MISSING`."""
    for segment in path:
        if not isinstance(document, Mapping) or segment not in document:
            return _MISSING
        document = document[segment]
    return document


def _set_path(document: dict[str, Any], path: Path_, value: Any) -> None:
    node = document
    for i, segment in enumerate(path[:-1]):
        child = node.get(segment)
        if child is None:
            child = node[segment] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"{dotted(path[: i + 1])}: holds {child!r}, not an object with {path[i + 1]!r}"
            )
        node = child
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: Path_ = ()) -> Patch:
    """What turns `old` into `new`, key by key (objects compared member by member)."""
    patch: Patch = {}
    for key in sorted(set(old) | set(new)):
        path = (*prefix, key)
        if key not in new:
            patch[path] = DELETE
        elif key not in old:
            patch[path] = copy.deepcopy(new[key])
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            patch.update(changes(old[key], new[key], path))
        elif old[key] != new[key] or type(old[key]) is not type(new[key]):
            patch[path] = copy.deepcopy(new[key])
    return patch


def patched(document: Mapping[str, Any], patch: Patch) -> dict[str, Any]:
    out = copy.deepcopy(dict(document))
    for path, value in patch.items():
        _set_path(out, path, value)
    return out


# -------------------------------------------------------------------- validation


def _declared(document: Mapping[str, Any], key: str) -> dict[str, CollectionSchema]:
    return parse_layer(document, key).get("collections", {})


def validate(store: ObjectStore, key: str, new: Mapping[str, Any], old: Mapping[str, Any]) -> None:
    """Refuse `new` (replacing `old` at `key`) unless an instance would start with it
    and every collection holding data keeps its schema.

    Raises:
        ConfigError: naming the first invalid key.
        SchemaFrozen: naming the frozen field a collection holding data would change.
    """
    declared = _declared(new, key)
    try:
        before = _declared(old, key)
    except ConfigError:
        before = {}  # an invalid stored document: check every collection of the new one
    for name in sorted(set(declared) | set(before)):
        schema = declared.get(name)
        if schema == before.get(name):
            continue
        manifest = Manifests(store, name).latest() if _named(name) else None
        if manifest is None:
            continue
        if schema is not None:
            schema.check_compatible(manifest.schema)
        elif key == CONFIG_KEY:
            raise SchemaFrozen(
                f"collections.{name}: cannot remove the declaration of a collection that "
                f"holds data (manifest version {manifest.version})"
            )


def _named(name: str) -> bool:
    try:
        validate_name(name)
    except ConfigError:
        return False
    return True


def update(
    store: ObjectStore,
    key: str,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    attempts: int = 10,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Change the document at `key` by compare-and-swap: `change(document)` gives
    the new one, validated before each attempt against the document as read then.

    Returns:
        The document before and after (equal when nothing needed writing).
    """
    seen: dict[str, dict[str, Any]] = {}

    def step(current: Current) -> bytes | None:
        old = decode(current.data, key)
        new = change(copy.deepcopy(old))
        validate(store, key, new, old)
        seen.update(old=old, new=new)
        return None if new == old else encode(new)

    try:
        compare_and_swap(store, key, step, attempts=attempts)
    except Contention:
        raise ConfigError(f"{key}: too much contention updating the configuration") from None
    return seen["old"], seen["new"]


def set_value(store: ObjectStore, key: str, dotted_key: str, value: Any) -> tuple[dict, dict]:
    """`config set`: one value, at a path resolved in the document as it stands."""

    def change(document: dict[str, Any]) -> dict[str, Any]:
        return patched(document, {resolve(document, dotted_key): value})

    return update(store, key, change)


def apply_document(
    store: ObjectStore, key: str, wanted: Mapping[str, Any], base: Mapping[str, Any]
) -> tuple[dict, dict]:
    """`config apply`: make the document `wanted`, where `base` is the document the
    caller compared it with. What changed since `base` is kept; a key that both
    `wanted` and someone else changed since is refused, naming it."""
    patch = changes(base, wanted)

    def change(document: dict[str, Any]) -> dict[str, Any]:
        for path, value in patch.items():
            now, then = get_path(document, path), get_path(base, path)
            if now != then and not (now is _MISSING and value is DELETE) and now != value:
                shown = "absent" if now is _MISSING else json.dumps(now)
                raise ConfigError(
                    f"{dotted(path)}: changed by someone else since this apply began "
                    f"(now {shown}); run `brainy config diff` again"
                )
        return patched(document, patch)

    return update(store, key, change)


def unified_diff(old: Mapping[str, Any], new: Mapping[str, Any], a: str, b: str) -> str:
    """A readable diff of two documents, in their stored form."""
    lines = difflib.unified_diff(
        encode(old).decode().splitlines(keepends=True),
        encode(new).decode().splitlines(keepends=True),
        fromfile=a,
        tofile=b,
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def default_of(path: Path_) -> Any:
    """The built-in default of a setting or collection tunable, or `_MISSING`."""
    if len(path) == 1:
        found = [f for f in fields(Settings) if f.name == path[0] and f.name != "collections"]
    elif len(path) == 3 and path[0] == "collections" and path[2] in _SCHEMA_FIELDS:
        found = [f for f in fields(CollectionSchema) if f.name == path[2]]
    else:
        found = []
    if not found or found[0].default is MISSING:
        return _MISSING
    return found[0].default


# ----------------------------------------------------------------- command line


def config_command(sub: Subparsers) -> None:
    """`brainy config get|set|diff|apply`."""
    group = add_command(sub, "config", "read or change _brainy/config.json (validated, by CAS)")
    inner = group.add_subparsers(dest="config_command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run: Callable[..., int]) -> argparse.ArgumentParser:
        p = add_command(inner, name, help, run)
        p.add_argument(
            "--instance",
            metavar="ID",
            help="the overrides of one instance (_brainy/instances/ID.json)",
        )
        return p

    p = command("get", "print the document, or the value at KEY", run_get)
    p.add_argument("key", nargs="?", metavar="KEY", help="a dotted path: collections.docs.nprobe")
    p = command("set", "set KEY to VALUE (JSON if it parses, else a string)", run_set)
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p = command("diff", "show what `apply FILE` would change; exit 1 if anything", run_diff)
    p.add_argument("file", type=Path, metavar="FILE")
    p = command("apply", "make the document FILE's (kept: others' changes since)", run_apply)
    p.add_argument("file", type=Path, metavar="FILE")


def _with_store(session: Any, work: Callable[[ObjectStore], int]) -> int:
    store = session.open_store()
    try:
        return work(store)
    finally:
        store.close()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    return decode(data, str(path))


def _print(text: str) -> None:
    sys.stdout.write(text)


def run_get(args: argparse.Namespace, session: Any) -> int:
    key = document_key(args.instance)

    def work(store: ObjectStore) -> int:
        document = read_document(store, key)
        if args.key is None:
            _print(encode(document).decode() + "\n")
            return 0
        path = resolve(document, args.key)
        value = get_path(document, path)
        if value is _MISSING:
            value = default_of(path)
            if value is _MISSING:
                raise ConfigError(f"{args.key}: not set in {key} and not a setting with a default")
            print(f"{args.key}: not set in {key}; the built-in default", file=sys.stderr)
        _print(json.dumps(value, indent=2, sort_keys=True) + "\n")
        return 0

    return _with_store(session, work)


def run_set(args: argparse.Namespace, session: Any) -> int:
    key = document_key(args.instance)

    def work(store: ObjectStore) -> int:
        old, new = set_value(store, key, args.key, parse_value(args.value))
        _print(unified_diff(old, new, f"a/{key}", f"b/{key}") or f"{key}: unchanged\n")
        return 0

    return _with_store(session, work)


def run_diff(args: argparse.Namespace, session: Any) -> int:
    key = document_key(args.instance)
    wanted = _read_file(args.file)

    def work(store: ObjectStore) -> int:
        current = read_document(store, key)
        validate(store, key, wanted, current)
        text = unified_diff(current, wanted, f"a/{key}", f"b/{args.file}")
        _print(text)
        return 1 if text else 0

    return _with_store(session, work)


def run_apply(args: argparse.Namespace, session: Any) -> int:
    key = document_key(args.instance)
    wanted = _read_file(args.file)

    def work(store: ObjectStore) -> int:
        old, new = apply_document(store, key, wanted, read_document(store, key))
        _print(unified_diff(old, new, f"a/{key}", f"b/{key}") or f"{key}: unchanged\n")
        return 0

    return _with_store(session, work)
