"""The dry run: `python train.py -m ... dry_run=true` plans every job of the sweep and submits nothing.

For each job it composes the config (so every typo fails here, not on the cluster), reads and selects
the training data and the test sets (so a wrong path or a bad row fails here too), and prints:

* the run's name and directory, and its key settings;
* the training examples per source and the tokens they hold: counted with the model's tokenizer
  when it is on disk, estimated from characters otherwise (`plan.chars_per_token`), and said which;
* optimizer steps, and GPU-hours at `plan.tokens_per_second` per GPU (a figure to set from a
  measured run; bench/train_throughput.py measures one);
* the peak GPU memory estimate of `medinject.sweep.estimate` (worst case: every example at max length);
* the sbatch script the SLURM launcher would submit for it.

No model is loaded, nothing is written in the sweep or run directories (the data selection cache
under `paths.cache_dir` is the only thing written), and no job is submitted. A job whose data
cannot be prepared is reported with its error and the dry run exits non-zero after planning the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from medinject.config import DataSettings
from medinject.util.errors import UserError


@dataclass
class JobPlan:
    name: str
    run_dir: str
    settings: dict[str, object]
    examples: dict[str, int]  # per origin
    tokens: int
    tokens_counted: bool  # False: estimated from characters
    world_size: int
    optimizer_steps: int
    gpu_hours: float
    memory: str
    sbatch: str | None
    test_items: dict[str, dict[str, int]] | None = None  # per test set, items per task type


def plan_job(cfg: DictConfig) -> JobPlan:
    """The plan of one composed job config (with its `hydra` node, as the sweeper composes it)."""
    from medinject.data.prepare import prepare_data
    from medinject.sweep.estimate import estimate_for_run
    from medinject.config import check_settings, run_name

    check_settings(cfg)
    cfg = cfg.copy()
    run_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)  # `${hydra:runtime.output_dir}` exists only inside a job
    untrained = not cfg.data.sources  # data=base: the base model is evaluated, not trained
    if untrained:
        from medinject.data.prepare import load_test_sets

        # a wrong path or a bad row fails here, as for the others
        test_rows = {name: loaded.rows.examples() for name, loaded in load_test_sets(cfg.eval.test_sets, cfg.paths).items()}
        examples = []
    else:
        prepared = prepare_data(DataSettings.of(cfg))
        examples, test_rows = prepared.examples, prepared.test_rows
    tokens, counted = _count_tokens(cfg, examples)

    t = cfg.trainer
    devices = t.devices if isinstance(t.devices, int) else 1
    world = devices * t.num_nodes
    batches_per_epoch = math.ceil(len(examples) / (t.batch_size * world))
    steps_per_epoch = math.ceil(batches_per_epoch / t.accumulate_grad_batches)
    steps = 0 if untrained else t.max_steps if t.max_steps > 0 else steps_per_epoch * t.max_epochs
    epochs = steps / steps_per_epoch if steps_per_epoch else 0.0
    # tokens_per_second is per GPU, so GPU-hours do not depend on how many GPUs share the work
    gpu_hours = tokens * epochs / cfg.plan.tokens_per_second / 3600 if t.accelerator in ("gpu", "cuda") else 0.0

    a = cfg.adapter
    settings = {
        "model": f"{cfg.model.path} ({cfg.model.dtype}, attention {cfg.model.attn_implementation or 'default'})",
        "adapter": f"{a.name}: {a.method.value} r={a.r} alpha={a.alpha} dropout={a.dropout}"
        + (f", base in 4-bit {a.quantization.value}" if a.quantization else "")
        + f" on {','.join(a.target_modules)}",
        "schedule": f"lr {cfg.optim.lr:g}, cosine, warmup {cfg.optim.warmup_ratio:.0%}, "
        + (f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.max_epochs} epochs"),
        "batch": f"{t.batch_size} per device x {t.accumulate_grad_batches} accumulation x {world} devices "
        f"= {t.batch_size * t.accumulate_grad_batches * world} examples per optimizer step",
        "data": f"{cfg.data.name}, mix {cfg.mix.strategy.value} budget {cfg.mix.budget}, max length {cfg.data.max_length}, seed {cfg.seed}",
        "trainer": f"{t.accelerator} x{devices} x{t.num_nodes} node(s), strategy {t.strategy}, {t.precision}, "
        f"gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}",
        "eval": f"{', '.join(cfg.eval.test_sets)} test sets, tasks {', '.join(x.value for x in cfg.eval.tasks)}, "
        f"judge {cfg.eval.judge.backend.value}" + (f" ({cfg.eval.judge.model})" if cfg.eval.judge.model else ""),
    }
    if untrained:
        settings["adapter"] = "none: the base model, evaluated as it is" + (f" (base in 4-bit {a.quantization.value})" if a.quantization else "")
        settings["schedule"] = "no training"
    origins: dict[str, int] = {}
    for ex in examples:
        origins[ex.origin] = origins.get(ex.origin, 0) + 1
    memory = estimate_for_run(cfg, seq_len=cfg.data.max_length).format(title=f"peak GPU memory per device, {a.name}")
    return JobPlan(
        name=run_name(cfg),
        run_dir=str(run_dir),
        settings=settings,
        examples=dict(sorted(origins.items())),
        tokens=tokens,
        tokens_counted=counted,
        world_size=world,
        optimizer_steps=steps,
        gpu_hours=gpu_hours,
        memory=memory,
        sbatch=sbatch_script(cfg),
        test_items={name: _per_type(rows) for name, rows in sorted(test_rows.items())},
    )


def _per_type(rows) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows:
        found[row.type] = found.get(row.type, 0) + 1
    return dict(sorted(found.items()))


def power_plan(cfg: DictConfig, test_items: dict[str, dict[str, int]], n_configs: int, n_seeds: int = 1) -> str:
    """What the sweep's comparisons can detect: per test set and task, the minimum detectable
    difference from the baseline (80% power at Holm's smallest threshold over the report's family)
    for 1, 3, 5 and 10 seeds, and the seeds the sweep runs, with the assumed variance components of
    `plan` or a pilot sweep's (`plan.pilot`: the mean components of its power.json per task)."""
    from medinject.report.power import ALPHA, SEED_COUNTS, Components, mde

    p = cfg.plan
    family = max(1, (n_configs - 1) * p.tests_per_config)
    level = ALPHA / family
    pilot = _pilot_components(Path(p.pilot)) if p.pilot else {}
    seeds = sorted({n_seeds, *SEED_COUNTS})
    lines = [
        f"power: minimum detectable difference from the baseline, 80% power at Holm's smallest alpha "
        f"({ALPHA:g} / {family} tests = (configs - 1) x plan.tests_per_config), per number of seeds "
        f"(the seed variance pooled over the {n_configs} configs, as the report does)",
        "  variance components of the per-item differences: "
        + (f"a pilot's ({p.pilot}, power.json)" if pilot else
           f"assumed (plan.seed_variance={p.seed_variance:g}, plan.item_variance={p.item_variance:g}, "
           f"plan.item_seed_variance={p.item_seed_variance:g}; set plan.pilot=<swept dir> for measured ones)"),
    ]  # fmt: skip
    for test_set, by_type in test_items.items():
        for task, n in by_type.items():
            c = replace(pilot[task], seed_pool=n_configs) if task in pilot else Components(p.seed_variance, p.item_variance, p.item_seed_variance, 2, n, seed_pool=n_configs)
            mdes = ", ".join(f"{k} seed{'s' if k > 1 else ''}{' (this sweep)' if k == n_seeds else ''} {mde(c, k, level, n_items=n):.3f}" for k in seeds)
            lines.append(f"  {test_set}/{task} ({n:,} items): {mdes}")
    lines.append("  (1 seed: a z test that takes the seed variance as known, since one run cannot estimate it; from 2 seeds "
                 "the test estimates it with configs x (seeds - 1) degrees of freedom, so 2 seeds of few configs can need "
                 "a larger difference than 1)")
    return "\n".join(lines)


