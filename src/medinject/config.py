"""Structured configs: the typed schema every file under `conf/` is merged into.

`register()` puts `RunConfig` in Hydra's ConfigStore as `run_schema`; `conf/train.yaml` lists it first
in its defaults, so each group file (`conf/model/tiny.yaml`, ...) is merged into a typed node and a
misspelled key or a wrong type fails at compose time with Hydra's own message.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
import functools
import hashlib
import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


def control(default=MISSING, *, factory=None):
    """A run-control field: it says how a run is executed or recorded, not what it computes, so it is
    left out of the run's identity (run_key below). Every other field decides the result."""
    metadata = {"run_control": True}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class Origin(str, Enum):
    native = "native"
    synthetic = "synthetic"
    translated = "translated"


class TaskType(str, Enum):
    mcqu = "mcqu"  # multiple choice, exactly one correct option
    mcq = "mcq"  # multiple choice, several correct options ("A, C")
    oeq = "oeq"  # open-ended question


class MixStrategy(str, Enum):
    natural = "natural"
    equal_budget = "equal_budget"
    weighted = "weighted"


class TaskBalance(str, Enum):
    source = "source"  # per-task proportions follow the source's own
    balanced = "balanced"  # each source's share is split equally across its task types


class SourceFormat(str, Enum):
    auto = "auto"  # the MedInjection-FR download under paths.medinjection when set, else `files`
    jsonl = "jsonl"  # JSON Lines files (or directories of *.jsonl), `columns` maps their names
    parquet = "parquet"  # parquet files (or directories of *.parquet), `columns` maps their names
    medinjection_all = "medinjection_all"  # <root>/ALL: parquet splits, the `origin` column selects
    medinjection_source = "medinjection_source"  # <root>/<subset>/{Train,Validation,Test}/{mcq,mcqu,oeq}/*.json
    chat_json = "chat_json"  # JSON lists of {messages, classes, answer} evaluation items
    hub = "hub"  # datasets.load_dataset(hub_id, hub_config, split=split), for users who are online


class OnBadRow(str, Enum):
    error = "error"  # stop at the first bad row, naming file, row and field
    skip = "skip"  # drop bad rows; the manifest counts them by reason


class Overlong(str, Enum):
    truncate = "truncate"  # cut the answer at max_length (an example whose prompt fills it is dropped)
    drop = "drop"  # leave out every example longer than max_length


class Duplicates(str, Enum):
    drop = "drop"  # keep the first of identical training rows (within or across sources), count the rest
    keep = "keep"  # train on every copy (counted all the same)
    error = "error"  # stop at the first duplicate, naming both rows


class Batching(str, Enum):
    padding_free = "padding_free"  # a batch's examples concatenated into one row, positions restarting
    padded = "padded"  # right-padded to the longest example of the batch


class AdapterMethod(str, Enum):
    lora = "lora"
    dora = "dora"


class Quantization(str, Enum):
    nf4 = "nf4"
    fp4 = "fp4"


@dataclass
class PathsConfig:
    # Where files are, not what they hold: the content hash of every input file is recorded in the run
    # and compared on every rerun, so an edited or replaced file is never silently reused.
    sample_data: str = control()  # the bundled sample, shipped inside the package
    medinjection: Optional[str] = None  # a MedInjection-FR download (holds ALL/ or Native/, Synthetic/, Translated/)
    cache_dir: str = control()  # built tiny models and other reusable artefacts
    wordnet: str = control("/usr/share/wordnet")  # the WordNet 3.0 database METEOR reads (Debian's wordnet-base)
    output_dir: str = control()  # this run's directory (Hydra's run or sweep sub-directory)


@dataclass
class SourceConfig:
    """Where rows come from; used for training sources (`data.sources.*`) and test sets (`eval.test_sets.*`)."""

    origin: Optional[Origin] = None  # rows without an origin column get this one; rows with another are refused
    format: SourceFormat = SourceFormat.auto
    files: list[str] = field(default_factory=list)  # jsonl / parquet / chat_json: files or directories
    subset: Optional[str] = None  # medinjection layouts: Native | Synthetic | Translated
    split: str = "train"  # train | validation | test
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    columns: dict[str, str] = field(default_factory=dict)  # our field -> the column name in the files
    description: str = ""


