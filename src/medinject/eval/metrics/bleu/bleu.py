"""`evaluate` metric module: corpus BLEU from sacrebleu (default 13a tokenization, one reference per item)."""

import datasets
import evaluate
import sacrebleu


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus-level BLEU (sacrebleu.corpus_bleu), 0-100.",
            citation="",
            inputs_description="predictions: list of str, references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(references)]).score}