def _pilot_components(path: Path) -> dict:
    """Per task type, the mean variance components over a pilot report's comparisons (its `rundir.POWER`)."""
    from medinject.report.power import Components
    from medinject.util.io import read_json
    from medinject.util.rundir import POWER

    found = path / POWER
    if not found.is_file():
        raise UserError(f"plan.pilot={path}: no {POWER} there (build its report with 2+ seeds first)")
    by_task: dict[str, list[dict]] = {}
    for entry in read_json(found).get("comparisons", []):
        c = entry.get("components")
        if c and c.get("item") is not None:
            by_task.setdefault(entry["metric"].split("/")[2], []).append(c)
    return {
        task: Components(*(float(sum(c[k] for c in cs) / len(cs)) for k in ("seed", "item", "item_seed")), 2, int(cs[0]["n_items"]))
        for task, cs in by_task.items()
    }


def _count_tokens(cfg: DictConfig, examples) -> tuple[int, bool]:
    """Prompt + answer tokens of the examples: exact with the model's tokenizer when it can be loaded
    without the network, else characters / `plan.chars_per_token`."""
    tokenizer = _local_tokenizer(cfg.model.path)
    if tokenizer is None:
        chars = sum(len(ex.instruction) + len(ex.context) + len(ex.answer) for ex in examples)
        return round(chars / cfg.plan.chars_per_token), False
    texts = ["\n\n".join(part for part in (ex.instruction, ex.context, ex.answer) if part) for ex in examples]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    return sum(min(n, cfg.data.max_length) for n in lengths), True