@dataclass
class ContaminationConfig:
    ngram: int = 8  # words per shingle for near-duplicate detection
    threshold: float = 0.5  # share of a test item's shingles found in a training row that marks it


@dataclass
class DataConfig:
    name: str = MISSING  # the provenance configuration, e.g. "native+synthetic"
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    on_bad_row: OnBadRow = OnBadRow.error
    # A row repeated in the files is trained on once per copy: it silently outweighs the others and
    # makes equal budgets hold unequal amounts of distinct data. Dropped by default, always counted.
    duplicates: Duplicates = Duplicates.drop
    decontaminate: bool = True  # drop training rows that match a test item (false: only report them)
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)
    max_length: int = 512  # prompt + answer tokens
    overlong: Overlong = Overlong.truncate
    completion_only_loss: bool = True  # mask prompt tokens out of the loss (false: loss over whole sequences)
    # task types trained on (rows of other types are left out of the sources before the mix)
    train_tasks: list[TaskType] = field(default_factory=lambda: [TaskType.mcqu, TaskType.mcq, TaskType.oeq])
    batching: Batching = Batching.padding_free
    group_by_length: bool = True  # padded batching: batches of similar lengths (less padding)
    cache: bool = control(True)  # reuse selections and tokenized sets keyed by content hashes


@dataclass
class MixConfig:
    strategy: MixStrategy = MISSING
    budget: Optional[int] = None  # equal_budget / weighted: total examples over all sources of the config
    task_balance: TaskBalance = TaskBalance.source
    # weighted: source name -> share, summing to 1. Typed Any because a typed dict in struct mode
    # refuses new keys from a `mix.weights={native:0.7,...}` override; mix.py checks the values.
    weights: Any = None
    allow_repeat: bool = False  # weighted: repeat a source's rows when its share exceeds them


@dataclass
class TinyModelSpec:
    """A Qwen3-architecture model with random weights, built offline (no hub)."""

    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 2048
    seed: int = 0


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str = MISSING  # hub id or local directory, loaded with from_pretrained
    build_tiny: Optional[TinyModelSpec] = None  # when set, `path` is built offline on first use
    dtype: str = "float32"  # torch dtype of the weights that are not quantized
    attn_implementation: Optional[str] = None  # flash_attention_2 falls back to sdpa when not installed
    model_max_length: int = 2048


@dataclass
class AdapterConfig:
    name: str = MISSING
    method: AdapterMethod = AdapterMethod.lora
    quantization: Optional[Quantization] = None  # bitsandbytes 4-bit base weights (QLoRA / QDoRA)
    double_quant: bool = True
    compute_dtype: str = "float32"
    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1  # per node; an int on SLURM, where the launcher asks for this many GPUs and tasks
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (Lightning strategies)
    precision: str = "32-true"
    max_steps: int = -1  # -1: run max_epochs
    max_epochs: int = 1
    batch_size: int = 4  # per device
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    gradient_checkpointing: bool = False
    log_every_n_steps: int = control(1)
    # Which of the machine's GPUs this job uses, e.g. [2]; set by the sweeper on the local launcher so
    # that parallel jobs never share a card. Run control: it says where, not what, a run trains.
    local_gpus: Optional[list[int]] = control(None)
    checkpoint_every_n_steps: int = control(50)  # resume is exact whatever the interval
    probe_batches: int = 2  # fixed training batches whose loss is measured before and after fitting
    enable_progress_bar: bool = control(True)
    # torch's CPU threads for this run (None: SLURM's allocation, else torch's default of one per core);
    # 1 lets parallel jobs on a small machine each keep a core instead of slowing each other down
    cpu_threads: Optional[int] = control(None)


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.05  # of the optimizer steps, then cosine decay to 0


class EvalProtocol(str, Enum):
    medinject = "medinject"  # medinject's prompt (system prompt + task hint), letter grammar, lenient letter reading
    released = "released"  # the study's released evaluation: the item's own messages, strict letter reading


