"""What a schema field says about itself, in its metadata, beside its type and default:

* `unhashed(...)`: the field says how a run is executed or recorded, not what it computes, so it is
  left out of the run's identity (`medinject.config.identity`). Every other field decides the result.
* `allowed=`: the range its value must lie in where the type cannot say it (an `Allowed`, checked by
  `medinject.config.checks.check_settings` before anything is loaded). A renamed or moved field
  carries its range with it.

`schema_fields` walks a schema the way both are read: dotted names, nested dataclasses followed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import Field, dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

from omegaconf import MISSING


@dataclass(frozen=True)
class Allowed:
    """A value's range: `test(value)` is True inside it; `text` is the range as a refusal states it."""

    test: Callable[[Any], bool]
    text: str


AT_LEAST_ONE = Allowed(lambda v: v >= 1, "an integer >= 1")
POSITIVE = Allowed(lambda v: v > 0, "a number > 0")
NON_NEGATIVE = Allowed(lambda v: v >= 0, "a number >= 0")
BELOW_ONE = Allowed(lambda v: 0 <= v < 1, "a number in [0, 1)")
ANY_TASK = Allowed(lambda v: len(v) >= 1, "at least one of mcqu, mcq, oeq")


def or_null(allowed: Allowed, text: str | None = None) -> Allowed:
    """`allowed`, or null (None)."""
    return Allowed(lambda v: v is None or allowed.test(v), text or f"null or {allowed.text}")


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, allowed: Allowed | None = None,
            hashed: bool = True) -> Any:
    """A schema field with its metadata (module doc); `factory` for a mutable default."""
    metadata: dict[str, Any] = {}
    if allowed is not None:
        metadata["allowed"] = allowed
    if not hashed:
        metadata["unhashed"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def unhashed(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, allowed: Allowed | None = None) -> Any:
    """A field left out of the run hash: how a run is executed or recorded, not what it computes."""
    return setting(default, factory=factory, allowed=allowed, hashed=False)


def schema_fields(schema: type, prefix: str = "") -> Iterator[tuple[str, Field, bool]]:
    """(dotted name, field, inside an unhashed field) for every field of `schema` and of the
    dataclasses nested in it (not those inside a dict or an Optional)."""
    types = get_type_hints(schema)  # resolves the string annotations of `from __future__ import annotations`
    for f in fields(schema):
        name = prefix + f.name
        yield name, f, False
        if is_dataclass(types[f.name]):
            hidden = bool(f.metadata.get("unhashed"))
            for inner, g, below in schema_fields(types[f.name], name + "."):
                yield inner, g, below or hidden
