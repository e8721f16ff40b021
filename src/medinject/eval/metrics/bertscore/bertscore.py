"""`evaluate` metric module: BERTScore F1 with any local or hub encoder (`model_path`).

Each text is encoded; every token of the prediction is matched to its most similar reference token
(cosine of the hidden states of `layer`) and the other way round; precision and recall are the mean
best similarities, F1 their harmonic mean. Special tokens are left out. No idf weighting, no
baseline rescaling (scores are comparable between runs that use the same encoder and layer).
"""

import evaluate
import torch
from transformers import AutoModel
from transformers import AutoTokenizer
from medinject.eval.metric_info import text_pair_info


class BertScore(evaluate.Metric):
    def _info(self):
        return text_pair_info(
            "Mean BERTScore precision, recall and F1 (greedy cosine matching of token states).",
            "predictions, references: lists of str; model_path: encoder; layer: hidden layer index; device: where the encoder runs",
        )

    @torch.no_grad()
    def _embed(self, texts, tokenizer, model, layer, batch_size):
        states = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True, return_special_tokens_mask=True).to(model.device)
            special = batch.pop("special_tokens_mask").bool()
            hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1)
            keep = batch["attention_mask"].bool() & ~special
            states.extend(hidden[i][keep[i]] for i in range(hidden.shape[0]))
        return states

    def _compute(self, predictions, references, model_path=None, layer=-1, batch_size=16, device="cpu"):
        if not model_path:
            raise ValueError("bertscore needs model_path (a local folder or hub id of an encoder)")
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModel.from_pretrained(model_path).eval().to(device)
        preds = self._embed(list(predictions), tokenizer, model, layer, batch_size)
        refs = self._embed(list(references), tokenizer, model, layer, batch_size)
        precision = recall = f1 = 0.0
        for p, r in zip(preds, refs):
            if len(p) == 0 or len(r) == 0:
                continue
            similarity = p @ r.T
            item_p = similarity.max(dim=1).values.mean().item()
            item_r = similarity.max(dim=0).values.mean().item()
            precision += item_p
            recall += item_r
            f1 += 2 * item_p * item_r / (item_p + item_r) if item_p + item_r > 0 else 0.0
        n = max(len(references), 1)
        return {"bertscore_precision": precision / n, "bertscore_recall": recall / n, "bertscore_f1": f1 / n}