class JudgeRubric(str, Enum):
    medinject = "medinject"  # eval.judge.medinject_rubric: French, one user turn, a few new tokens
    released = "released"  # the study's released judge: English system prompt, 1 new token, \b[01]\b


class EvalBackend(str, Enum):
    hf = "hf"  # transformers' generate (and medinject's shared-prefill multiple-choice decoding)
    vllm = "vllm"  # a vLLM engine (the `vllm` extra), same prompts, allowed tokens and letter rule


class JudgeBackend(str, Enum):
    none = "none"
    local = "local"  # a transformers model (local folder or hub id), batched greedy generation
    openai = "openai"  # an OpenAI-compatible chat-completions endpoint


@dataclass
class JudgeConfig:
    backend: JudgeBackend = JudgeBackend.none
    model: Optional[str] = None  # local: path or hub id; openai: the served model's name
    base_url: Optional[str] = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = control("OPENAI_API_KEY")  # openai: the key is read from this variable, never stored
    batch_size: int = 8
    max_new_tokens: int = 8  # medinject rubric (the released rubric reads 1 token)
    timeout_s: float = control(60.0)
    # local: None puts the judge on the evaluation device; "auto" spreads a large judge over every
    # visible GPU (transformers' device_map="auto"); or a device such as "cuda:1".
    device: Optional[str] = control(None)
    rubric: JudgeRubric = JudgeRubric.medinject  # which judge prompt; recorded in results.json
    medinject_rubric: str = MISSING  # French instructions; {question}, {reference} and {answer} are filled in


@dataclass
class EvalConfig:
    name: str = MISSING
    # released: the study's released evaluation (prompts, new tokens, allowed tokens, letter rule);
    # medinject: this project's (see README, "Evaluation"). Recorded in results.json.
    protocol: EvalProtocol = EvalProtocol.medinject
    test_sets: dict[str, SourceConfig] = field(default_factory=dict)
    tasks: list[TaskType] = field(default_factory=lambda: [TaskType.mcqu, TaskType.mcq, TaskType.oeq])
    batch_size: int = 16
    max_new_tokens: int = 8  # multiple choice, medinject protocol (released: 1 for mcqu, 2 x options for mcq)
    oeq_max_new_tokens: int = 128  # medinject protocol (released: 512)
    constrained: bool = True  # also decode multiple choice restricted to option letters, separators, EOS
    meteor: bool = True  # METEOR on open answers (nltk; needs the WordNet 3.0 database at paths.wordnet)
    bertscore_model: Optional[str] = None  # encoder for BERTScore (None: no BERTScore)
    bertscore_layer: int = -1
    length_bins: int = 4  # answer-length quantile bins for the length-controlled judge score
    limit: Optional[int] = None  # at most this many items per test set and task (None: all)
    # conf/eval/default.yaml: vllm when the run trains on GPUs (trainer=gpu / ddp), hf on the CPU
    backend: EvalBackend = EvalBackend.hf
    vllm_gpu_memory_utilization: float = control(0.8)  # share of the GPU's memory the vLLM engine reserves
    # None: the device the run trained on (the trainer's root device); or e.g. "cuda:0", "cpu".
    # BERTScore's encoder runs there too.
    device: Optional[str] = control(None)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class TrackingConfig:
    """What medinject adds to a W&B logger of `logger:` (run control: it changes no result)."""

    group: Optional[str] = None  # None: `sweep_name` in a multirun, no group otherwise
    log_predictions: bool = True  # every evaluated item as the table eval/predictions


@dataclass
class PromptConfig:
    system: str = MISSING
    task_hints: dict[str, str] = field(default_factory=dict)  # appended to the user turn, per task type


