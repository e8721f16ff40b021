"""Training throughput: medinject's Lightning path against TRL's SFTTrainer, same data, model, adapter and steps.

    python bench/train_throughput.py [--adapter qlora|lora] [--device cpu|cuda] [--shape tiny-256|qwen3-vocab|qwen3-4b-shape]
                                     [--loss all|completion]
                                     [--steps 8] [--warmup 2] [--max-length 512] [--batch-size 8] [--grad-accum 2]
                                     [--repeats 1] [--peers medinject,trl] [--json OUT] [overrides...]

Both peers train the same model, loaded and wrapped once per run by medinject's loader (a Qwen3-shaped
model with random weights built offline; NF4 4-bit base + LoRA r=16 on the 7 projections, or plain
LoRA; TRL receives the wrapped PeftModel), on the same tokenized examples (the bundled sample, all three
sources, through medinject's prepare/tokenize path), with the same objective, with the same examples
per optimizer step (`--batch-size` per micro-batch x `--grad-accum`), the same max length, learning
rate and schedule, clipping, AdamW and precision (fp32 on CPU, bf16 autocast on CUDA):

* medinject: the real `L.Trainer` + `AdapterFineTuning` + `InstructionDataModule`, padding-free
  batches (a micro-batch's examples back to back in one row).
* TRL: `SFTTrainer` configured like the MedInjection-FR study's released script: right-padded
  batches grouped by length, no packing, no padding-free, its installed version's default loss
  otherwise (TRL 1.16: `nll`, which never holds the full logits either).

`--loss all` (default; the study's objective): loss on the whole sequence for both peers
(`data.completion_only_loss=false`; TRL gets the labels and `completion_only_loss=False`).
`--loss completion`: the prompt is masked out of the loss. medinject: `data.completion_only_loss=true`;
TRL: its own completion-only loss on prompt-completion data (`completion_only_loss=True`, the examples
as `input_ids` + `completion_mask`, from which TRL builds the labels itself).

Each run is a fresh subprocess, so its peak RSS (and on CUDA `torch.cuda.max_memory_allocated` during
training) is its own. After `--warmup` optimizer steps, the next `--steps` are timed: the non-pad
tokens of the micro-batches the trainers ran in them (counted on the batches, without a host sync per
step) over the seconds they took. Pad fraction = pad tokens / all tokens fed. With `--repeats N` the
peers alternate N times and medians are reported (a shared 2-vCPU machine is noisy).

`--shape qwen3-vocab` (alias of `--model`) is the tiny-256 shape with Qwen3's real 151,936-token
vocabulary: the output projection and the loss over the vocabulary, which the 2,048-token tiny
vocabulary hides, then cost what they cost at the study's scale (per token, relative to the layers:
more, as the hidden size is small), on 2 CPU cores.

`--shape qwen3-4b-shape` is Qwen3-4B's architecture (hidden 2560, 36 layers, 32/8 heads, vocab 151936,
tied embeddings) with random bf16 weights, built once into `--cache` (about 8 GB); it is meant for
`--device cuda`, where gradient checkpointing is on by default (as in `trainer=gpu`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medinject.sweep.estimate import QWEN3_4B_INSTRUCT_2507

TARGET_RATIO, TARGET_PAD = 1.5, 0.03
TARGET_RATIO_ALL_QWEN3_VOCAB = 1.0  # whole-sequence loss over Qwen3's vocabulary: both peers chunk the loss

MODELS = {
    # a Qwen3-shaped model big enough that the matrix work dominates, built by medinject's tiny builder
    "tiny-256": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32},
    # the same with Qwen3's vocabulary (the tokenizer trained on the sample has fewer tokens: the rest are never seen)
    "qwen3-vocab": {"vocab_size": QWEN3_4B_INSTRUCT_2507.vocab_size, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32},
    # Qwen3-4B's shapes (the ones the memory estimate uses), random weights (built from the config only)
    "qwen3-4b-shape": dataclasses.asdict(QWEN3_4B_INSTRUCT_2507),
}
TINY_OVERRIDES = {name: [f"model.build_tiny.{k}={v}" for k, v in MODELS[name].items()] for name in ("tiny-256", "qwen3-vocab")}


def compose(args):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import medinject.config as config

    config.register()

    cuda = args.device == "cuda"
    overrides = [
        "paths.output_dir=" + str(Path(args.cache) / "unused-output"),
        f"paths.cache_dir={args.cache}",
        "data=native+synthetic+translated",
        "mix=natural",  # every training row of the sample once
        f"data.completion_only_loss={str(args.loss == 'completion').lower()}",  # the same objective for both peers
        f"data.max_length={args.max_length}",
        f"adapter={args.adapter}",
        f"trainer={'gpu' if cuda else 'cpu'}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.accumulate_grad_batches={args.grad_accum}",
        f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.max_epochs=1000",
        f"trainer.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"optim.lr={args.lr}",
        "logger=none",
    ]
    if args.model in TINY_OVERRIDES:
        overrides += TINY_OVERRIDES[args.model]
        if cuda:
            overrides.append("model.dtype=bfloat16")
    else:
        overrides += ["model=qwen3_4b_instruct", f"model.path={qwen3_4b_shape_dir(args)}", f"model.model_max_length={max(args.max_length, 2048)}"]
    with initialize_config_dir(config_dir=config.conf_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=overrides + list(args.overrides))


def qwen3_4b_shape_dir(args) -> Path:
    return Path(args.cache) / "models" / "qwen3-4b-shape-random"


def build_qwen3_4b_shape(args, tokenizer) -> Path:
    """Qwen3-4B's architecture with random bf16 weights, saved once (about 8 GB) with the tiny tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    target = qwen3_4b_shape_dir(args)
    if (target / "config.json").is_file():
        return target
    shape = dict(MODELS["qwen3-4b-shape"])
    config = Qwen3Config(
        **shape,
        max_position_embeddings=max(args.max_length, 4096),
        rope_theta=1_000_000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"building a random Qwen3-4B-shaped model on {device} into {target} ...", flush=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    staging = Path(tempfile.mkdtemp(prefix=".qwen3-4b-shape-", dir=target.parent if target.parent.exists() else None))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # leave the GPU to the measured runs
    os.replace(staging, target)
    return target


# ---------------------------------------------------------------------------------------------- child


class Meter:
    """Counts the tokens of the micro-batches the trainer runs and times optimizer steps
    warmup+1 .. warmup+steps. Counts stay on the device until a boundary (no per-step host sync)."""

    def __init__(self, warmup: int, steps: int, device: str):
        import torch

        self.warmup, self.steps, self.device = warmup, steps, device
        self.real = torch.zeros((), dtype=torch.long, device=device)
        self.total = 0
        self.start = self.end = None  # (time, real tokens, all tokens)

    def count(self, batch) -> None:
        ids = batch["input_ids"]
        self.total += ids.numel()
        mask = batch.get("attention_mask")
        self.real += mask.sum() if mask is not None else ids.numel()

    def _mark(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), int(self.real), self.total

    def step_done(self, global_step: int) -> bool:
        """Call after each micro-batch; True once the timed steps are done."""
        if global_step == self.warmup and self.start is None:
            self.start = self._mark()
        elif global_step == self.warmup + self.steps and self.end is None:
            self.end = self._mark()
        return self.end is not None

    def result(self) -> dict:
        (t0, r0, n0), (t1, r1, n1) = self.start, self.end
        real, total = r1 - r0, n1 - n0
        return {
            "seconds": t1 - t0,
            "tokens": real,
            "all_tokens": total,
            "tokens_per_s": real / (t1 - t0),
            "pad_fraction": 1 - real / total,
        }


def load(cfg):
    from medinject.train.datamodule import InstructionDataModule
    from medinject.config import DataSettings
    from medinject.data.prepare import prepare_data
    from medinject.model.load import attach_adapter, load_tokenizer_and_model

    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    model = attach_adapter(base, cfg.adapter, cfg.trainer.gradient_checkpointing)
    prepared = prepare_data(DataSettings.of(cfg))
    datamodule = InstructionDataModule(cfg, tokenizer, prepared.examples, prepared.manifest["files"])
    datamodule.setup("fit")
    return tokenizer, model, datamodule


def run_medinject(cfg, args, meter: Meter) -> None:
    import lightning as L

    from medinject.train.lit import AdapterFineTuning
    from medinject.train.fit import trainer_arguments

    _, model, datamodule = load(cfg)

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            meter.count(batch)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if meter.step_done(trainer.global_step):
                trainer.should_stop = True

    module = AdapterFineTuning(model, cfg.optim)
    trainer = L.Trainer(
        **{**trainer_arguments(cfg), "devices": 1, "enable_progress_bar": False},
        enable_checkpointing=False,
        logger=False,
        default_root_dir=tempfile.mkdtemp(prefix="medinject-bench-"),
        callbacks=[Timing()],
    )
    reset_peak(args)
    trainer.fit(module, datamodule=datamodule)


def run_trl(cfg, args, meter: Meter) -> None:
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer, model, datamodule = load(cfg)
    cuda = args.device == "cuda"

    settings = dict(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        weight_decay=cfg.optim.weight_decay,
        max_grad_norm=cfg.trainer.gradient_clip_val,
        optim="adamw_torch",
        max_steps=args.warmup + args.steps,
        bf16=cuda,
        fp16=False,
        use_cpu=not cuda,
        # the model comes prepared by medinject's loader (adapter, k-bit preparation, checkpointing)
        gradient_checkpointing=False,
        # the study's script: padded batches grouped by length, no packing
        packing=False,
        padding_free=False,
        completion_only_loss=args.loss == "completion",
        assistant_only_loss=False,
        max_length=args.max_length,
        logging_steps=cfg.trainer.log_every_n_steps,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=cfg.seed,
    )
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    # the same warmup share as medinject's schedule (a float warmup_steps is a ratio in transformers 5)
    settings["warmup_ratio" if "warmup_ratio" in names else "warmup_steps"] = cfg.optim.warmup_ratio
    if "group_by_length" in names:  # transformers < 5.x
        settings["group_by_length"] = True
    else:
        settings["train_sampling_strategy"] = "group_by_length"
    config = SFTConfig(**settings)

    class Timing(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if meter.step_done(state.global_step):
                control.should_training_stop = True

    class MeteredSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, *rest, **kwargs):
            meter.count(inputs)
            return super().training_step(model, inputs, *rest, **kwargs)

    train_set = datamodule.train_set
    if args.loss == "completion":
        # prompt-completion data as TRL's own tokenization leaves it: TRL builds the labels from the mask
        train_set = train_set.map(lambda labels: {"completion_mask": [int(t != -100) for t in labels]}, input_columns="labels")
        train_set = train_set.remove_columns("labels")
    trainer = MeteredSFTTrainer(
        model=model, args=config, train_dataset=train_set, processing_class=tokenizer, callbacks=[Timing()]
    )
    reset_peak(args)
    trainer.train()


def reset_peak(args) -> None:
    import torch

    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def child(args) -> dict:
    import torch

    cfg = compose(args)
    meter = Meter(args.warmup, args.steps, args.device)
    {"medinject": run_medinject, "trl": run_trl}[args.child](cfg, args, meter)
    if meter.end is None:
        raise SystemExit(f"{args.child}: training stopped before {args.warmup + args.steps} optimizer steps")
    out = meter.result()
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    if args.device == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return out


# --------------------------------------------------------------------------------------------- parent


def prepare(args) -> None:
    """Build the model and fill the token cache outside the timed children."""
    from medinject.train.datamodule import tokenized_dataset
    from medinject.config import DataSettings
    from medinject.data.prepare import prepare_data
    from medinject.model.tiny import ensure_tiny

    tiny_args = argparse.Namespace(**{**vars(args), "model": args.model if args.model in TINY_OVERRIDES else "tiny-256"})
    tiny_cfg = compose(tiny_args)
    tiny = ensure_tiny(tiny_cfg.model.path, tiny_cfg.model.build_tiny, tiny_cfg.model.model_max_length)
    if args.model == "qwen3-4b-shape":
        from transformers import AutoTokenizer

        build_qwen3_4b_shape(args, AutoTokenizer.from_pretrained(str(tiny)))
    cfg = compose(args)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prepared = prepare_data(DataSettings.of(cfg))
    _, stats, _ = tokenized_dataset(prepared.examples, prepared.manifest["files"], tokenizer, cfg)
    print(f"data: {stats['examples']} examples, {stats['tokens']} tokens (max length {args.max_length}); model {args.model} at {cfg.model.path}", flush=True)


def spawn(args, peer: str) -> dict:
    argv = [sys.executable, __file__, "--child", peer]
    for key in ("adapter", "device", "steps", "warmup", "model", "loss", "max_length", "batch_size", "grad_accum", "lr", "cache"):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    argv.append("--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing")
    argv += list(args.overrides)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"{peer} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", choices=["qlora", "lora", "dora", "qdora"], default="qlora")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", "--shape", dest="model", choices=sorted(MODELS), default="tiny-256")
    parser.add_argument("--loss", choices=["all", "completion"], default="all",
                        help="all: loss on the whole sequence (the study's); completion: the prompt masked out")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before timing (at least 1)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for qwen3-4b-shape, off for tiny-256 (the same for both peers)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the peers this many times; medians are reported")
    parser.add_argument("--peers", default="medinject,trl")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "medinject-bench-train"))
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--child", choices=["medinject", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both peers")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = args.model == "qwen3-4b-shape"
    for key, value in (("HF_HUB_OFFLINE", "1"), ("WANDB_MODE", "offline"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    if args.child:
        print(json.dumps(child(args)))
        return

    import torch
    import transformers
    import trl

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    peers = [p for p in args.peers.split(",") if p]
    prepare(args)
    runs: dict[str, list[dict]] = {p: [] for p in peers}
    for i in range(args.repeats):
        for peer in peers:
            r = spawn(args, peer)
            runs[peer].append(r)
            mem = f", peak GPU {r['peak_gpu_gb']:.2f} GB" if "peak_gpu_gb" in r else ""
            print(
                f"[{i + 1}/{args.repeats}] {peer:>9}: {r['tokens']} non-pad tokens in {r['seconds']:.2f} s = "
                f"{r['tokens_per_s']:.0f} tok/s, pad {r['pad_fraction']:.2%}, peak RSS {r['peak_rss_gb']:.2f} GB{mem}",
                flush=True,
            )

    summary = {}
    for peer, rs in runs.items():
        summary[peer] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "pad_fraction": statistics.median(r["pad_fraction"] for r in rs),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in rs),
            **({"peak_gpu_gb": max(r["peak_gpu_gb"] for r in rs)} if "peak_gpu_gb" in rs[0] else {}),
            "runs": rs,
        }
    gpu = args.device == "cuda"
    device_name = torch.cuda.get_device_name() if gpu else f"cpu, {torch.get_num_threads()} threads"
    print()
    print(f"{args.model}, {args.adapter}, loss on {args.loss}, {device_name}; {args.batch_size} examples x {args.grad_accum} micro-batches per step, "
          f"max length {args.max_length}, {args.steps} timed steps after {args.warmup}; median of {args.repeats}")
    print("| peer | non-pad tokens/s | pad fraction | peak RSS (GB) |" + (" peak GPU (GB) |" if gpu else ""))
    print("|---|---|---|---|" + ("---|" if gpu else ""))
    for peer, s in summary.items():
        print(f"| {peer} | {s['tokens_per_s']:.0f} | {s['pad_fraction']:.2%} | {s['peak_rss_gb']:.2f} |" + (f" {s['peak_gpu_gb']:.2f} |" if gpu else ""))
    ratio = None
    if "medinject" in summary and "trl" in summary:
        ratio = summary["medinject"]["tokens_per_s"] / summary["trl"]["tokens_per_s"]
        pad = summary["medinject"]["pad_fraction"]
        target = TARGET_RATIO_ALL_QWEN3_VOCAB if (args.model, args.loss) == ("qwen3-vocab", "all") else TARGET_RATIO
        rss = summary["medinject"]["peak_rss_gb"] / summary["trl"]["peak_rss_gb"]
        print(f"\npeak RSS medinject / TRL: {rss:.2f} (target <= 1); medinject pad fraction {pad:.2%} (target <= {TARGET_PAD:.0%}); "
              f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
        print(f"medinject / TRL non-pad tokens/s: {ratio:.2f}x (target >= {target}x)")
    if args.json_out:
        extra = {}
        if "medinject" in summary:  # what the batches held, and the dry run's estimate for that many tokens
            from medinject.sweep.estimate import estimate_for_run

            ours = summary["medinject"]["runs"]
            per_micro_batch = statistics.median(r["all_tokens"] for r in ours) / (args.steps * args.grad_accum)
            summary["medinject"]["tokens_per_micro_batch"] = per_micro_batch
            estimate = estimate_for_run(compose(args), seq_len=max(1, round(per_micro_batch / args.batch_size)))
            extra["estimate_gib"] = estimate.peak_allocated / 2**30
        Path(args.json_out).write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items() if k != "child"},
            "device": device_name,
            "torch": torch.__version__,
            "summary": summary,
            "ratio": ratio,
            **extra,
        }, indent=2))


if __name__ == "__main__":
    main()
