"""Known-answer data: three training sources whose value for the test set is known by construction.

`python -m medinject.data.planted OUT [--seed S] [--flat] [--facts N] [--copies R] [--budget B]
[--transfer T] [--wrong-rate W]` (the budget is the largest source's facts x copies unless given)
writes, in the layout of the bundled sample (`<origin>/<split>/<type>.jsonl`, MedInjection-FR schema,
all three task types), the sources native, synthetic and translated, the native and translated test
sets, and `truth.json` (the metric the truth is planted in, the expected score of each of the seven
provenance configurations, the optimum of the mixture and whether the data are flat).
`experiment=known_answer` and `experiment=known_answer_mixture` generate it into the cache themselves
(`ensure_planted`, called by the data stage) from the `planted` config group.

The task. A *fact* is a made-up marker word and five made-up values of its own (options A-E), one of
them right; within each group of facts every letter is the right one equally often, so a learner's
letter prior (the letter it favours for a marker it never saw) scores exactly chance on a group it was
not taught, whichever letter it favours. The native test set asks one mcqu item per fact (`Quelle est la
valeur associée au repère X ?`); the facts are split into three groups of `facts` each (or
`facts_by_source`), and each source teaches one group, `copies` distinct rows per fact (the test's
question behind a different lead-in, so the duplicate filter keeps them). Every source asks in the
test's phrasing: what differs is the letter it teaches, the one thing the tiny model memorises, so the
value of a source is a property of the data, not of how far a random model generalises across wordings.

* **native** teaches its group with the test's option order: a learner that memorised a row answers
  the test item right;
* **translated** teaches its group with a shifted option order for a share 1 - `transfer` of its facts
  (the same values, rotated, so the letter it teaches is not the test's letter): what a learner
  memorised transfers for `transfer` of the facts only;
* **synthetic** teaches its group with the wrong letter for a share `wrong_rate` of its facts.

`--flat` plants no difference: every source teaches facts that the test set does not ask about, so
no configuration and no mixture knows anything the others do not.

The model of `expected` (what truth.json says each configuration scores on `eval/native/mcqu/em_loglik`)
is a model of a learner that memorises marker -> letter, not a measurement. Its assumptions:

1. a fact is known after the run trained on at least one of its rows (the tiny preset trains many
   epochs over few rows), and a fact never seen is answered at chance, 1/5. The first version of this
   generator taught translated and synthetic in other wordings; the sweep measured on it
   (docs/benchmarks.md, "Known-answer study") fell furthest below the model where a configuration saw
   about one row per fact, hence one phrasing for every source and six rows per fact;
2. a known fact scores 1 when the letter learnt is the test's letter, else 0 (the learner answers the
   letter it memorised: a wrong one is worse than chance);
3. rows are drawn without repetition, `n_s = share_s x budget` of the `copies x facts` rows of each
   source, so a fact of source s is seen with probability `1 - prod_j (K - n_s - j) / (K - j)`, j < copies
   (the hypergeometric chance that none of its rows was drawn; a real-valued n_s is used for the mixture);
4. facts and letters do not interfere: a group is worth the same whatever else is trained on.

So expected(shares) = sum over sources of (F_s / F) [1/5 + seen_s(n_s) (value_s - 1/5)], F_s the facts of
source s and F all of them, with value 1 for native, `transfer` for translated and `1 - wrong_rate` for
synthetic. Each term is concave and saturates in its share, so the best mixture is interior: `optimum`
is its maximum over the simplex (a 0.01 lattice refined by scipy). With equal budgets (the seven
configurations, `mix=equal_budget`) n_s = budget / the number of sources of the configuration. With one
row per fact (`copies` 1, `planted=sharp`) seen_s is min(1, n_s / F_s): each term rises linearly to a
kink where its source is used up, and the optimum is the point where every source is, a sharp peak
rather than a flat top. A real model memorises imperfectly; the known-answer study asks whether the
pipeline recovers this ranking, not whether the numbers match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from itertools import combinations
from pathlib import Path

from medinject.util.cli import tool
from medinject.util.errors import UserError
from medinject.util.io import check_writable
from medinject.util.rundir import TRUTH

SOURCES = ("native", "synthetic", "translated")
LETTERS = "ABCDE"
CHANCE = 1 / len(LETTERS)
METRIC = "eval/native/mcqu/em_loglik"
VERSION = 3  # bump when the generated rows change
PARAMS = "params.json"

_SYLLABLES = ("ba", "ko", "ri", "tu", "ne", "za", "lo", "mi", "pu", "se", "da", "fi", "go", "ve", "xu", "ra", "no", "li")
_SUFFIXES = ("ine", "ase", "ol", "ide", "ium", "ane")
_LEADS = {
    "native": ("", "Question d'entraînement. ", "Révision. ", "Rappel. ", "Exercice. "),
    "translated": ("", "Practice. ", "Revue. ", "Note. ", "Drill. "),
    "synthetic": ("", "Cas généré. ", "Fiche. ", "Synthèse. ", "Exemple. "),
}
ASK = "Quelle est la valeur associée au repère {m} ?"  # the test's phrasing, and every source's
TRANSLATED_TEST_ASK = "Quelle valeur va avec le marqueur {m} dans ce contexte ?"  # the translated test set's


@dataclass(frozen=True)
class PlantedParams:
    seed: int = 0
    flat: bool = False
    facts: int = 30  # facts per source (the native test set asks 3 x facts mcqu items)
    copies: int = 6  # distinct training rows per fact
    budget: int = 180  # training examples per run (mix.budget of the known-answer experiments)
    transfer: float = 0.6  # translated: share of its facts whose letter carries over to the test
    wrong_rate: float = 0.2  # synthetic: share of its facts taught with a wrong letter
    facts_by_source: dict[str, int] | None = None  # facts per source where they differ (replaces `facts`)

    def facts_of(self, source: str) -> int:
        return int(self.facts_by_source[source]) if self.facts_by_source else self.facts

    @property
    def total_facts(self) -> int:
        """Facts of all three sources together: the native test set's items."""
        return sum(self.facts_of(s) for s in SOURCES)

    @property
    def rows(self) -> int:
        """Training rows of all three sources together."""
        return self.total_facts * self.copies

    def check(self) -> None:
        if self.facts_by_source is not None and sorted(self.facts_by_source) != sorted(SOURCES):
            raise UserError(f"planted.facts_by_source: one entry for each of {', '.join(SOURCES)}, got {', '.join(sorted(self.facts_by_source))}")
        facts = {s: self.facts_of(s) for s in SOURCES}
        if min(facts.values()) < 2 or self.copies < 1:
            raise UserError(f"planted: facts >= 2 per source and copies >= 1, got facts={facts}, copies={self.copies}")
        if not 0 < self.budget <= self.rows:
            raise UserError(f"planted.budget: between 1 and facts x copies of the three sources ({self.rows}), got {self.budget}")
        for name in ("transfer", "wrong_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"planted.{name}: a share in [0, 1], got {getattr(self, name)}")


# --- the model of what a memorising learner scores ---------------------------------------------------


def value(params: PlantedParams, source: str) -> float:
    """What a known fact of `source` scores on the test (assumption 2)."""
    if params.flat:
        return CHANCE  # its facts are not asked about
    return {"native": 1.0, "translated": params.transfer, "synthetic": 1.0 - params.wrong_rate}[source]


def seen(params: PlantedParams, n: float, source: str) -> float:
    """Probability that a fact of `source` is seen when n of its copies x facts rows are drawn (assumption
    3); 1 once n reaches them all (mix.allow_repeat repeats rows, it adds no fact)."""
    k = params.facts_of(source) * params.copies
    unseen = 1.0
    for j in range(params.copies):
        unseen *= max(k - n - j, 0.0) / (k - j)
    return 1.0 - unseen


def expected_score(params: PlantedParams, examples: dict[str, float]) -> float:
    """The modelled test score of a run trained on `examples[source]` rows of each source: each source's
    group of test items weighs its share of them."""
    return sum(params.facts_of(s) / params.total_facts * (CHANCE + seen(params, examples.get(s, 0.0), s) * (value(params, s) - CHANCE)) for s in SOURCES)


def config_names() -> list[str]:
    """The seven provenance configurations, named as conf/data/ names them."""
    return ["+".join(c) for r in (1, 2, 3) for c in combinations(SOURCES, r)]


def expected_by_config(params: PlantedParams) -> dict[str, float]:
    """Equal budgets: each of a configuration's sources gives budget / (its number of sources) rows."""
    out = {}
    for name in config_names():
        parts = name.split("+")
        share, extra = divmod(params.budget, len(parts))  # as mix.equal_budget splits it
        out[name] = expected_score(params, {s: share + (1 if i < extra else 0) for i, s in enumerate(sorted(parts))})
    return out


def mixture_optimum(params: PlantedParams) -> dict[str, float] | None:
    """The shares that maximise the modelled score at the budget; None when the data are flat."""
    if params.flat:
        return None
    import numpy as np
    from scipy.optimize import minimize

    def score(p) -> float:
        return expected_score(params, {s: float(v) * params.budget for s, v in zip(SOURCES, p)})

    grid = [(a / 100, b / 100, 1 - (a + b) / 100) for a in range(101) for b in range(101 - a)]
    start = max(grid, key=score)
    fit = minimize(lambda p: -score(np.clip(p, 0, 1)), np.array(start), method="SLSQP", bounds=[(0, 1)] * 3,
                   constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1}])  # fmt: skip
    best = np.clip(fit.x, 0, 1) if fit.success and score(np.clip(fit.x, 0, 1)) >= score(start) else np.array(start)
    best = best / best.sum()
    return {s: round(float(v), 4) for s, v in zip(SOURCES, best)}


