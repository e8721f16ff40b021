"""Batched evaluation against a per-item loop, same model, same items, same decoding.

    python bench/eval_speed.py [--batch-size 32] [--device cpu|cuda] [overrides...]

The per-item loop is what a simple evaluation script does (and the study's released one): for every
multiple-choice item, one greedy `generate` call and one constrained call, batch size 1. medinject
runs the same two decodings in left-padded batches of similar length. Both use medinject's prompt,
letter rule and metric module, so their EM / Hamming must agree; the script prints both and the
items/s ratio. Model: a Qwen3-shaped model built offline (hidden 256, 4 layers) with a fresh QLoRA
adapter, over the native and translated mcqu + mcq test items of the bundled sample.
"""

from __future__ import annotations

import argparse
import time

TARGET = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    import medinject.config as config
    from medinject.data.prepare import load_test_sets
    from medinject.eval.runner import Evaluator, eval_items
    from medinject.model.load import attach_adapter, load_tokenizer_and_model

    overrides = [
        "paths.output_dir=/tmp/medinject-bench-unused",
        "model.build_tiny.hidden_size=256",
        "model.build_tiny.intermediate_size=768",
        "model.build_tiny.num_hidden_layers=4",
        "model.build_tiny.num_attention_heads=8",
        "model.build_tiny.num_key_value_heads=4",
        "model.build_tiny.head_dim=32",
        "eval.tasks=[mcqu,mcq]",
        *args.overrides,
    ]
    with initialize_config_dir(config_dir=config.conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    model = attach_adapter(base, cfg.adapter, gradient_checkpointing=False)
    if args.device != "cpu":
        model.to(args.device)
    test_rows = {name: loaded.rows.examples() for name, loaded in load_test_sets(cfg).items()}
    items = eval_items(cfg, test_rows)
    n_items = sum(len(v) for by_task in items.values() for v in by_task.values())

    results = {}
    for label, batch_size in (("per-item loop", 1), ("medinject batched", args.batch_size)):
        cfg.eval.batch_size = batch_size
        start = time.perf_counter()
        metrics, _ = Evaluator(cfg).run(model, tokenizer, items)
        seconds = time.perf_counter() - start
        results[label] = (metrics, n_items / seconds)
        print(f"{label:>18}: batch {batch_size:3d}, {n_items} items x 2 decodings in {seconds:6.1f} s = {n_items / seconds:6.2f} items/s", flush=True)

    loop, batched = results["per-item loop"][0], results["medinject batched"][0]
    scored = [k for k in loop if k.rsplit("/", 1)[1] in ("em", "hamming", "em_constrained", "hamming_constrained")]
    same = all(abs(loop[k] - batched[k]) < 1e-9 for k in scored)
    for k in scored:
        print(f"  {k:40s} loop {loop[k]:.4f}  batched {batched[k]:.4f}")
    ratio = results["medinject batched"][1] / results["per-item loop"][1]
    print(f"identical EM/Hamming: {same}; speed-up {ratio:.1f}x (target >= {TARGET:.0f}x) on {args.device}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
