"""Evaluate a fine-tuned model on every configured test set and task, the same way for every run.

Under the run's protocol (`eval.protocol`, `medinject.eval.protocol`; README "Evaluation"): multiple
choice (mcqu, mcq) is decoded twice, greedy and constrained to the protocol's allowed tokens; letters
are read with the protocol's rule; EM is set equality, Hamming is reported for mcq only; the
probability of each option at the first answer step is kept (softmax over the option letters'
tokens) and `em_loglik` scores its argmax on mcqu items (no extra model call). Open answers (oeq):
greedy generation, BLEU, ROUGE, METEOR, BERTScore, the judge when one is configured, answer-length
statistics and a length-controlled judge score. Prompts and new tokens follow the protocol too.
Every metric goes through an `evaluate` module shipped in this package (`eval/metrics/`).

Generation backend (`eval.backend`): an engine of `medinject.eval.backends` (`medinject.eval.engine`),
given the same prompts, limits and allowed tokens whichever it is.

Metric names: eval/<test set>/<task>/<metric>[_constrained].
"""

from __future__ import annotations

import logging
import statistics
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple

import torch

from medinject.config import EvalSettings, JudgeBackend, TaskType
from medinject.data.prompts import question_text
from medinject.data.rows import Example
from medinject.eval.backends import engine_class, generation_backend, in_process_engine
from medinject.eval.decoding import option_token_ids
from medinject.eval.engine import Engine
from medinject.eval.letters import exact_match, hamming_score
from medinject.eval.protocol import Protocol
from medinject.eval.protocols import protocol_for
from medinject.util.errors import UserError

log = logging.getLogger(__name__)


def metric_module(name: str) -> str:
    return str(files("medinject") / "eval" / "metrics" / name)


def _load_metric(name: str):
    import evaluate

    return evaluate.load(metric_module(name), keep_in_memory=True)


def eval_items(cfg: EvalSettings, test_rows: dict[str, list[Example]]) -> dict[str, dict[str, list[Example]]]:
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


def check_evaluation(cfg: EvalSettings) -> None:
    """What the evaluation needs besides the model, checked before a run trains: the generation
    backend (vLLM importable and accepting the letter constraint and the model's quantization),
    WordNet for METEOR, a reachable judge endpoint. Each refusal is one line naming the key."""
    backend, reason = generation_backend(cfg)
    if reason:
        log.warning("%s", reason)
    engine_class(backend).check(cfg)
    open_answers = TaskType.oeq in cfg.eval.tasks
    if open_answers and cfg.eval.meteor:
        if (problem := _load_metric("meteor").missing_wordnet(cfg.paths.wordnet)) is not None:
            raise UserError(f"{problem}; or eval.meteor=false")
    if open_answers and cfg.eval.judge.backend == JudgeBackend.openai:
        from medinject.eval.judge_transport import check_endpoint

        check_endpoint(cfg.eval.judge)


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


def evaluation_record(cfg: EvalSettings) -> dict:
    """How a run was evaluated, for the run record: the backend that really generated, the protocol and
    the judge's rubric."""
    judge = cfg.eval.judge
    backend, reason = generation_backend(cfg)
    return {
        "backend": backend.value,
        "backend_note": reason,
        "protocol": cfg.eval.protocol.value,
        "judge": {"backend": judge.backend.value, "model": judge.model, "rubric": judge.rubric.value}
        if judge.backend != JudgeBackend.none
        else None,
    }