@dataclass
class PlanConfig:
    """Figures the dry run (`dry_run=true`) turns counts into time with."""

    tokens_per_second: float = 2500.0  # training tokens per second per GPU; set it from a measured run
    chars_per_token: float = 3.5  # when the tokenizer is not on disk: French medical text, Qwen3 BPE (approximate)
    # Power of the comparisons (medinject.report.power): the variance components of a config's per-item
    # score differences from the baseline, assumed for a 0/1 score (between seeds: sd 0.01; an item's own
    # difference; the rest), unless `pilot` names a swept dir whose report wrote power.json
    seed_variance: float = 1e-4
    item_variance: float = 0.05
    item_seed_variance: float = 0.1
    pilot: Optional[str] = None
    tests_per_config: int = 30  # metrics compared per config: the report's family is (configs - 1) x this


@dataclass
class ReportConfig:
    baseline: Optional[str] = "native"  # the data config every other one is compared with (paired, per item)


@dataclass
class PlantedConfig:
    """Known-answer data (conf/planted/, medinject.data.planted): generated into paths.sample_data."""

    name: str = "default"
    seed: int = 0
    flat: bool = False  # plant no difference at all
    facts: int = 24  # facts per source
    copies: int = 4  # training rows per fact
    budget: int = 48  # training examples per run the truth is computed for (the experiments' mix.budget)
    transfer: float = 0.6  # translated: share of its facts whose letter carries over to the test
    wrong_rate: float = 0.3  # synthetic: share of its facts taught with a wrong letter


@dataclass
class RunConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    seed: int = 42
    # Lightning callbacks, each a `_target_` node (conf/callbacks/): they can change training, so hashed.
    callbacks: dict[str, Any] = field(default_factory=dict)
    planted: Optional[PlantedConfig] = None  # known-answer data (experiment=known_answer): what the sources hold
    # Run control (not part of a run's identity, see run_key below):
    logger: dict[str, Any] = control(factory=dict)  # Lightning loggers, each a `_target_` node (conf/logger/)
    tracking: TrackingConfig = control(factory=TrackingConfig)
    sweep_name: str = control("sweep")  # multirun_outputs/<sweep_name>/ and the W&B group
    skip_completed: bool = control(True)  # a run whose results.json says `completed` is not run again
    wait_for_lock: bool = control(False)  # another process runs in this directory: wait for it (else stop at once)
    dry_run: bool = control(False)  # multirun: compose and check every job, print its plan, submit nothing
    report: ReportConfig = control(factory=ReportConfig)  # the report built when a multirun ends
    plan: PlanConfig = control(factory=PlanConfig)


def conf_dir() -> str:
    """The `conf/` folder for entry points other than train.py: $MEDINJECT_CONF, ./conf, or the checkout's."""
    if env := os.environ.get("MEDINJECT_CONF"):
        return str(Path(env).resolve())
    if (Path.cwd() / "conf" / "train.yaml").is_file():
        return str(Path.cwd() / "conf")
    return str(Path(__file__).resolve().parents[2] / "conf")


def sample_data_dir() -> str:
    return str(files("medinject") / "sample_data")


def device_count(devices) -> int:
    """The number of devices `trainer.devices` names, for a job script that must ask for a number:
    an integer >= 1, a list of indices, or Lightning's "0,1" string. -1 and "auto" mean "every device
    of the machine", which a job script cannot know before it runs."""
    from medinject.util.errors import UserError

    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"trainer.devices={text}: a cluster job asks for a fixed number of devices per node; "
                    "set trainer.devices=N (or a list of GPU indices)")


def _machine_gpus(accelerator) -> int:
    from medinject.util.cluster import cuda_device_count

    return cuda_device_count() if str(accelerator) in ("gpu", "cuda") else 0


