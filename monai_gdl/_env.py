"""Environment variables the package reads, each checked where it is read: a bad value is an
error that names the variable, never a silent default."""

from __future__ import annotations

import os

__all__ = ["env_choice", "env_int"]


def env_int(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(
            f"environment variable {name}={raw!r}: expected an integer >= {minimum}; unset it for the "
            f"default ({default})."
        )
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise ValueError(f"environment variable {name}={raw!r}: use one of {choices}, or unset it for {default!r}.")
    return raw
