"""Evaluation speed: vLLM, batched transformers and a per-item loop, same model, items, prompts and decodings.

    python bench/eval_speed.py [--batch-size 32] [--device cpu|cuda] [overrides...]

The per-item loop is what a simple evaluation script does (and the study's released one): for every
multiple-choice item, one greedy `generate` call and one constrained call, batch size 1. medinject's
transformers path runs the same two decodings in left-padded batches of similar length from one shared
prefill (`eval.backend=hf`); its vLLM path hands all of them to a vLLM engine at once
(`eval.backend=vllm`, the same allowed tokens per step through a logits processor). All three use
medinject's prompt, letter rule and metric module, so their EM / Hamming must agree. vLLM's engine
start-up (imports, model load, memory profiling) is timed and printed apart from its items/s.

Model: a Qwen3-shaped model built offline in a shape vLLM's CPU attention accepts (model=tiny_vllm,
widened to hidden 256, 4 layers, 4 heads of 64) with a fresh LoRA adapter (served to vLLM as a LoRA
request), over the native and translated mcqu + mcq test items of the bundled sample.
"""

from __future__ import annotations

import argparse
import time

TARGET = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-path", help="evaluate this model folder (e.g. the random Qwen3-4B-shaped one of "
                        "train_throughput.py --shape qwen3-4b-shape) instead of the widened tiny model")
    parser.add_argument("--no-vllm", action="store_true", help="the two transformers paths only")
    parser.add_argument("--json", dest="json_out", help="write the figures here as JSON")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    import medinject.config as config

    config.register()
    from medinject.data.prepare import load_test_sets
    from medinject.eval.runner import Evaluator, eval_items
    from medinject.model.load import attach_adapter, load_tokenizer_and_model

    overrides = [
        "paths.output_dir=/tmp/medinject-bench-unused",
        "model=tiny_vllm",
        "model.build_tiny.hidden_size=256",
        "model.build_tiny.intermediate_size=768",
        "model.build_tiny.num_hidden_layers=4",
        "model.build_tiny.num_attention_heads=4",
        "model.build_tiny.num_key_value_heads=2",
        "adapter=lora",
        "eval.tasks=[mcqu,mcq]",
        *([f"model.path={args.model_path}", "model.build_tiny=null", "model.dtype=bfloat16", "model.model_max_length=2048"] if args.model_path else []),
        *args.overrides,
    ]
    with initialize_config_dir(config_dir=config.conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    model = attach_adapter(base, cfg.adapter, gradient_checkpointing=False)
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # a non-zero adapter, so the LoRA request does something
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    if args.device != "cpu":
        model.to(args.device)
    test_rows = {name: loaded.rows.examples() for name, loaded in load_test_sets(cfg.eval.test_sets, cfg.paths).items()}
    items = eval_items(cfg, test_rows)
    n_items = sum(len(v) for by_task in items.values() for v in by_task.values())

    results = {}
    for label, batch_size in (("per-item loop", 1), ("hf batched", args.batch_size)):
        cfg.eval.batch_size = batch_size
        start = time.perf_counter()
        metrics, _ = Evaluator(cfg).run(model, tokenizer, items)
        seconds = time.perf_counter() - start
        results[label] = (metrics, n_items / seconds)
        print(f"{label:>14}: batch {batch_size:3d}, {n_items} items x 2 decodings in {seconds:6.1f} s = {n_items / seconds:7.2f} items/s", flush=True)

    if args.no_vllm:
        ratio_hf = results["hf batched"][1] / results["per-item loop"][1]
        print(f"hf batched / per-item {ratio_hf:.1f}x (target >= {TARGET:.0f}x); {n_items} items on {args.device}, torch {torch.__version__}")
        if args.json_out:
            import json
            from pathlib import Path

            Path(args.json_out).write_text(json.dumps({"items": n_items, "per_item_items_per_s": results["per-item loop"][1],
                                                       "batched_items_per_s": results["hf batched"][1], "ratio": ratio_hf}))
        return
    from medinject.eval.vllm_backend import VllmEngine

    start = time.perf_counter()
    with VllmEngine.for_run(model, tokenizer, cfg) as engine:
        startup = time.perf_counter() - start
        print(f"{'vllm':>14}: engine start-up {startup:.1f} s (not counted below)", flush=True)
        start = time.perf_counter()
        metrics, _ = Evaluator(cfg, engine=engine).run(model, tokenizer, items)
        seconds = time.perf_counter() - start
    results["vllm"] = (metrics, n_items / seconds)
    print(f"{'vllm':>14}: all at once, {n_items} items x 2 decodings in {seconds:6.1f} s = {n_items / seconds:7.2f} items/s", flush=True)

    loop = results["per-item loop"][0]
    scored = [k for k in loop if k.rsplit("/", 1)[1] in ("em", "hamming", "em_constrained", "hamming_constrained")]
    for k in scored:
        print(f"  {k:40s} " + "  ".join(f"{label} {r[0][k]:.4f}" for label, r in results.items()))
    same = {label: all(abs(loop[k] - r[0][k]) < 1e-9 for k in scored) for label, r in results.items()}
    constrained = [k for k in scored if k.endswith("_constrained")]
    same_constrained = all(abs(loop[k] - results["vllm"][0][k]) < 1e-9 for k in constrained)
    ratio_hf = results["hf batched"][1] / results["per-item loop"][1]
    ratio = results["vllm"][1] / results["per-item loop"][1]
    print(f"identical EM/Hamming to the loop: hf batched {same['hf batched']}, vllm {same['vllm']}; hf batched / per-item {ratio_hf:.1f}x; "
          f"target >= {TARGET:.0f}x; on {args.device}, torch {torch.__version__}")
    print(f"vllm / per-item items/s: {ratio:.1f}x; identical constrained EM: {'yes' if same_constrained else 'no'}")


if __name__ == "__main__":
    main()
