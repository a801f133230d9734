"""Command-line arguments: one-line errors, ``--key value`` config overrides, and the refusal of unknown keys.

Every varseg command reports a usage problem as one ``error: ...`` line (exit code 2), never a traceback.
:func:`check_override_keys` refuses an override that no config of the bundle defines, naming the closest known keys,
so a misspelt ``--max_epoch 5`` cannot be silently ignored.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "OneLineArgumentParser",
    "OverrideError",
    "check_override_keys",
    "config_keys",
    "one_line",
    "parse_overrides",
    "parse_value",
]


_WORKFLOW_KEYS = ("imports", "initialize", "run", "finalize")  # sections of a config, never suggested as settings


class OverrideError(ValueError):
    """A config override that cannot be used (malformed, without a value, or a key no config defines)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors are one ``error: ...`` line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def one_line(text: Any) -> str:
    """``text`` as one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(str(text).split())


def parse_value(text: str) -> Any:
    """A command-line value as JSON, else as a Python literal, else the string itself."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_overrides(rest: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs of config overrides, values parsed by :func:`parse_value`.

    Raises:
        OverrideError: a token that is not ``--key``, or a key without a value.
    """
    overrides: dict[str, Any] = {}
    rest = list(rest)
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or len(token) == 2:
            raise OverrideError(f"unexpected argument {token!r}: config overrides are --key value pairs")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest) or (rest[i + 1].startswith("--") and len(rest[i + 1]) > 2):
                raise OverrideError(f"config override --{key} has no value")
            value = rest[i + 1]
            i += 2
        overrides[key] = parse_value(value)
    return overrides


def _paths(content: Any, prefix: str = "") -> Iterator[str]:
    """Every ``a#b#0`` id of a config's content (dict keys and list positions), parents before children."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(content, Mapping):
        items = content.items()
    elif isinstance(content, list):
        items = enumerate(content)
    else:
        return
    for key, value in items:
        path = f"{prefix}{key}"
        yield path
        yield from _paths(value, path + "#")


def config_keys(files: Iterable[str | Path]) -> set[str]:
    """The ids (``key``, ``section#key``, ``list#0``) that the config files define, unreadable files skipped."""
    keys: set[str] = set()
    for file in files:
        try:
            content = json.loads(Path(file).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        keys.update(_paths(content))
    return keys


def check_override_keys(overrides: Iterable[str], known: set[str], where: str) -> None:
    """Refuse an override key that ``known`` (from :func:`config_keys`) lacks, naming up to three close keys.

    Raises:
        OverrideError: ``unknown setting --<key> for <where> (no config of it defines this key); closest known:
            --a, --b, --c``.
    """
    for key in overrides:
        if key in known:
            continue
        candidates = sorted(k for k in known if ("#" not in k or "#" in key) and k.split("#")[0] not in _WORKFLOW_KEYS)
        close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6) or difflib.get_close_matches(
            key, candidates, n=3, cutoff=0.0)
        hint = f"; closest known: {', '.join('--' + c for c in close)}" if close else ""
        raise OverrideError(f"unknown setting --{key} for {where} (no config of it defines this key){hint}")
