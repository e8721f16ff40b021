"""Keep credentials out of everything a run writes.

Values of environment variables whose names look like credentials (…TOKEN, …KEY, …SECRET,
…PASSWORD) are replaced by "***" in any config or record before it is saved or sent to a logger,
so a config that interpolates `${oc.env:HF_TOKEN}` cannot leak it into a run directory.
"""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
_MIN_LENGTH = 6  # shorter values are too likely to occur by chance ("1", "true")
MASK = "***"
TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".txt", ".jinja", ".md", ".csv", ".log")


def secret_values() -> list[str]:
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(obj, secrets: list[str] | None = None):
    """A copy of `obj` (nested dicts, lists, strings) with every secret value masked."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        for value in secrets:
            obj = obj.replace(value, MASK)
        return obj
    if isinstance(obj, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    return obj

