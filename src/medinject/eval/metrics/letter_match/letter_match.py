"""`evaluate` metric module: exact match and Hamming score of option-letter answers ("A, C")."""

import evaluate
from medinject.eval.letters import exact_match
from medinject.eval.letters import hamming_score
from medinject.eval.metric_info import text_pair_info

_DESCRIPTION = """Exact match (same set of letters) and Hamming score (|gold ∩ pred| / |gold ∪ pred|),
averaged over items. Predictions and references are letters joined by ", "; an empty prediction is wrong."""

_INPUTS = """predictions: list of str, references: list of str (e.g. "A, C")."""


class LetterMatch(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _INPUTS)

    def _compute(self, predictions, references):
        n = max(len(references), 1)
        return {
            "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
            "hamming": sum(hamming_score(p, r) for p, r in zip(predictions, references)) / n,
        }
