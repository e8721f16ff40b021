"""Choose a run's training examples from its sources (`conf/mix/*.yaml` says what each strategy means).

Each source's rows are put in a seeded order (a hash of the seed and the row's content id) and the
first rows of that order are taken. Selection therefore depends only on each source's rows, the
seed and the mix parameters: not on the order in which sources are listed, nor on file order.
"""

from __future__ import annotations

import hashlib
import math

from omegaconf import DictConfig

from medinject.config import MixStrategy, TaskBalance
from medinject.data.rows import Example, Rows
from medinject.util.errors import UserError


def _ranked(ids: list[str], positions: list[int], seed: int) -> list[int]:
    """`positions` (row indices into `ids`) in the seeded order."""
    return sorted(positions, key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).digest())


def _split_evenly(total: int, names: list[str]) -> dict[str, int]:
    share, extra = divmod(total, len(names))
    return {name: share + (1 if i < extra else 0) for i, name in enumerate(names)}


def _first(name: str, ids: list[str], ranked: list[int], want: int, seed: int, allow_repeat: bool, why: str) -> list[int]:
    """The first `want` of `ranked`; past its end, whole passes and then a fresh seeded draw."""
    if want <= len(ranked):
        return ranked[:want]
    if not allow_repeat:
        raise _TooFewRows(f"mix.budget: source '{name}' has {len(ranked)} training rows, {want - len(ranked)} short of its {why} of {want}")
    passes, rest = divmod(want, len(ranked))
    return ranked * passes + _ranked(ids, ranked, seed + passes)[:rest]


def _take(name: str, rows: Rows, want: int, seed: int, balance: TaskBalance, allow_repeat: bool, why: str) -> list[int]:
    ids = rows.column("id").to_pylist()
    ranked = _ranked(ids, list(range(len(ids))), seed)
    if balance == TaskBalance.source:
        return _first(name, ids, ranked, want, seed, allow_repeat, why)
    types = rows.column("type").to_pylist()
    by_type: dict[str, list[int]] = {}
    for i in ranked:  # each type's rows keep the seeded order
        by_type.setdefault(types[i], []).append(i)
    quotas = _split_evenly(want, sorted(by_type))
    return [i for t, n in quotas.items() for i in _first(f"{name}/{t}", ids, by_type[t], n, seed, allow_repeat, why)]


def _weighted_quotas(weights: dict, names: list[str], budget: int) -> dict[str, int]:
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) for w in weights.values()):
        raise UserError(f"mix.weights: weights must be numbers, got {weights}")
    if sorted(weights) != names:
        raise UserError(f"mix.weights: needs exactly the sources {', '.join(names)}, got {', '.join(sorted(weights)) or 'none'}")
    if any(w < 0 for w in weights.values()):
        raise UserError(f"mix.weights: weights must not be negative, got {dict(sorted(weights.items()))}")
    if not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
        raise UserError(f"mix.weights: weights must sum to 1, they sum to {sum(weights.values()):g}")
    exact = {name: weights[name] * budget for name in names}
    quotas = {name: math.floor(v) for name, v in exact.items()}
    by_remainder = sorted(names, key=lambda n: (-(exact[n] - quotas[n]), n))
    for name in by_remainder[: budget - sum(quotas.values())]:
        quotas[name] += 1
    return quotas


def _as_dict(weights) -> dict:
    if weights is None:
        return {}
    if not isinstance(weights, DictConfig):
        raise UserError(f"mix.weights: expected a mapping of source names to shares, got {weights!r}")
    return {str(k): v for k, v in weights.items()}


def select(rows_by_source: dict[str, Rows], mix: DictConfig, seed: int, dropped_duplicates: dict[str, int] | None = None) -> list[Example]:
    """The run's training examples; `dropped_duplicates` (source -> rows dropped as duplicates) only
    makes a refusal for too few rows say where the rows went."""
    names = sorted(rows_by_source)
    if not names:
        raise UserError("data.sources: a provenance configuration needs at least one source")
    strategy = mix.strategy
    if strategy == MixStrategy.natural:
        quotas, why, repeat = {name: len(rows_by_source[name]) for name in names}, "", False
        return _gather(rows_by_source, quotas, seed, TaskBalance.source, repeat, why)
    budget = mix.budget
    if budget is None or budget <= 0:
        raise UserError(f"mix.budget: {strategy.value} needs a positive budget, got {budget}")
    if strategy == MixStrategy.equal_budget:
        if budget < len(names):
            raise UserError(f"mix.budget: {budget} cannot be split equally over {len(names)} sources")
        quotas, why, repeat = _split_evenly(budget, names), "equal share", False
    elif strategy == MixStrategy.weighted:
        quotas, why, repeat = _weighted_quotas(_as_dict(mix.weights), names, budget), "weighted share", mix.allow_repeat
    else:
        raise UserError(f"mix.strategy: unknown strategy {strategy!r}")
    try:
        return _gather(rows_by_source, quotas, seed, mix.task_balance, repeat, why)
    except _TooFewRows as err:
        raise UserError(_too_few_rows_message(err, strategy, (dropped_duplicates or {}).get(err.source, 0))) from None


def _gather(rows_by_source: dict[str, Rows], quotas: dict[str, int], seed: int, balance: TaskBalance, repeat: bool, why: str) -> list[Example]:
    chosen: list[Example] = []
    for name in sorted(quotas):
        rows = rows_by_source[name]
        try:
            chosen.extend(rows.take(_take(name, rows, quotas[name], seed, balance, repeat, why)))
        except _TooFewRows as err:
            err.source = name
            raise
    return chosen


class _TooFewRows(UserError):
    source = ""


def _too_few_rows_message(err: _TooFewRows, strategy: MixStrategy, dropped: int) -> str:
    """The refusal, with where rows went and what changes it: duplicates dropped (data.duplicates),
    rows repeated (mix.allow_repeat, weighted mixes only)."""
    text = str(err)
    if dropped:
        text += (f", after {dropped} of its rows were dropped as duplicates (data.duplicates=drop; "
                 "data.duplicates=keep trains on every copy)")
    if strategy == MixStrategy.weighted:
        return text + "; mix.allow_repeat=true repeats its rows, or lower mix.budget"
    return text + "; lower mix.budget, or mix.strategy=weighted with mix.allow_repeat=true repeats rows"