def truth(params: PlantedParams) -> dict:
    return {"metric": METRIC, "expected": expected_by_config(params), "optimum": mixture_optimum(params), "flat": params.flat,
            "params": asdict(params)}  # fmt: skip


# --- the rows -----------------------------------------------------------------------------------------


def _value_syllables(params: PlantedParams) -> int:
    """Syllables of a value word: two while the words of two syllables are plenty for every fact's five
    values (the default data), three beyond (the draw below needs far more words than it takes)."""
    values = params.total_facts * len(LETTERS) * (2 if params.flat else 1)
    return 2 if 2 * values <= len(_SYLLABLES) ** 2 * len(_SUFFIXES) else 3


def _facts(rng: random.Random, n: int, taken: set[str], syllables: int = 2) -> list[dict]:
    facts = []
    while len(facts) < n:
        marker = "".join(rng.choice(_SYLLABLES) for _ in range(3))
        if marker in taken:
            continue
        taken.add(marker)
        values = []  # the fact's own five values: every option line says which fact is asked
        while len(values) < len(LETTERS):
            word = "".join(rng.choice(_SYLLABLES) for _ in range(syllables)) + rng.choice(_SUFFIXES)
            if word not in taken:
                taken.add(word)
                values.append(word)
        facts.append({"marker": marker, "options": values})
    letters = [k % len(LETTERS) for k in range(n)]  # every letter equally often (as near as n allows):
    rng.shuffle(letters)  # a learner's letter prior then scores chance on any group it was not taught
    for fact, answer in zip(facts, letters):
        fact["answer"] = answer
    return facts


