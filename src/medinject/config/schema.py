"""The typed schema every file under `conf/` is merged into (`RunConfig`, registered with Hydra by
`medinject.config.store.register`): a misspelled key or a wrong type fails at compose time with
Hydra's own message. Each field's metadata (`medinject.config.fields`) says whether it is left out of
the run hash (`unhashed`) and which range its value must lie in (`allowed=`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING

from medinject.config.enums import (
    AdapterMethod,
    Batching,
    Duplicates,
    EvalBackend,
    EvalProtocol,
    JudgeBackend,
    JudgeRubric,
    MixStrategy,
    OnBadRow,
    Origin,
    Overlong,
    Quantization,
    SourceFormat,
    TaskBalance,
    TaskType,
)
from medinject.config.fields import ANY_TASK, AT_LEAST_ONE, BELOW_ONE, NON_NEGATIVE, POSITIVE, Allowed, or_null, setting, unhashed


@dataclass
class PathsConfig:
    # Where files are, not what they hold: the content hash of every input file is recorded in the run
    # and compared on every rerun, so an edited or replaced file is never silently reused.
    sample_data: str = unhashed()  # the bundled sample, shipped inside the package
    medinjection: Optional[str] = None  # a MedInjection-FR download (holds ALL/ or Native/, Synthetic/, Translated/)
    cache_dir: str = unhashed()  # built tiny models and other reusable artefacts
    wordnet: str = unhashed("/usr/share/wordnet")  # the WordNet 3.0 database METEOR reads (Debian's wordnet-base)
    output_dir: str = unhashed()  # this run's directory (Hydra's run or sweep sub-directory)


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
    ngram: int = setting(8, allowed=AT_LEAST_ONE)  # words per shingle for near-duplicate detection
    threshold: float = setting(0.5, allowed=Allowed(lambda v: 0 < v <= 1, "a share in (0, 1]"))  # share of a test item's shingles found in a training row that marks it


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
    max_length: int = setting(512, allowed=Allowed(lambda v: v >= 8, "an integer >= 8 (prompt + answer tokens)"))  # prompt + answer tokens
    overlong: Overlong = Overlong.truncate
    completion_only_loss: bool = True  # mask prompt tokens out of the loss (false: loss over whole sequences)
    # task types trained on (rows of other types are left out of the sources before the mix)
    train_tasks: list[TaskType] = setting(factory=lambda: [TaskType.mcqu, TaskType.mcq, TaskType.oeq], allowed=ANY_TASK)
    batching: Batching = Batching.padding_free
    group_by_length: bool = True  # padded batching: batches of similar lengths (less padding)
    cache: bool = unhashed(True)  # reuse selections and tokenized sets keyed by content hashes


@dataclass
class MixConfig:
    strategy: MixStrategy = MISSING
    budget: Optional[int] = setting(None, allowed=or_null(AT_LEAST_ONE))  # equal_budget / weighted: total examples over all sources of the config
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
    model_max_length: int = setting(2048, allowed=Allowed(lambda v: v >= 8, "an integer >= 8"))


@dataclass
class AdapterConfig:
    name: str = MISSING
    method: AdapterMethod = AdapterMethod.lora
    quantization: Optional[Quantization] = None  # bitsandbytes 4-bit base weights (QLoRA / QDoRA)
    double_quant: bool = True
    compute_dtype: str = "float32"
    r: int = setting(16, allowed=AT_LEAST_ONE)
    alpha: int = setting(16, allowed=POSITIVE)
    dropout: float = setting(0.05, allowed=BELOW_ONE)
    target_modules: list[str] = setting(
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        allowed=Allowed(lambda v: len(v) >= 1, "at least one module name"),
    )


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1  # per node; an int on SLURM, where the launcher asks for this many GPUs and tasks
    num_nodes: int = setting(1, allowed=AT_LEAST_ONE)
    strategy: str = "auto"  # auto | ddp | fsdp (Lightning strategies)
    precision: str = "32-true"
    max_steps: int = setting(-1, allowed=Allowed(lambda v: v == -1 or v >= 1, "-1 (train max_epochs) or an integer >= 1"))  # -1: run max_epochs
    max_epochs: int = 1
    batch_size: int = setting(4, allowed=AT_LEAST_ONE)  # per device
    accumulate_grad_batches: int = setting(1, allowed=AT_LEAST_ONE)
    gradient_clip_val: Optional[float] = setting(1.0, allowed=or_null(POSITIVE))
    gradient_checkpointing: bool = False
    log_every_n_steps: int = unhashed(1, allowed=AT_LEAST_ONE)
    # Which of the machine's GPUs this job uses, e.g. [2]; set by the sweeper on the local launcher so
    # that parallel jobs never share a card. Unhashed: it says where, not what, a run trains.
    local_gpus: Optional[list[int]] = unhashed(None)
    checkpoint_every_n_steps: int = unhashed(50, allowed=AT_LEAST_ONE)  # resume is exact whatever the interval
    probe_batches: int = setting(2, allowed=AT_LEAST_ONE)  # fixed training batches whose loss is measured before and after fitting
    enable_progress_bar: bool = unhashed(True)
    # torch's CPU threads for this run (None: SLURM's allocation, else torch's default of one per core);
    # 1 lets parallel jobs on a small machine each keep a core instead of slowing each other down
    cpu_threads: Optional[int] = unhashed(None, allowed=or_null(AT_LEAST_ONE, "null (SLURM's allocation or torch's default) or an integer >= 1"))


@dataclass
class OptimConfig:
    lr: float = setting(2e-4, allowed=POSITIVE)
    weight_decay: float = setting(0.0, allowed=NON_NEGATIVE)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], allowed=Allowed(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"))
    warmup_ratio: float = setting(0.05, allowed=BELOW_ONE)  # of the optimizer steps, then cosine decay to 0


@dataclass
class JudgeConfig:
    backend: JudgeBackend = JudgeBackend.none
    model: Optional[str] = None  # local: path or hub id; openai: the served model's name
    base_url: Optional[str] = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = unhashed("OPENAI_API_KEY")  # openai: the key is read from this variable, never stored
    batch_size: int = setting(8, allowed=AT_LEAST_ONE)
    max_new_tokens: int = setting(8, allowed=AT_LEAST_ONE)  # medinject rubric (the released rubric reads 1 token)
    timeout_s: float = unhashed(60.0, allowed=POSITIVE)
    # local: None puts the judge on the evaluation device; "auto" spreads a large judge over every
    # visible GPU (transformers' device_map="auto"); or a device such as "cuda:1".
    device: Optional[str] = unhashed(None)
    rubric: JudgeRubric = JudgeRubric.medinject  # which judge prompt; recorded in the run record
    medinject_rubric: str = MISSING  # French instructions; {question}, {reference} and {answer} are filled in


@dataclass
class EvalConfig:
    name: str = MISSING
    # strict: the study's released evaluation (prompts, new tokens, allowed tokens, letter rule);
    # lenient: this project's (medinject.eval.protocols). Recorded in the run record.
    protocol: EvalProtocol = EvalProtocol.lenient
    test_sets: dict[str, SourceConfig] = field(default_factory=dict)
    tasks: list[TaskType] = setting(factory=lambda: [TaskType.mcqu, TaskType.mcq, TaskType.oeq], allowed=ANY_TASK)
    batch_size: int = setting(16, allowed=AT_LEAST_ONE)
    max_new_tokens: int = setting(8, allowed=AT_LEAST_ONE)  # multiple choice, lenient protocol (the strict one has its own budgets)
    oeq_max_new_tokens: int = setting(128, allowed=AT_LEAST_ONE)  # open answers, lenient protocol
    constrained: bool = True  # also decode multiple choice restricted to option letters, separators, EOS
    meteor: bool = True  # METEOR on open answers (nltk; needs the WordNet 3.0 database at paths.wordnet)
    bertscore_model: Optional[str] = None  # encoder for BERTScore (None: no BERTScore)
    bertscore_layer: int = -1
    length_bins: int = setting(4, allowed=AT_LEAST_ONE)  # answer-length quantile bins for the length-controlled judge score
    limit: Optional[int] = setting(None, allowed=or_null(AT_LEAST_ONE, "null (every item) or an integer >= 1"))  # at most this many items per test set and task (None: all)
    # conf/eval/default.yaml: vllm when the run trains on GPUs (trainer=gpu / ddp), hf on the CPU
    backend: EvalBackend = EvalBackend.hf
    vllm_gpu_memory_utilization: float = unhashed(0.8)  # share of the GPU's memory the vLLM engine reserves
    # None: the device the run trained on (the trainer's root device); or e.g. "cuda:0", "cpu".
    # BERTScore's encoder runs there too.
    device: Optional[str] = unhashed(None)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class TrackingConfig:
    """What medinject adds to a W&B logger of `logger:` (unhashed: it changes no result)."""

    group: Optional[str] = None  # None: `sweep_name` in a multirun, no group otherwise
    log_predictions: bool = True  # every evaluated item as the table eval/predictions


@dataclass
class PromptConfig:
    system: str = MISSING
    task_hints: dict[str, str] = field(default_factory=dict)  # appended to the user turn, per task type


@dataclass
class PlanConfig:
    """Figures the dry run (`dry_run=true`) turns counts into time with."""

    tokens_per_second: float = setting(2500.0, allowed=POSITIVE)  # training tokens per second per GPU; set it from a measured run
    chars_per_token: float = setting(3.5, allowed=POSITIVE)  # when the tokenizer is not on disk: French medical text, Qwen3 BPE (approximate)
    # Power of the comparisons (medinject.report.power): the variance components of a config's per-item
    # score differences from the baseline, assumed for a 0/1 score (between seeds: sd 0.01; an item's own
    # difference; the rest), unless `pilot` names a swept dir whose report wrote power.json
    seed_variance: float = 1e-4
    item_variance: float = 0.05
    item_seed_variance: float = 0.1
    pilot: Optional[str] = None
    tests_per_config: int = 30  # metrics compared per config: the report's family is (configs - 1) x this


@dataclass
class MixtureSearchConfig:
    """The sequential mixture search (medinject.sweep.rounds): after a `mix.weights` design, rounds of
    points chosen on the fitted surface, each round's predictions registered before it runs."""

    rounds: int = 0  # rounds after the initial design (0: the design only)
    per_round: int = 3  # points per round (each run with every seed of the design)
    metric: Optional[str] = None  # eval/<test set>/<task>/<metric> to maximise; None: truth.json's, else the first main metric
    step: float = 0.05  # candidate points: the lattice of shares in multiples of this
    initial: Optional[int] = None  # the design's first N mix.weights points only (7 of experiment=mixture_search's: vertices, edge midpoints, centroid)


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
    facts_by_source: Optional[Dict[str, int]] = None  # facts per source where they differ (replaces `facts`)


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
    # Unhashed (not part of a run's identity, medinject.config.identity):
    logger: dict[str, Any] = unhashed(factory=dict)  # Lightning loggers, each a `_target_` node (conf/logger/)
    tracking: TrackingConfig = unhashed(factory=TrackingConfig)
    sweep_name: str = unhashed("sweep")  # multirun_outputs/<sweep_name>/ and the W&B group
    skip_completed: bool = unhashed(True)  # a run whose run record says `completed` is not run again
    wait_for_lock: bool = unhashed(False)  # another process runs in this directory: wait for it (else stop at once)
    dry_run: bool = unhashed(False)  # multirun: compose and check every job, print its plan, submit nothing
    report: ReportConfig = unhashed(factory=ReportConfig)  # the report built when a multirun ends
    mixture: MixtureSearchConfig = unhashed(factory=MixtureSearchConfig)  # rounds of the mixture search (multirun)
    plan: PlanConfig = unhashed(factory=PlanConfig)
