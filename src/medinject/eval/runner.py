"""Evaluate a fine-tuned model on every configured test set and task, the same way for every run.

Multiple choice (mcqu, mcq): two decodings in left-padded batches with the KV cache, greedy and
constrained (only the item's option letters, separators and end-of-sequence may be generated); the
letters are read with the rule in `medinject.eval.letters`, and the probability of each option at
the first answer step is kept. Open answers (oeq): greedy generation, BLEU, ROUGE, BERTScore, the
judge when one is configured, answer-length statistics and a length-controlled judge score.
Every metric goes through an `evaluate` module shipped in this package (`eval/metrics/`).

Metric names: eval/<test set>/<task>/<metric>[_constrained].
"""

from __future__ import annotations

import logging
import statistics
from importlib.resources import files
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from medinject.config import JudgeBackend, TaskType
from medinject.data.prompts import prompt_text
from medinject.data.rows import Example
from medinject.errors import UserError
from medinject.eval.letters import exact_match, hamming_score, join_letters, parse_letters

log = logging.getLogger(__name__)

SEPARATORS = (",", " ", ", ")


def metric_module(name: str) -> str:
    return str(files("medinject") / "eval" / "metrics" / name)


def _load_metric(name: str):
    import evaluate

    return evaluate.load(metric_module(name), keep_in_memory=True)


class AllowedTokens(LogitsProcessor):
    """Every token outside each row's allowed set gets -inf: the row can only produce those tokens.

    A small grammar keeps the answer readable by the letter rule: the first step allows only `first`
    (the option letters), so an answer is never empty, and a letter is always followed by a separator
    or the end, never by another letter ("AAAA" would be a run of letters the rule cannot read)."""

    def __init__(self, allowed: list[list[int]], first: list[list[int]]):
        self.first = [sorted(set(ids)) for ids in first]
        self.allowed = allowed
        self.after_letter = [sorted(set(a) - set(f)) for a, f in zip(allowed, first)]
        self.steps = 0

    def mask(self, last: list[int] | None, vocab_size: int, device) -> torch.Tensor:
        """(rows, vocab) booleans, True where a token is forbidden; `last`: each row's previous token,
        None at the first step."""
        mask = torch.ones(len(self.first), vocab_size, dtype=torch.bool, device=device)
        for row, first in enumerate(self.first):
            if last is None:
                ids = first
            elif last[row] in first:
                ids = self.after_letter[row]
            else:
                ids = self.allowed[row]
            mask[row, ids] = False
        return mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = self.mask(None if self.steps == 0 else input_ids[:, -1].tolist(), scores.shape[-1], scores.device)
        self.steps += 1
        return scores.masked_fill(mask, float("-inf"))


def single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def option_token_ids(tokenizer, options: tuple[str, ...]) -> list[int]:
    ids = [single_token(tokenizer, letter) for letter in options]
    if None in ids:
        raise UserError(f"eval.constrained: option letter {options[ids.index(None)]!r} is not a single token of this tokenizer")
    return ids