def register() -> None:
    """Register the schema and resolvers; safe to call more than once."""
    if not OmegaConf.has_resolver("medinject.sample_data"):
        OmegaConf.register_new_resolver("medinject.sample_data", sample_data_dir)
    if not OmegaConf.has_resolver("medinject.gpus"):
        # GPUs per node for the SLURM and local launchers: the trainer's devices on GPU, none on CPU
        OmegaConf.register_new_resolver(
            "medinject.gpus", lambda accelerator, devices: device_count(devices) if accelerator in ("gpu", "cuda") else 0
        )
    if not OmegaConf.has_resolver("medinject.machine_gpus"):
        # GPUs of this machine for the local launcher (each job then takes its own; sweep/devices.py)
        OmegaConf.register_new_resolver("medinject.machine_gpus", _machine_gpus)
    if not OmegaConf.has_resolver("medinject.tasks"):
        # tasks per node for the SLURM launcher: one per device, as Lightning's SLURM detection expects
        OmegaConf.register_new_resolver("medinject.tasks", device_count)
    if not OmegaConf.has_resolver("medinject.eval_backend"):
        # eval.backend's default: vLLM where the run trains on GPUs, transformers on the CPU
        OmegaConf.register_new_resolver("medinject.eval_backend", lambda accelerator: "vllm" if accelerator in ("gpu", "cuda") else "hf")
    if not OmegaConf.has_resolver("medinject.run_name"):
        # `${medinject.run_name:}` in hydra.run.dir / hydra.sweep.subdir; `_root_` is the whole job config
        OmegaConf.register_new_resolver("medinject.run_name", lambda *, _root_: run_name(_root_))
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