class Evaluator:
    """Every configured test set and task, on `device`: where the model is (the run's training
    device); the judge and BERTScore's encoder run there too unless their own setting says otherwise."""

    def __init__(self, cfg: EvalSettings, device: str = "cpu", engine: Engine | None = None):
        self.cfg = cfg
        self.device = str(device)
        self.engine = engine  # None: transformers over the model `generate` is given (backends.in_process_engine)
        self.protocol: Protocol = protocol_for(cfg.eval.protocol)
        self.letter_match = _load_metric("letter_match")
        open_answers = TaskType.oeq in cfg.eval.tasks
        self.bleu, self.rouge = (_load_metric("bleu"), _load_metric("rouge")) if open_answers else (None, None)
        self.meteor = _load_metric("meteor") if open_answers and cfg.eval.meteor else None
        self.bertscore = _load_metric("bertscore") if open_answers and cfg.eval.bertscore_model else None
        self.judge = None
        if cfg.eval.judge.backend != JudgeBackend.none and TaskType.oeq in cfg.eval.tasks:
            from medinject.eval.judge import Judge

            self.judge = Judge(cfg.eval.judge, cfg.paths.cache_dir, device=cfg.eval.judge.device or self.device)

    def _multiple_choice(self, engine: Engine, tokenizer, set_name: str, task: str, items: list[Example], prompts: list[str]):
        ev, protocol = self.cfg.eval, self.protocol
        metrics, records = {}, []
        probabilities: list[dict[str, float]] = [{} for _ in items]
        desc = f"eval {set_name}/{task}"
        limits = [protocol.new_tokens(task, len(item.options), ev) for item in items]
        if ev.constrained:
            constraint = protocol.allowed_tokens(tokenizer, [item.options for item in items])
            letters = [option_token_ids(tokenizer, item.options) for item in items]
            greedy, constrained, first = engine.decode_choices(prompts, limits, constraint, letters, desc)
            decodings = {"": greedy, "_constrained": constrained}
            for i, item in enumerate(items):
                logits = torch.tensor([first[i][t] for t in letters[i]])
                probabilities[i] = dict(zip(item.options, torch.softmax(logits, dim=0).tolist()))
        else:
            decodings = {"": engine.generate(prompts, limits, desc)}
        parsed = {}
        references = [item.answer for item in items]
        for suffix, outputs in decodings.items():
            predictions = [protocol.read_letters(out, item) for out, item in zip(outputs, items)]
            scores = self.letter_match.compute(predictions=predictions, references=references)
            metrics[f"em{suffix}"] = scores["exact_match"]
            if task == TaskType.mcq.value:
                metrics[f"hamming{suffix}"] = scores["hamming"]
            parsed[suffix] = predictions
        loglik = None
        if ev.constrained and task == TaskType.mcqu.value:
            # the option with the highest first-step probability, as lm-evaluation-harness scores letter choices
            loglik = [max(p, key=p.get) for p in probabilities]
            metrics["em_loglik"] = self.letter_match.compute(predictions=loglik, references=references)["exact_match"]
        for i, item in enumerate(items):
            record = {"options": list(item.options), "option_probabilities": probabilities[i]}
            for suffix, outputs in decodings.items():
                pred = parsed[suffix][i]
                record.update({f"output{suffix}": outputs[i], f"prediction{suffix}": pred, f"em{suffix}": exact_match(pred, item.answer)})
                if task == TaskType.mcq.value:
                    record[f"hamming{suffix}"] = hamming_score(pred, item.answer)
            if loglik is not None:
                record.update({"prediction_loglik": loglik[i], "em_loglik": exact_match(loglik[i], item.answer)})
            records.append(record)
        return metrics, records

    def _open_outputs(self, engine: Engine, set_name: str, prompts: list[str]) -> list[str]:
        limit = self.protocol.new_tokens(TaskType.oeq.value, 0, self.cfg.eval)
        return engine.generate(prompts, limit, f"eval {set_name}/oeq")

    def _open_answers(self, items: list[Example], outputs: list[str]):
        ev = self.cfg.eval
        references = [item.answer for item in items]
        metrics = dict(self.bleu.compute(predictions=outputs, references=references))
        metrics.update(self.rouge.compute(predictions=outputs, references=references))
        if self.meteor is not None:
            try:
                metrics.update(self.meteor.compute(predictions=outputs, references=references, wordnet=self.cfg.paths.wordnet, cache_dir=self.cfg.paths.cache_dir))
            except FileNotFoundError as err:  # WordNet missing: the module's one line says what to install
                raise UserError(str(err)) from None
        if self.bertscore is not None:
            scores = self.bertscore.compute(
                predictions=outputs, references=references, model_path=ev.bertscore_model, layer=ev.bertscore_layer, device=self.device
            )
            metrics["bertscore_f1"] = scores["bertscore_f1"]
        lengths = [_words(o) for o in outputs]
        metrics["answer_words_mean"] = statistics.fmean(lengths)
        metrics["answer_words_median"] = float(statistics.median(lengths))
        metrics["reference_words_mean"] = statistics.fmean(_words(r) for r in references)
        records = [{"output": out, "answer_words": n} for out, n in zip(outputs, lengths)]
        if self.judge is not None:
            judged = self.judge.verdicts([(question_text(item), item.answer, out) for item, out in zip(items, outputs)])
            verdicts = [v for v, _ in judged]
            readable = [v for v in verdicts if v is not None]
            metrics["judge"] = sum(readable) / len(readable) if readable else float("nan")
            lc = length_controlled(lengths, verdicts, ev.length_bins)
            metrics["judge_length_controlled"] = lc if lc is not None else float("nan")
            metrics["judge_unparsable"] = float(len(verdicts) - len(readable))
            for record, (verdict, raw) in zip(records, judged):
                record.update({"judge": verdict, "judge_output": raw})
        return {k: float(v) for k, v in metrics.items()}, records

    def _fitting(self, model, tokenizer, task: str, items: list[Example], prompts: list[str]):
        """The items whose prompt and answer fit the model's context, and how many did not: a test
        item longer than the model can read is left out and counted (`skipped_too_long`), never cut
        (a cut prompt asks another question) and never a crash in the middle of evaluation."""
        room = context_length(model, tokenizer)
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        keep = [i for i, (item, n) in enumerate(zip(items, lengths)) if n + self.protocol.new_tokens(task, len(item.options), self.cfg.eval) <= room]
        return [items[i] for i in keep], [prompts[i] for i in keep], len(items) - len(keep)

    def generate(self, model, tokenizer, test_items: dict[str, dict[str, list[Example]]], engine: Engine | None = None) -> list[dict]:
        """Every answer the model gives (the first phase, the only one that needs the model or the
        engine). Multiple choice is scored here too, as it needs nothing else; open answers wait for
        `score`. `engine`: this call's (else the evaluator's, else transformers over `model`)."""
        engine = engine or self.engine or in_process_engine(model, tokenizer, self.cfg)
        was_training = model.training
        model.eval()
        tasks = []
        for set_name, by_task in test_items.items():
            for task, items in by_task.items():
                prompts = self.protocol.prompts(tokenizer, items, self.cfg.prompt)
                items, prompts, too_long = self._fitting(model, tokenizer, task, items, prompts)
                if too_long:
                    log.warning("eval/%s/%s: %d item(s) left out: prompt and answer exceed the model's %d tokens",
                                set_name, task, too_long, context_length(model, tokenizer))
                entry = {"set": set_name, "task": task, "items": items, "prompts": prompts, "too_long": too_long,
                         "metrics": {}, "records": [], "outputs": None}
                if items and task == TaskType.oeq.value:
                    entry["outputs"] = self._open_outputs(engine, set_name, prompts)
                elif items:
                    entry["metrics"], entry["records"] = self._multiple_choice(engine, tokenizer, set_name, task, items, prompts)
                tasks.append(entry)
        model.train(was_training)
        return tasks

    def score(self, tasks: list[dict]) -> tuple[dict[str, float], list[dict]]:
        """(metrics named eval/<test set>/<task>/<metric>[_constrained], one prediction record per
        item) from what `generate` gave: the open answers' metrics, BERTScore and the judge run here."""
        metrics: dict[str, float] = {}
        records: list[dict] = []
        for entry in tasks:
            set_name, task, items = entry["set"], entry["task"], entry["items"]
            task_metrics, task_records = entry["metrics"], entry["records"]
            if entry["outputs"] is not None:
                task_metrics, task_records = self._open_answers(items, entry["outputs"])
            task_metrics["n"] = float(len(items))
            task_metrics["skipped_too_long"] = float(entry["too_long"])
            for name, value in task_metrics.items():
                metrics[f"eval/{set_name}/{task}/{name}"] = value
            log.info("eval/%s/%s: %s", set_name, task, ", ".join(f"{k}={v:.3f}" for k, v in task_metrics.items()))
            for item, prompt, record in zip(items, entry["prompts"], task_records):
                records.append(
                    {
                        "test_set": set_name,
                        "task": task,
                        "id": item.id,
                        "source": f"{Path(item.file).name}:{item.line}",
                        "question": question_text(item),
                        "prompt": prompt,
                        "reference": item.answer,
                        **record,
                    }
                )
        return metrics, records

    def run(self, model, tokenizer, test_items: dict[str, dict[str, list[Example]]]) -> tuple[dict[str, float], list[dict]]:
        """Both phases, with this evaluator's engine (if any) left open."""
        return self.score(self.generate(model, tokenizer, test_items))