def _context(options: list[str]) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options))


def _mcqu(origin: str, instruction: str, options: list[str], answer: int) -> dict:
    return {"instruction": instruction, "context": _context(options), "answer": LETTERS[answer], "type": "mcqu", "origin": origin}


def _extra_types(origin: str, facts: list[dict], phrasing: str) -> list[dict]:
    """mcq and oeq rows about the same facts (the schema's other task types; the truth is on mcqu)."""
    rows = []
    for a, b in zip(facts[0::2], facts[1::2]):
        options = list(dict.fromkeys([a["options"][a["answer"]], b["options"][b["answer"]], *a["options"]]))[: len(LETTERS)]
        rng = random.Random(a["marker"] + b["marker"])
        rng.shuffle(options)
        right = sorted(LETTERS[options.index(f["options"][f["answer"]])] for f in (a, b))
        rows.append({"instruction": f"Quelles valeurs sont associées aux repères {a['marker']} et {b['marker']} ?{phrasing}",
                     "context": _context(options), "answer": ", ".join(dict.fromkeys(right)) if right[0] != right[1] else right[0],
                     "type": "mcq", "origin": origin})  # fmt: skip
    for f in facts:
        rows.append({"instruction": f"Donnez la valeur associée au repère {f['marker']}.{phrasing}", "context": "",
                     "answer": f"La valeur associée au repère {f['marker']} est {f['options'][f['answer']]}.", "type": "oeq", "origin": origin})  # fmt: skip
    return rows


def _fix_mcq(rows: list[dict]) -> list[dict]:
    """An mcq needs two or more right letters: a pair that shares its value becomes one more option."""
    return [r for r in rows if r["type"] != "mcq" or ", " in r["answer"]]


def generate(params: PlantedParams) -> dict[str, list[dict]]:
    """Every file's rows, keyed `<origin>/<split>/<type>`."""
    params.check()
    rng = random.Random(f"planted-v{VERSION}-{params.seed}")
    taken: set[str] = set()
    syllables = _value_syllables(params)
    groups = {s: _facts(rng, params.facts_of(s), taken, syllables) for s in SOURCES}
    test_facts = [fact for s in SOURCES for fact in groups[s]]
    if params.flat:  # every source teaches facts the test never asks about
        groups = {s: _facts(rng, params.facts_of(s), taken, syllables) for s in SOURCES}
    files: dict[str, list[dict]] = {}
    for source, facts in groups.items():
        rows = []
        for k, fact in enumerate(facts):
            options, answer = list(fact["options"]), fact["answer"]
            if source == "translated" and not params.flat and k >= round(params.transfer * len(facts)):
                options = options[1:] + options[:1]  # the same values, another order: another letter
                answer = (answer - 1) % len(LETTERS)
            if source == "synthetic" and not params.flat and k < round(params.wrong_rate * len(facts)):
                answer = (answer + 1 + rng.randrange(len(LETTERS) - 1)) % len(LETTERS)  # a wrong letter
            for c in range(params.copies):
                lead = _LEADS[source][c % len(_LEADS[source])] + (f"({c // len(_LEADS[source])}) " if c >= len(_LEADS[source]) else "")
                rows.append(_mcqu(source, lead + ASK.format(m=fact["marker"]), options, answer))
        rows += _extra_types(source, facts, "" if source == "native" else " (entraînement)")
        for task in ("mcqu", "mcq", "oeq"):
            files[f"{source}/train/{task}"] = _fix_mcq([r for r in rows if r["type"] == task])
    for test, ask in (("native", ASK), ("translated", TRANSLATED_TEST_ASK)):
        rows = [_mcqu(test, ask.format(m=f["marker"]), f["options"], f["answer"]) for f in test_facts]
        rows += _extra_types(test, test_facts, " (évaluation)")
        for task in ("mcqu", "mcq", "oeq"):
            files[f"{test}/test/{task}"] = _fix_mcq([r for r in rows if r["type"] == task])
    return files


