"""`evaluate` metric module: ROUGE-1/2/L F-measures from rouge_score, averaged over items.

rouge_score's default tokenizer keeps only [a-z0-9] and would cut French words at every accent
("médecin" -> "m", "decin"), so words are taken as runs of Unicode letters and digits, lower-cased.
"""

import re

import evaluate
from medinject.eval.metric_info import text_pair_info
from rouge_score import rouge_scorer


class UnicodeWords:
    def tokenize(self, text):
        return re.findall(r"[^\W_]+", text.lower())


class Rouge(evaluate.Metric):
    def _info(self):
        return text_pair_info("Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge_score), 0-1.")

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeWords())
        totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for prediction, reference in zip(predictions, references):
            scores = scorer.score(reference, prediction)
            for name in totals:
                totals[name] += scores[name].fmeasure
        n = max(len(references), 1)
        return {name: total / n for name, total in totals.items()}
