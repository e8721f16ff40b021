"""The study's shape on one GPU, one JSON line per figure (part of bench/gpu_check.sh).

    python bench/gpu_shape.py [--device cuda] [--budget-s 330]
    python bench/gpu_shape.py --rehearse        # the same steps on the CPU at the tiny shape (bench/gpu_rehearsal.sh)

* train: a Qwen3-4B-shaped model (built from its config with random bf16 weights, no hub) fine-tuned
  with DoRA in bf16 and with QLoRA, 12 sequences of up to 2,048 tokens per micro-batch, gradient
  checkpointing, a few optimizer steps: medinject's Lightning path against TRL's SFTTrainer on the same
  batches (bench/train_throughput.py), tokens/s side by side, and medinject's peak allocated GPU memory
  against the dry run's estimate for the tokens the batches held (medinject.sweep.estimate).
* eval: the multiple-choice items of the bundled test sets at that shape, the batched transformers path
  against the per-item loop, items/s (bench/eval_speed.py; goal >= 10x).

The training rows are the translated vignettes of a small synthetic corpus (bench/make_corpus.py,
contexts 3.5 times their usual length), so that micro-batches come near 12 x 2,048 tokens; the figures
say how many tokens they really held. Every figure is a line `{"figure": ..., ...}` on stdout; a step that fails
prints its error as a figure and the next one still runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def emit(figure: str, **values) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rehearse", action="store_true", help="CPU, tiny shape, one step: the plumbing only")
    parser.add_argument("--budget-s", type=float, default=330.0, help="seconds for all steps together")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "medinject-gpu-shape"))
    args = parser.parse_args()
    started = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - started)  # noqa: E731
    cache = Path(args.cache)
    corpus = cache / "corpus"
    if not (corpus / "ALL").is_dir():
        # translated contexts 3.5 times longer than usual: most rows reach 2,048 tokens and are cut there
        done = run([sys.executable, str(BENCH / "make_corpus.py"), str(corpus), "--scale", "0.001", "--length-scale", "3.5"], left())
        if done.returncode != 0:
            emit("error", step="corpus", error=done.stderr.strip().splitlines()[-1:])
            raise SystemExit(1)

    device = "cpu" if args.rehearse else args.device
    shape = ["--shape", "tiny-256"] if args.rehearse else ["--shape", "qwen3-4b-shape"]
    size = ["--batch-size", "1", "--max-length", "2048", "--warmup", "1", "--steps", "1"] if args.rehearse else \
           ["--batch-size", "12", "--max-length", "2048", "--warmup", "1", "--steps", "2"]
    data = [f"paths.medinjection={corpus}", "data=translated", "mix=natural"]
    for adapter in ("dora", "qlora"):
        out = cache / f"train-{adapter}.json"
        cmd = [sys.executable, str(BENCH / "train_throughput.py"), "--device", device, "--adapter", adapter, *shape, *size,
               "--grad-accum", "1", "--cache", str(cache / "train"), "--json", str(out), *data]
        if adapter == "dora" and not args.rehearse:
            cmd.append("model.dtype=bfloat16")
        t0 = time.perf_counter()
        done = run(cmd, left())
        if done.returncode != 0:
            emit("train", adapter=adapter, error=(done.stderr.strip().splitlines() or ["no output"])[-1])
            continue
        summary = json.loads(out.read_text())
        peers = summary.get("summary", summary)
        ours, trl = peers.get("medinject", {}), peers.get("trl", {})
        figure = {"adapter": adapter, "device": device, "seconds": round(time.perf_counter() - t0, 1),
                  "medinject_tokens_per_s": ours.get("tokens_per_s"), "trl_tokens_per_s": trl.get("tokens_per_s"),
                  "medinject_over_trl": (ours["tokens_per_s"] / trl["tokens_per_s"]) if ours.get("tokens_per_s") and trl.get("tokens_per_s") else None,
                  "tokens_per_micro_batch": ours.get("tokens_per_micro_batch")}
        if "peak_gpu_gb" in ours:
            figure["peak_allocated_gib"] = ours["peak_gpu_gb"]
            figure["estimate_gib"] = summary.get("estimate_gib")
            if figure["estimate_gib"]:
                figure["peak_over_estimate"] = ours["peak_gpu_gb"] / figure["estimate_gib"]
        emit("train", **figure)

    out = cache / "eval.json"
    model = ["eval.limit=4"] if args.rehearse else ["--model-path", str(cache / "train" / "models" / "qwen3-4b-shape-random")]
    done = run([sys.executable, str(BENCH / "eval_speed.py"), "--device", device, "--no-vllm", "--json", str(out), *model], left())
    if done.returncode != 0:
        emit("eval", error=(done.stderr.strip().splitlines() or ["no output"])[-1])
    else:
        emit("eval", device=device, **json.loads(out.read_text()), goal=10.0)
    emit("total", seconds=round(time.perf_counter() - started, 1), budget_s=args.budget_s)


if __name__ == "__main__":
    main()