def _encoded_batches(tokenizer, prompts: list[str], batch_size: int, device, desc: str):
    """(prompt indices, left-padded encoding) per batch; prompts of similar length batched together."""
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        batch = order[start : start + batch_size]
        yield batch, tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    desc: str,
    allowed: list[list[int]] | None = None,
    first: list[list[int]] | None = None,
) -> list[str] | tuple[list[str], list[list[float]]]:
    """Greedy generation in left-padded batches of similar length, outputs in the order of `prompts`.

    With `allowed` (token ids per prompt; `first` for the first step), decoding is constrained to
    them, and each prompt's raw first-step logits are returned as well."""
    outputs: list[str] = [""] * len(prompts)
    first_step: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    for batch, encoded in _encoded_batches(tokenizer, prompts, batch_size, device, desc):
        extra = {}
        if allowed is not None:
            extra = {
                "logits_processor": LogitsProcessorList([AllowedTokens([allowed[i] for i in batch], [first[i] for i in batch])]),
                "output_logits": True,
                "return_dict_in_generate": True,
            }
        generated = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **extra,
        )
        sequences = generated.sequences if allowed is not None else generated
        texts = tokenizer.batch_decode(sequences[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        for row, (i, text) in enumerate(zip(batch, texts)):
            outputs[i] = text
            if allowed is not None:
                first_step[i] = generated.logits[0][row].float().tolist()
    return (outputs, first_step) if allowed is not None else outputs


@torch.no_grad()
def decode_choices(
    model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, allowed: list[list[int]], first: list[list[int]], desc: str
) -> tuple[list[str], list[str], list[list[float]]]:
    """Greedy and constrained decodings of every prompt from one shared prefill.

    Each batch's prompts are encoded once (the costly part: prompts are long, answers a few tokens);
    the KV cache is then duplicated so that row 2i continues greedily and row 2i+1 under the
    constraint, both in the same forward passes. Positions follow left padding the way
    `generate` computes them, so the outputs equal two separate `generate` calls (checked in tests).
    Returns (greedy texts, constrained texts, raw first-step logits), in the order of `prompts`."""
    greedy_out, constrained_out = [""] * len(prompts), [""] * len(prompts)
    first_logits: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for batch, encoded in _encoded_batches(tokenizer, prompts, batch_size, device, desc):
        attention = encoded["attention_mask"]
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)
        out = model(input_ids=encoded["input_ids"], attention_mask=attention, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        for row, i in enumerate(batch):
            first_logits[i] = logits[row].tolist()
        cache.batch_repeat_interleave(2)
        attention = attention.repeat_interleave(2, dim=0)
        logits = logits.repeat_interleave(2, dim=0)
        constrained_rows = torch.arange(logits.shape[0], device=device) % 2 == 1
        grammar = AllowedTokens([allowed[i] for i in batch], [first[i] for i in batch])
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
        steps = []
        for step in range(max_new_tokens):
            mask = grammar.mask(steps[-1][constrained_rows].tolist() if steps else None, logits.shape[-1], device)
            scores = logits.clone()
            scores[constrained_rows] = scores[constrained_rows].masked_fill(mask, float("-inf"))
            chosen = scores.argmax(dim=-1).masked_fill(finished, pad)
            steps.append(chosen)
            finished |= chosen == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            out = model(
                input_ids=chosen[:, None], attention_mask=attention, position_ids=attention.sum(-1, keepdim=True) - 1,
                past_key_values=cache, use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1].float()
        texts = tokenizer.batch_decode(torch.stack(steps, dim=1), skip_special_tokens=True)
        for row, i in enumerate(batch):
            greedy_out[i], constrained_out[i] = texts[2 * row], texts[2 * row + 1]
    return greedy_out, constrained_out, first_logits


def eval_items(cfg: DictConfig, test_rows: dict[str, list[Example]]) -> dict[str, dict[str, list[Example]]]:
    """items[test set][task]: the rows each evaluation will see (at most `eval.limit` per task)."""
    items: dict[str, dict[str, list[Example]]] = {}
    for set_name, rows in test_rows.items():
        items[set_name] = {}
        for task in cfg.eval.tasks:
            chosen = [r for r in rows if r.type == task.value][: cfg.eval.limit]
            if not chosen:
                raise UserError(f"eval.test_sets.{set_name}: no {task.value} item")
            items[set_name][task.value] = chosen
    return items


def _words(text: str) -> int:
    return len(text.split())


def length_controlled(lengths: list[int], verdicts: list[int | None], bins: int) -> float | None:
    """Judge accuracy averaged over answer-length quantile bins (each bin weighs the same), so a
    judge that rewards long answers cannot lift a model that answers at length."""
    scored = sorted((n, v) for n, v in zip(lengths, verdicts) if v is not None)
    if not scored:
        return None
    bins = max(1, min(bins, len(scored)))
    means = []
    for b in range(bins):
        chunk = scored[b * len(scored) // bins : (b + 1) * len(scored) // bins]
        if chunk:
            means.append(sum(v for _, v in chunk) / len(chunk))
    return sum(means) / len(means)


class Evaluator:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.letter_match = _load_metric("letter_match")
        open_answers = TaskType.oeq in cfg.eval.tasks
        self.bleu, self.rouge = (_load_metric("bleu"), _load_metric("rouge")) if open_answers else (None, None)
        self.bertscore = _load_metric("bertscore") if open_answers and cfg.eval.bertscore_model else None
        self.judge = None
        if cfg.eval.judge.backend != JudgeBackend.none and TaskType.oeq in cfg.eval.tasks:
            from medinject.eval.judge import Judge

            self.judge = Judge(cfg.eval.judge, cfg.paths.cache_dir)

    def _multiple_choice(self, model, tokenizer, set_name: str, task: str, items: list[Example], prompts: list[str]):
        ev = self.cfg.eval
        metrics, records = {}, []
        probabilities: list[dict[str, float]] = [{} for _ in items]
        desc = f"eval {set_name}/{task}"
        if ev.constrained:
            separators = [t for t in (single_token(tokenizer, s) for s in SEPARATORS) if t is not None]
            letters = [option_token_ids(tokenizer, item.options) for item in items]
            allowed = [ids + separators + [tokenizer.eos_token_id] for ids in letters]
            if ev.batch_size > 1:
                greedy, constrained, first = decode_choices(model, tokenizer, prompts, ev.batch_size, ev.max_new_tokens, allowed, letters, desc)
            else:  # one greedy and one constrained generate call per item: the simple script's way
                greedy = generate(model, tokenizer, prompts, 1, ev.max_new_tokens, desc)
                constrained, first = generate(model, tokenizer, prompts, 1, ev.max_new_tokens, desc, allowed, letters)
            decodings = {"": greedy, "_constrained": constrained}
            for i, item in enumerate(items):
                logits = torch.tensor([first[i][t] for t in letters[i]])
                probabilities[i] = dict(zip(item.options, torch.softmax(logits, dim=0).tolist()))
        else:
            decodings = {"": generate(model, tokenizer, prompts, ev.batch_size, ev.max_new_tokens, desc)}
        parsed = {}
        for suffix, outputs in decodings.items():
            predictions = [join_letters(parse_letters(out, item.options)) for out, item in zip(outputs, items)]
            scores = self.letter_match.compute(predictions=predictions, references=[item.answer for item in items])
            metrics[f"em{suffix}"] = scores["exact_match"]
            if task == TaskType.mcq.value:
                metrics[f"hamming{suffix}"] = scores["hamming"]
            parsed[suffix] = predictions
        for i, item in enumerate(items):
            record = {"options": list(item.options), "option_probabilities": probabilities[i]}
            for suffix, outputs in decodings.items():
                pred = parsed[suffix][i]
                record.update(
                    {
                        f"output{suffix}": outputs[i],
                        f"prediction{suffix}": pred,
                        f"em{suffix}": exact_match(pred, item.answer),
                        f"hamming{suffix}": hamming_score(pred, item.answer),
                    }
                )
            records.append(record)
        return metrics, records

    def _open_answers(self, model, tokenizer, set_name: str, items: list[Example], prompts: list[str]):
        ev = self.cfg.eval
        outputs = generate(model, tokenizer, prompts, ev.batch_size, ev.oeq_max_new_tokens, f"eval {set_name}/oeq")
        references = [item.answer for item in items]
        metrics = dict(self.bleu.compute(predictions=outputs, references=references))
        metrics.update(self.rouge.compute(predictions=outputs, references=references))
        if self.bertscore is not None:
            scores = self.bertscore.compute(
                predictions=outputs, references=references, model_path=ev.bertscore_model, layer=ev.bertscore_layer
            )
            metrics["bertscore_f1"] = scores["bertscore_f1"]
        lengths = [_words(o) for o in outputs]
        metrics["answer_words_mean"] = statistics.fmean(lengths)
        metrics["answer_words_median"] = float(statistics.median(lengths))
        metrics["reference_words_mean"] = statistics.fmean(_words(r) for r in references)
        records = [{"output": out, "answer_words": n} for out, n in zip(outputs, lengths)]
        if self.judge is not None:
            judged = self.judge.verdicts([(f"{item.instruction}\n{item.context}".strip(), item.answer, out) for item, out in zip(items, outputs)])
            verdicts = [v for v, _ in judged]
            readable = [v for v in verdicts if v is not None]
            metrics["judge"] = sum(readable) / len(readable) if readable else float("nan")
            lc = length_controlled(lengths, verdicts, ev.length_bins)
            metrics["judge_length_controlled"] = lc if lc is not None else float("nan")
            metrics["judge_unparsable"] = float(len(verdicts) - len(readable))
            for record, (verdict, raw) in zip(records, judged):
                record.update({"judge": verdict, "judge_output": raw})
        return {k: float(v) for k, v in metrics.items()}, records

    def run(self, model, tokenizer, test_items: dict[str, dict[str, list[Example]]]) -> tuple[dict[str, float], list[dict]]:
        """(metrics named eval/<test set>/<task>/<metric>[_constrained], one prediction record per item)."""
        system, hints = self.cfg.prompt.system, dict(self.cfg.prompt.task_hints)
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        records: list[dict] = []
        for set_name, by_task in test_items.items():
            for task, items in by_task.items():
                prompts = [prompt_text(tokenizer, item, system, hints) for item in items]
                if task == TaskType.oeq.value:
                    task_metrics, task_records = self._open_answers(model, tokenizer, set_name, items, prompts)
                else:
                    task_metrics, task_records = self._multiple_choice(model, tokenizer, set_name, task, items, prompts)
                task_metrics["n"] = float(len(items))
                for name, value in task_metrics.items():
                    metrics[f"eval/{set_name}/{task}/{name}"] = value
                log.info("eval/%s/%s: %s", set_name, task, ", ".join(f"{k}={v:.3f}" for k, v in task_metrics.items()))
                for item, prompt, record in zip(items, prompts, task_records):
                    records.append(
                        {
                            "test_set": set_name,
                            "task": task,
                            "id": item.id,
                            "source": f"{Path(item.file).name}:{item.line}",
                            "question": f"{item.instruction}\n\n{item.context}".strip(),
                            "prompt": prompt,
                            "reference": item.answer,
                            **record,
                        }
                    )
        model.train(was_training)
        return metrics, records


def evaluate_model(model, tokenizer, cfg: DictConfig, test_items) -> tuple[dict[str, float], list[dict]]:
    return Evaluator(cfg).run(model, tokenizer, test_items)
