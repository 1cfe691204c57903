"""Errors a user can cause. Each names the file, the key and what was expected."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UsageError(Exception):
    """Bad input from the user: printed as one message, exit status 2, nothing submitted."""


class ConfigError(UsageError):
    def __init__(self, source: str | Path | None, key: str | None, message: str):
        self.source, self.key, self.message = source, key, message
        where = ", ".join(part for part in (str(source) if source else "", f"key '{key}'" if key else "") if part)
        super().__init__(f"{where}: {message}" if where else message)


def type_name(expected: type | tuple[type, ...]) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}  # fmt: skip
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def expect(value: Any, expected: type | tuple[type, ...], source: Any, key: str) -> Any:
    """Return ``value`` if it has the expected type (bool is never accepted as a number)."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ConfigError(source, key, f"expected {type_name(expected)}, got {value!r}")
    return value


def env_names(values: Any, source: Any, key: str) -> list[str]:
    """A list of environment variable names (``capture_env``)."""
    for i, value in enumerate(expect(values, list, source, key)):
        if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
            raise ConfigError(source, f"{key}[{i}]", f"expected an environment variable name, got {value!r}")
    return list(values)


def unknown_keys(mapping: dict, allowed: set[str] | dict, source: Any, prefix: str = "") -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(source, f"{prefix}{key}", f"unknown key; expected one of: {', '.join(sorted(allowed))}")