class Evaluation(NamedTuple):
    metrics: dict[str, float]  # eval/<test set>/<task>/<metric>[_constrained]
    predictions: list[dict]  # one record per item, the rows of the run's predictions file


def evaluate_model(model, tokenizer, cfg: EvalSettings, test_items) -> Evaluation:
    """The evaluation stage, reading only `cfg`'s parts (a run passes `EvalSettings.of(cfg)`; a whole
    run config has the same parts). Evaluate where the model is: a run moves it to its training device (or `eval.device`) first.
    The engine of the backend that really generates (`backends.generation_backend`) gives every answer
    and is closed before anything else loads: after a vLLM engine has returned its GPU memory,
    BERTScore's encoder and a local judge have the card to themselves (one phase on the GPU at a time)."""
    evaluator = Evaluator(cfg, device=model_device(model))
    backend, _ = generation_backend(cfg)
    engine_type = engine_class(backend)
    engine_type.check(cfg)
    with engine_type.for_run(model, tokenizer, cfg) as engine:
        generated = evaluator.generate(model, tokenizer, test_items, engine)
    return Evaluation(*evaluator.score(generated))


def context_length(model, tokenizer) -> int:
    """Tokens the model reads at most: its position embeddings, or the tokenizer's limit if lower."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None) or tokenizer.model_max_length
    return min(positions, tokenizer.model_max_length)


def model_device(model) -> str:
    """The device of the model's first parameter ("cuda:0", "cpu"), as the run record records it."""
    return str(next(model.parameters()).device)
