"""Choose a run's training examples from its sources (`conf/mix/*.yaml` says what each strategy means).

Selection depends only on the rows of each source and the seed: it does not depend on the order in
which sources are listed, and the same seed always selects the same examples.
"""

from __future__ import annotations

import hashlib

from medinject.config import MixStrategy
from medinject.data.rows import Example
from medinject.errors import UserError


def _rank(example: Example, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{example.id}".encode()).hexdigest()


def select(rows_by_source: dict[str, list[Example]], strategy: MixStrategy, budget: int | None, seed: int) -> list[Example]:
    names = sorted(rows_by_source)
    if not names:
        raise UserError("data.sources: a provenance configuration needs at least one source")
    if strategy == MixStrategy.natural:
        return [ex for name in names for ex in sorted(rows_by_source[name], key=lambda e: _rank(e, seed))]
    if strategy == MixStrategy.equal_budget:
        if budget is None or budget < len(names):
            raise UserError(f"mix.budget: equal_budget needs a budget of at least {len(names)} (one per source), got {budget}")
        share, extra = divmod(budget, len(names))
        chosen: list[Example] = []
        for i, name in enumerate(names):
            want = share + (1 if i < extra else 0)
            have = rows_by_source[name]
            if want > len(have):
                raise UserError(
                    f"mix.budget: source '{name}' has {len(have)} training rows, {want - len(have)} short of its "
                    f"equal share of {want} (budget {budget} over {len(names)} sources)"
                )
            chosen.extend(sorted(have, key=lambda e: _rank(e, seed))[:want])
        return chosen
    raise UserError(f"mix.strategy: unknown strategy {strategy!r}")