def _local_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # noqa: BLE001 - not on disk (or not a tokenizer): fall back to the estimate
        return None


def sbatch_script(cfg: DictConfig) -> str | None:
    """The sbatch script submitit would write for this job under `hydra/launcher=slurm` (None otherwise)."""
    launcher = cfg.hydra.launcher
    if "SlurmLauncher" not in str(launcher.get("_target_", "")):
        return None
    params = OmegaConf.to_container(launcher, resolve=True)
    params.pop("_target_", None)
    params.pop("max_num_timeout", None)
    folder = str(params.pop("submitit_folder")).replace("%j", "<job id>")
    executor = _script_only_executor()(folder=folder)
    generic = {k: v for k, v in params.items() if k in executor._equivalence_dict() and v is not None}
    specific = {k: v for k, v in params.items() if k not in generic and v is not None}
    executor.update_parameters(**executor._convert_parameters(generic), **specific)
    return executor._make_submission_file_text("python -u -m submitit.core._submit " + folder, "<uid>")


def _script_only_executor():
    """submitit's own SLURM executor, used only to write the sbatch script: the real one refuses to
    start where `srun` is absent, which is exactly where a user plans a submission (a laptop, a login
    node without the client)."""
    from submitit.slurm.slurm import SlurmExecutor

    class ScriptOnlySlurmExecutor(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 1

    return ScriptOnlySlurmExecutor


def print_plans(job_cfgs: list[DictConfig]) -> None:
    """Plan every job, print each plan, and the totals; raise UserError if any job cannot be prepared."""
    plans, failures = [], []
    for n, cfg in enumerate(job_cfgs):
        name = f"{cfg.data.name} (seed {cfg.seed})"
        try:
            plan = plan_job(cfg)
        except UserError as err:
            failures.append(name)
            print(f"=== job {n}: {name}: cannot run: {err}\n", flush=True)
            continue
        plans.append(plan)
        print(format_plan(n, plan), flush=True)
    total_hours = sum(p.gpu_hours for p in plans)
    if plans and plans[0].sbatch and job_cfgs:
        parallel = job_cfgs[0].hydra.launcher.array_parallelism
        print(f"the launcher submits the {len(job_cfgs)} jobs as one job array (#SBATCH --array=0-{len(job_cfgs) - 1}%{parallel})")
    if plans and plans[0].test_items:
        print(power_plan(job_cfgs[0], plans[0].test_items, len({cfg.data.name for cfg in job_cfgs}), len({cfg.seed for cfg in job_cfgs})))
    print(f"=== dry run: {len(plans)} of {len(job_cfgs)} jobs planned, {total_hours:.1f} GPU-hours in all; nothing was submitted")
    if failures:
        raise UserError(f"dry run: {len(failures)} job(s) cannot run: {', '.join(failures)}")


def format_plan(n: int, plan: JobPlan) -> str:
    lines = [f"=== job {n}: {plan.name}", f"run dir: {plan.run_dir}"]
    lines += [f"{key}: {value}" for key, value in plan.settings.items()]
    per_source = ", ".join(f"{origin} {count}" for origin, count in plan.examples.items())
    lines.append(f"training examples: {sum(plan.examples.values())} ({per_source})")
    how = "counted with the tokenizer" if plan.tokens_counted else "estimated from characters"
    lines.append(f"tokens per epoch: {plan.tokens:,} (questions and answers, chat markup not counted; {how})")
    lines.append(f"optimizer steps: {plan.optimizer_steps:,}; estimated GPU-hours: {plan.gpu_hours:.1f} ({plan.world_size} GPU(s))")
    lines.append(plan.memory)
    if plan.sbatch:
        lines += ["sbatch script:", plan.sbatch]
    return "\n".join(lines) + "\n"
