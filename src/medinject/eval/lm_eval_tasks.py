"""medinject's test sets as lm-evaluation-harness tasks: `python -m medinject.eval.lm_eval_tasks OUT [key=value ...]`.

The config is composed as train.py composes it (the overrides choose the model, whose chat template
renders the prompts, and the test sets, `eval.limit` included). OUT receives, for each test set:

* `medinject_<protocol>_<set>_<task>_loglik` for mcqu and mcq under both protocols (strict and
  lenient): lm-eval's `multiple_choice` over the option letters, the context being medinject's exact
  prompt string for that protocol (chat template and generation prompt applied) and
  `target_delimiter: ""`, so each choice is scored as the letter right after the prompt. lm-eval moves
  the prompt's trailing newline into every continuation (`api/model.py`, `_encode_pair`), which adds
  the same term to every option: the argmax is medinject's `em_loglik` (mcqu). For mcq the gold is the
  set of correct letters and lm-eval's `acc` counts the argmax as right when it is one of them.
* `medinject_strict_<set>_<task>_generate`: the strict (released) protocol's greedy generation and
  letter reading as far as lm-eval expresses them: `generate_until` (stop at EOS; the protocol's
  largest new-token budget among the task's items), a `custom` filter that reads the letters with
  the strict rule, and `process_results` scoring EM (and Hamming for mcq).
* `data/*.jsonl` (the items with their rendered prompts), `utils.py` (the filter and scoring, which
  import medinject's own letter rule) and a README.md on what cannot be expressed and how to run it.

Every task carries the tag `medinject`, so `--tasks medinject` runs them all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import DictConfig, open_dict

from medinject.config import TaskType
from medinject.util.cli import tool
from medinject.util.errors import UserError
from medinject.util.io import check_writable, write_text_atomic

TAG = "medinject"
CHOICE_TASKS = (TaskType.mcqu.value, TaskType.mcq.value)

UTILS = '''"""Scoring for the generate tasks written by `python -m medinject.eval.lm_eval_tasks` (needs medinject installed)."""

from medinject.eval.letters import exact_match, hamming_score, join_letters, parse_letters_released


def strict_letters(resps, docs):
    """lm-eval `custom` filter: each generation read with the released strict letter rule ("A, C", or "" when unreadable)."""
    return [[join_letters(parse_letters_released(text, tuple(doc["options"]), single=doc["single"])) for text in generations]
            for generations, doc in zip(resps, docs)]


def process_results(doc, results):
    prediction = results[0]
    scores = {"em": float(exact_match(prediction, doc["answer"]))}
    if not doc["single"]:
        scores["hamming"] = float(hamming_score(prediction, doc["answer"]))
    return scores
'''

README = """# medinject test sets as lm-evaluation-harness tasks

Written by `python -m medinject.eval.lm_eval_tasks` for the model `{model}` (its chat template renders
every prompt: regenerate the folder for another model, or after moving it, since the data paths in the
yaml files are absolute). Tasks (all tagged `medinject`):

{tasks}

## Running them

```bash
lm_eval --model hf --model_args pretrained={model} --include_path {out} --tasks medinject
```

A 4-bit model (QLoRA / QDoRA runs): lm-eval's `hf` loader (0.4.13) quantizes only what the checkpoint's
own config.json says; `--model_args pretrained=...` alone loads the base model unquantized, so its
numbers are not those of the model medinject evaluated, and a `quantization_config` or `load_in_4bit`
in the model arguments is refused with a TypeError (lm-eval passes its own `quantization_config`;
transformers 5 no longer takes `load_in_4bit`). Build the model yourself and hand the object to `HFLM`:

```python
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

tokenizer = AutoTokenizer.from_pretrained("{model}")
quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
model = AutoModelForCausalLM.from_pretrained("{model}", quantization_config=quantization)
model = PeftModel.from_pretrained(model, "<run dir>/adapter")  # a fine-tuned run; leave out for the base model
results = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer), tasks=["medinject"],
                                  task_manager=TaskManager(include_path="{out}"))
```

## What lm-eval cannot express

- **Per-step constrained decoding.** medinject's constrained decoding (`em_constrained`,
  `hamming_constrained`) restricts every generated token to the option letters, separators and end
  tokens of the item; `generate_until` has no per-step logits processor, so the `_generate` tasks give
  the greedy, unconstrained numbers only (`em`, `hamming`).
- **The per-item token budget.** The strict protocol gives each mcq item its own budget
  (`eval/protocols/strict.py`); `generation_kwargs.max_gen_toks` is one number per task, so an mcq
  task uses the largest of its items'. Items with fewer options may then generate more
  than the released scripts let them; the strict reading usually empties such an answer.
- **The lenient protocol under generation.** Its lenient letter reading and its grammar-constrained
  decoding have no lm-eval counterpart here; its multiple choice is written as log-likelihood tasks.
- **The open answers (oeq)** and the LLM judge are not written.