# Ranges the schema's types cannot express: (key, test, the allowed range as the refusal says it).
# Checked by `check_settings` before any data or model is loaded.
_POSITIVE_INT = (lambda v: v >= 1, "an integer >= 1")
_RANGES = [
    ("optim.lr", lambda v: v > 0, "a number > 0"),
    ("optim.weight_decay", lambda v: v >= 0, "a number >= 0"),
    ("optim.warmup_ratio", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("optim.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("trainer.batch_size", *_POSITIVE_INT),
    ("trainer.accumulate_grad_batches", *_POSITIVE_INT),
    ("trainer.num_nodes", *_POSITIVE_INT),
    ("trainer.max_steps", lambda v: v == -1 or v >= 1, "-1 (train max_epochs) or an integer >= 1"),
    ("trainer.gradient_clip_val", lambda v: v is None or v > 0, "null or a number > 0"),
    ("trainer.log_every_n_steps", *_POSITIVE_INT),
    ("trainer.checkpoint_every_n_steps", *_POSITIVE_INT),
    ("trainer.probe_batches", *_POSITIVE_INT),
    ("trainer.cpu_threads", lambda v: v is None or v >= 1, "null (SLURM's allocation or torch's default) or an integer >= 1"),
    ("adapter.r", *_POSITIVE_INT),
    ("adapter.alpha", lambda v: v > 0, "a number > 0"),
    ("adapter.dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("adapter.target_modules", lambda v: len(v) >= 1, "at least one module name"),
    ("data.train_tasks", lambda v: len(v) >= 1, "at least one of mcqu, mcq, oeq"),
    ("data.max_length", lambda v: v >= 8, "an integer >= 8 (prompt + answer tokens)"),
    ("data.contamination.ngram", *_POSITIVE_INT),
    ("data.contamination.threshold", lambda v: 0 < v <= 1, "a share in (0, 1]"),
    ("mix.budget", lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("model.model_max_length", lambda v: v >= 8, "an integer >= 8"),
    ("eval.batch_size", *_POSITIVE_INT),
    ("eval.max_new_tokens", *_POSITIVE_INT),
    ("eval.oeq_max_new_tokens", *_POSITIVE_INT),
    ("eval.limit", lambda v: v is None or v >= 1, "null (every item) or an integer >= 1"),
    ("eval.length_bins", *_POSITIVE_INT),
    ("eval.tasks", lambda v: len(v) >= 1, "at least one of mcqu, mcq, oeq"),
    ("eval.judge.batch_size", *_POSITIVE_INT),
    ("eval.judge.max_new_tokens", *_POSITIVE_INT),
    ("eval.judge.timeout_s", lambda v: v > 0, "a number > 0"),
    ("plan.tokens_per_second", lambda v: v > 0, "a number > 0"),
    ("plan.chars_per_token", lambda v: v > 0, "a number > 0"),
]


# What Lightning's Trainer accepts as `precision` (lightning/fabric/plugins/precision/precision.py:
# _PRECISION_INPUT_STR and _PRECISION_INPUT_STR_ALIAS), kept here so that checking it imports no Lightning;
# tests/test_bad_input.py pins it to Lightning's own lists.
LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
                        "32-true", "64-true", "64", "32", "16", "bf16")
# The torch dtypes model/load.py loads weights in (names of torch attributes); a test pins them to torch.
TORCH_FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64", "float", "half", "double")
# Checked in this order: adapter.compute_dtype usually interpolates model.dtype, which is named first.
_DTYPE_KEYS = ("model.dtype", "adapter.compute_dtype")


def check_settings(cfg: DictConfig) -> None:
    """Refuse, in one line naming the key and its allowed range, a value that would crash late, be
    silently ignored, or train nothing; and the combinations no run supports."""
    from medinject.util.errors import UserError

    for key, allowed, range_text in _RANGES:
        value = OmegaConf.select(cfg, key)
        if not allowed(value):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise UserError(f"{key}: {shown!r} is out of range; allowed: {range_text}")
    if cfg.trainer.precision not in LIGHTNING_PRECISIONS:
        raise UserError(f"trainer.precision: {cfg.trainer.precision!r} is not a Lightning precision; allowed: {', '.join(LIGHTNING_PRECISIONS)}")
    for key in _DTYPE_KEYS:
        if (value := OmegaConf.select(cfg, key)) not in TORCH_FLOAT_DTYPES:
            raise UserError(f"{key}: {value!r} is not a torch floating-point dtype; allowed: {', '.join(TORCH_FLOAT_DTYPES)}")
    t = cfg.trainer
    if not (t.max_epochs >= 1 or (t.max_epochs == -1 and t.max_steps >= 1)):
        raise UserError(f"trainer.max_epochs: {t.max_epochs!r} trains nothing; allowed: an integer >= 1, or -1 with trainer.max_steps >= 1")
    devices = cfg.trainer.devices
    if not (devices == "auto" or devices == -1 or (isinstance(devices, int) and devices >= 1) or (OmegaConf.is_list(devices) and len(devices) >= 1)):
        raise UserError(f"trainer.devices: {devices!r} is out of range; allowed: an integer >= 1, -1, 'auto' or a list of device ids")
    if cfg.trainer.strategy == "fsdp":
        raise UserError(
            "trainer.strategy: fsdp is not supported (saving and evaluating a sharded adapter is untested); "
            "use trainer=ddp, which trains every adapter on several GPUs"
        )


@functools.cache
def control_keys(schema=RunConfig, prefix: str = "") -> tuple[str, ...]:
    """Dotted names of every run-control field of the schema (see `control`)."""
    keys: list[str] = []
    types = get_type_hints(schema)  # resolves the string annotations of `from __future__ import annotations`
    for f in fields(schema):
        if f.metadata.get("run_control"):
            keys.append(prefix + f.name)
        elif is_dataclass(types[f.name]):
            keys += control_keys(types[f.name], f"{prefix}{f.name}.")
    return tuple(keys)


# Run identity: a short hash of what decides a run's result. The run directory (`<data>-s<seed>-<key>`)
# is named after it instead of a timestamp, so a requeued, relaunched or re-typed command lands in the
# directory of the run it continues, finds its checkpoint, and skips it once it completed. Hashed: the
# composed config *before* interpolations are resolved (so `${paths.sample_data}/...` hashes the same
# on every machine), without `hydra` and every `control` field. What the input files *contain* is not
# in the key: their content hashes are recorded in the run directory and compared when a run starts
# (medinject.data.inputs).
RUN_KEY_LENGTH = 10


def identity_fields(cfg: DictConfig) -> dict:
    """The part of the config that the key is a hash of (interpolations left as written)."""
    tree = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    tree.pop("hydra", None)
    for dotted in control_keys():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return tree


def run_key(cfg: DictConfig) -> str:
    blob = json.dumps(identity_fields(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:RUN_KEY_LENGTH]


def run_name(cfg: DictConfig) -> str:
    """`<data config>-s<seed>-<key>`: readable in listings, unique per config."""
    return f"{cfg.data.name}-s{cfg.seed}-{run_key(cfg)}"


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (enums as their names), for saving and logging."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


register()
