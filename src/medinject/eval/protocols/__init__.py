"""The evaluation protocols, one file each, registered here under their `eval.protocol` value.
Adding one: a class implementing `medinject.eval.protocol.Protocol` in its own file, a value in
`config.EvalProtocol` (the class's `name`), and the class in PROTOCOLS."""

from __future__ import annotations

from medinject.config import EvalProtocol
from medinject.eval.protocol import Protocol
from medinject.eval.protocols.lenient import LenientProtocol
from medinject.eval.protocols.strict import StrictProtocol

PROTOCOLS: dict[EvalProtocol, type[Protocol]] = {kind.name: kind for kind in (LenientProtocol, StrictProtocol)}


def protocol_for(name: EvalProtocol | str) -> Protocol:
    """The protocol registered under `name` (a value of `eval.protocol`; old names are accepted)."""
    return PROTOCOLS[EvalProtocol(name)]()
