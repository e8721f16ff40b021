"""Evaluate a fine-tuned model on every configured test set and task, the same way for every run.

Multiple-choice items (mcqu, mcq) are answered by greedy batched generation; the letters are read
with the rule in `medinject.eval.letters` and scored by the `letter_match` evaluate module shipped in
this package. Every item's prompt output, parsed letters and score go to `predictions.jsonl`.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from medinject.config import TaskType
from medinject.data.prompts import prompt_text
from medinject.data.rows import Example
from medinject.errors import UserError
from medinject.eval.letters import exact_match, hamming_score, join_letters, parse_letters

log = logging.getLogger(__name__)

SUPPORTED_TASKS = (TaskType.mcqu, TaskType.mcq)


def metric_module(name: str) -> str:
    return str(files("medinject") / "eval" / "metrics" / name)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, desc: str) -> list[str]:
    """Greedy generation in left-padded batches of similar length; outputs in the order of `prompts`."""
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, leave=False):
        encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        generated = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(batch, texts):
            outputs[i] = text
    return outputs


def eval_items(cfg: DictConfig, test_rows: dict[str, list[Example]]) -> dict[str, dict[str, list[Example]]]:
    """items[test set][task]: the rows each evaluation will see (at most `eval.limit` per task)."""
    unsupported = [t.value for t in cfg.eval.tasks if t not in SUPPORTED_TASKS]
    if unsupported:
        raise UserError(f"eval.tasks: {', '.join(unsupported)} not evaluated yet (supported: mcqu, mcq)")
    items: dict[str, dict[str, list[Example]]] = {}
    for set_name, rows in test_rows.items():
        items[set_name] = {}
        for task in cfg.eval.tasks:
            chosen = [r for r in rows if r.type == task.value][: cfg.eval.limit]
            if not chosen:
                raise UserError(f"eval.test_sets.{set_name}: no {task.value} item")
            items[set_name][task.value] = chosen
    return items


def evaluate_model(model, tokenizer, cfg: DictConfig, test_items: dict[str, dict[str, list[Example]]]) -> tuple[dict[str, float], list[dict]]:
    """Returns (metrics named eval/<test set>/<task>/<metric>, one prediction record per item)."""
    import evaluate

    letter_match = evaluate.load(metric_module("letter_match"), keep_in_memory=True)
    system, hints = cfg.prompt.system, dict(cfg.prompt.task_hints)

    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    records: list[dict] = []
    for set_name, by_task in test_items.items():
        for task_name, items in by_task.items():
            prompts = [prompt_text(tokenizer, item, system, hints) for item in items]
            outputs = generate(model, tokenizer, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens, f"eval {set_name}/{task_name}")
            predictions = [join_letters(parse_letters(out, item.options)) for out, item in zip(outputs, items)]
            references = [item.answer for item in items]
            scores = letter_match.compute(predictions=predictions, references=references)
            prefix = f"eval/{set_name}/{task_name}"
            metrics[f"{prefix}/em"] = float(scores["exact_match"])
            if task_name == TaskType.mcq.value:
                metrics[f"{prefix}/hamming"] = float(scores["hamming"])
            metrics[f"{prefix}/n"] = float(len(items))
            log.info("%s: em=%.3f over %d items", prefix, metrics[f"{prefix}/em"], len(items))
            for item, out, pred in zip(items, outputs, predictions):
                records.append(
                    {
                        "test_set": set_name,
                        "task": task_name,
                        "id": item.id,
                        "source": f"{Path(item.file).name}:{item.line}",
                        "reference": item.answer,
                        "output": out,
                        "prediction": pred,
                        "em": exact_match(pred, item.answer),
                        "hamming": hamming_score(pred, item.answer),
                    }
                )
    model.train(was_training)
    return metrics, records