def write(out: Path, params: PlantedParams) -> dict:
    """Write the data and truth.json into `out` (built beside it and renamed into place); the truth."""
    rows = generate(params)
    planted = truth(params)
    out = Path(out)
    check_writable(out.parent)
    if out.is_dir():
        check_writable(out)  # its files are replaced
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for key, items in rows.items():
            path = staging / f"{key}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        (staging / TRUTH).write_text(json.dumps(planted, indent=2) + "\n", encoding="utf-8")
        (staging / PARAMS).write_text(json.dumps({"version": VERSION, **asdict(params)}, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.replace(staging, out)
        except OSError as err:  # another job wrote it first (the same parameters give the same files), or a real failure
            if _params(out) != {"version": VERSION, **asdict(params)}:
                raise OSError(err.errno, err.strerror, str(out)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return planted


def _params(out: Path) -> dict | None:
    """The parameters the planted data in `out` was generated with; None when there is none."""
    try:
        return json.loads((out / PARAMS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def params_of(node) -> PlantedParams | None:
    """The parameters of a `planted` config node, or None for no node (the config plants nothing)."""
    if node is None:
        return None
    values = {k: node[k] for k in PlantedParams.__dataclass_fields__ if k in node}
    if values.get("facts_by_source") is not None:
        values["facts_by_source"] = {str(s): int(n) for s, n in dict(values["facts_by_source"]).items()}
    return PlantedParams(**values)


def ensure_planted(planted, sample_data: str | Path) -> Path | None:
    """With a `planted` config node: its data in `sample_data` (the config's `paths.sample_data`),
    generated there when absent or made with other parameters; the folder, or None when `planted` is
    None (the config plants nothing)."""
    params = params_of(planted)
    if params is None:
        return None
    out = Path(sample_data)
    if _params(out) != {"version": VERSION, **asdict(params)}:
        write(out, params)
    return out


def fingerprint(params: PlantedParams) -> str:
    return hashlib.sha256(json.dumps({"version": VERSION, **asdict(params)}, sort_keys=True).encode()).hexdigest()[:12]


def _facts_arg(text: str) -> int | dict[str, int]:
    if text.isdigit():
        return int(text)
    try:
        return {name.strip(): int(n) for name, n in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--facts: N or native=N,synthetic=N,translated=N, got {text!r}") from None


@tool
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medinject.data.planted", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (replaced when it exists)")
    defaults = PlantedParams()
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--flat", action="store_true", help="plant no difference at all")
    parser.add_argument("--facts", type=_facts_arg, default=defaults.facts,
                        help="facts per source: N, or native=N,synthetic=N,translated=N where they differ")
    parser.add_argument("--copies", type=int, default=defaults.copies, help="training rows per fact")
    parser.add_argument("--budget", type=int, default=None,
                        help="training examples per run the truth is computed for (default: the largest source's facts x copies)")
    parser.add_argument("--transfer", type=float, default=defaults.transfer, help="translated: share of facts whose letter transfers")
    parser.add_argument("--wrong-rate", type=float, default=defaults.wrong_rate, help="synthetic: share of facts taught wrong")
    args = parser.parse_args(argv)
    facts, by_source = (args.facts, None) if isinstance(args.facts, int) else (defaults.facts, args.facts)
    params = PlantedParams(args.seed, args.flat, facts, args.copies, 1, args.transfer, args.wrong_rate, by_source)
    largest = max(params.facts_of(s) for s in SOURCES) * params.copies  # the rows of the largest source
    params = replace(params, budget=largest if args.budget is None else args.budget)
    planted = write(args.out, params)
    ranking = sorted(planted["expected"], key=lambda c: -planted["expected"][c])
    print(f"{args.out}: {planted['metric']} planted; ranking {' > '.join(ranking)}; optimum {planted['optimum']}")


if __name__ == "__main__":
    main()
