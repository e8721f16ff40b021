"""`evaluate` metric module: corpus BLEU from sacrebleu (default 13a tokenization, one reference per item)."""

import evaluate
import sacrebleu
from medinject.eval.metric_info import text_pair_info


class Bleu(evaluate.Metric):
    def _info(self):
        return text_pair_info("Corpus-level BLEU (sacrebleu.corpus_bleu), 0-100.")

    def _compute(self, predictions, references):
        return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(references)]).score}
