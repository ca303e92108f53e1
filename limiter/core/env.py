"""Settings from environment variables, read one way for the limiter and the operator.

:class:`EnvReader` reads ``PREFIX + NAME`` variables from a mapping (``os.environ`` in production, a
dict in tests): unset or blank variables are None, and a value that cannot be used raises
``error`` (a ValueError subclass) naming the variable, the value and what would be valid, so a pod
with a typo fails at start with one line instead of running on a silent default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class EnvReader:
    """Typed reads of ``prefix + name`` variables of ``env``."""

    def __init__(self, env: Mapping[str, str], prefix: str, error: type[ValueError] = ValueError) -> None:
        self.env = env
        self.prefix = prefix
        self.error = error

    def fail(self, name: str, raw: str, expected: str) -> ValueError:
        """The error for variable ``name`` holding ``raw`` where ``expected`` was wanted."""
        return self.error(f"{self.prefix}{name}: {raw!r} is not valid: {expected}")

    def is_set(self, name: str) -> bool:
        """Whether the variable exists at all (even empty: for "empty means none" settings)."""
        return self.prefix + name in self.env

    def text(self, name: str) -> str | None:
        """The stripped value, None when unset or blank."""
        raw = self.env.get(self.prefix + name, "").strip()
        return raw or None

    def integer(self, name: str, *, positive: bool = False) -> int | None:
        """An integer (above 0 with ``positive``), None when unset."""
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value: int | None = int(raw)
        except ValueError:
            value = None
        if value is None or (positive and value <= 0):
            raise self.fail(name, raw, "a positive integer" if positive else "an integer")
        return value

    def number(self, name: str, *, positive: bool = False) -> float | None:
        """A finite number (above 0 with ``positive``), None when unset."""
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value: float | None = float(raw)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or (positive and value <= 0):
            raise self.fail(name, raw, "a positive number" if positive else "a number")
        return value

    def boolean(self, name: str) -> bool | None:
        """true/false (also 1/0, yes/no, on/off), None when unset."""
        raw = self.text(name)
        if raw is None:
            return None
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise self.fail(name, raw, "true or false")

    def choice(self, name: str, choices: tuple[str, ...], *, fold: bool = False) -> str | None:
        """One of ``choices`` (compared upper-cased with ``fold``), None when unset."""
        raw = self.text(name)
        if raw is None:
            return None
        value = raw.upper() if fold else raw
        if value not in choices:
            raise self.fail(name, raw, f"{', '.join(choices[:-1])} or {choices[-1]}")
        return value