The log-likelihood tasks agree with medinject's `em_loglik` item by item (tests/test_lm_eval.py: every
mcqu item of both protocols, the option probabilities within 1e-5).
"""


def _task_yaml(name: str, data_file: Path, *, loglik: bool, max_gen_toks: int = 1, eos: str = "", multi: bool = False) -> str:
    lines = [
        f"task: {name}",
        f"tag: [{TAG}]",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        "test_split: test",
        "doc_to_text: prompt",
    ]
    if loglik:
        lines += [
            "output_type: multiple_choice",
            "doc_to_choice: options",
            "doc_to_target: gold",
            'target_delimiter: ""',  # the letter right after the prompt, as medinject reads it
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
        ]
    else:
        lines += [
            "output_type: generate_until",
            "doc_to_target: answer",
            'target_delimiter: ""',
            "generation_kwargs:",
            f"  until: [{json.dumps(eos)}]",
            f"  max_gen_toks: {max_gen_toks}",
            "  do_sample: false",
            "filter_list:",
            "  - name: strict-letters",
            "    filter:",
            "      - function: custom",
            "        filter_fn: !function utils.strict_letters",
            "      - function: take_first",
            "process_results: !function utils.process_results",
            "metric_list:",
            "  - metric: em",
            "    aggregation: mean",
            "    higher_is_better: true",
        ]
        if multi:
            lines += ["  - metric: hamming", "    aggregation: mean", "    higher_is_better: true"]
    lines += ["metadata:", "  version: 1.0"]
    return "\n".join(lines) + "\n"


def write_tasks(cfg: DictConfig, tokenizer, test_items: dict[str, dict[str, list]], out: Path) -> list[str]:
    """Write the task folder; return the task names."""
    from medinject.eval.protocols import PROTOCOLS

    out = Path(out).resolve()
    (out / "data").mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for protocol in sorted((kind() for kind in PROTOCOLS.values()), key=lambda p: not p.lm_eval_generate):
        for set_name, by_task in test_items.items():
            for task in CHOICE_TASKS:
                items = by_task.get(task)
                if not items:
                    continue
                prompts = protocol.prompts(tokenizer, items, cfg.prompt)
                rows = []
                for item, prompt in zip(items, prompts):
                    gold = [item.options.index(letter) for letter in item.answer.replace(" ", "").split(",") if letter]
                    rows.append({"id": item.id, "prompt": prompt, "options": list(item.options), "answer": item.answer,
                                 "single": task == TaskType.mcqu.value, "gold": gold[0] if task == TaskType.mcqu.value else gold})
                data_file = out / "data" / f"{protocol.name.value}_{set_name}_{task}.jsonl"
                write_text_atomic(data_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                name = f"medinject_{protocol.name.value}_{set_name}_{task}_loglik"
                write_text_atomic(out / f"{name}.yaml", _task_yaml(name, data_file, loglik=True))
                names.append(name)
                if protocol.lm_eval_generate:
                    name = f"medinject_{protocol.name.value}_{set_name}_{task}_generate"
                    budget = max(protocol.new_tokens(task, len(item.options), cfg.eval) for item in items)
                    write_text_atomic(out / f"{name}.yaml", _task_yaml(name, data_file, loglik=False, max_gen_toks=budget,
                                                                        eos=tokenizer.eos_token, multi=task == TaskType.mcq.value))
                    names.append(name)
    write_text_atomic(out / "utils.py", UTILS)
    listing = "\n".join(f"- `{name}`" for name in names)
    write_text_atomic(out / "README.md", README.format(model=cfg.model.path, out=out, tasks=listing))
    return names


def _tokenizer(model_cfg: DictConfig):
    """The model's tokenizer alone (its chat template renders the prompts); the tiny model is built first."""
    from transformers import AutoTokenizer

    from medinject.model.tiny import ensure_tiny

    if model_cfg.build_tiny is not None:
        ensure_tiny(model_cfg.path, model_cfg.build_tiny, model_cfg.model_max_length)
    try:
        return AutoTokenizer.from_pretrained(model_cfg.path, model_max_length=model_cfg.model_max_length)
    except (OSError, ValueError) as err:
        raise UserError(f"model.path: cannot load the tokenizer of {model_cfg.path!r}: {str(err).strip().splitlines()[0]}") from None


@tool
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medinject.eval.lm_eval_tasks", description="Write medinject's test sets as lm-eval tasks.")
    parser.add_argument("out", type=Path, help="the task folder to write (lm_eval --include_path OUT)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (model=..., eval.limit=..., ...)")
    args = parser.parse_args(argv)
    check_writable(args.out)  # before the test sets and the tokenizer are loaded
    from hydra import compose, initialize_config_dir

    from medinject.config import EvalSettings, conf_dir, register
    from medinject.data.prepare import load_test_sets
    from medinject.eval.runner import eval_items

    register()
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            cfg = compose("train", overrides=args.overrides)
    except Exception as err:  # noqa: BLE001 - Hydra's compose errors: one line
        raise UserError(f"overrides: {str(err).splitlines()[0]}") from None
    with open_dict(cfg):
        cfg.pop("hydra", None)
        cfg.eval.tasks = [t for t in cfg.eval.tasks if t.value in CHOICE_TASKS] or [TaskType.mcqu]
    tokenizer = _tokenizer(cfg.model)
    rows = {name: loaded.rows.examples() for name, loaded in load_test_sets(cfg.eval.test_sets, cfg.paths).items()}
    names = write_tasks(cfg, tokenizer, eval_items(EvalSettings.of(cfg), rows), args.out)
    print(f"{len(names)} lm-eval tasks -> {args.out.resolve()} (lm_eval --include_path {args.out.resolve()} --tasks {TAG})")


if __name__ == "__main__":
    main()
