"""Error types for user mistakes and unusable inputs.

Every layer raises these for things the *user* got wrong (a bad name, a malformed file, a model
that does not fit); the CLI prints them on one line and exits 2. Internal invariants use ``assert``.
They live in the lowest layer (``profiles``) so every other package may import them.
"""

from __future__ import annotations

from collections.abc import Iterable


class PdplanError(Exception):
    """A user-facing error: says what was wrong, the value, and what was expected."""


class ConfigError(PdplanError):
    """A bad option, name, or input file (workload, plan, SLO string, model config)."""


class ProfileError(PdplanError):
    """A profile that cannot be measured, read or fitted (or a model that does not fit the device)."""


class DeployError(PdplanError):
    """A deployment that cannot be launched, reached or stopped."""


def choices_error(field: str, value: object, valid: Iterable[str]) -> ConfigError:
    """Build the standard "unknown name" error, listing the valid names in a stable order."""
    names = ", ".join(sorted(valid))
    return ConfigError(f"unknown {field} {value!r}; valid: {names}")
