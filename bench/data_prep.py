"""Time the data stage on a MedInjection-FR-sized corpus: load -> validate -> decontaminate -> mix -> tokenize.

    python bench/make_corpus.py /tmp/medinjection-bench
    python bench/data_prep.py /tmp/medinjection-bench [--budget 30000] [overrides...]

Runs the stage twice in fresh processes on one empty cache: a full pass, then a rerun that finds the
selection and token caches. Prints seconds and peak RSS of each against the targets (full pass
<= 120 s and <= 3 GB on 2 cores, cached rerun <= 5 s). The sweep default (all three sources, equal
budget) is used; the contamination audit compares every training row with every test item.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

TARGETS = {"full_s": 120.0, "full_rss_gb": 3.0, "cached_s": 5.0}


def compose(corpus: str, cache: str, budget: int, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import medinject.config as config

    config.register()

    with initialize_config_dir(config_dir=config.conf_dir(), version_base="1.3"):
        return hydra_compose(
            "train",
            overrides=[
                f"paths.medinjection={corpus}",
                f"paths.cache_dir={cache}",
                "paths.output_dir=/tmp/medinject-bench-unused",
                "data=native+synthetic+translated",
                f"mix.budget={budget}",
                *extra,
            ],
        )


def measure(corpus: str, cache: str, budget: int, extra: list[str]) -> dict:
    """One pass in this process (called in a child)."""
    from medinject.train.datamodule import tokenized_dataset
    from medinject.config import DataSettings
    from medinject.data.prepare import prepare_data
    from medinject.model.load import load_tokenizer_and_model

    cfg = compose(corpus, cache, budget, extra)
    tokenizer, _ = load_tokenizer_and_model(cfg.model, compose(corpus, cache, budget, ["adapter=lora"]).adapter)
    start = time.perf_counter()
    prepared = prepare_data(DataSettings.of(cfg))
    selected = time.perf_counter()
    dataset, stats, hit = tokenized_dataset(prepared.examples, prepared.manifest["files"], tokenizer, cfg)
    done = time.perf_counter()
    return {
        "seconds": done - start,
        "select_seconds": selected - start,
        "tokenize_seconds": done - selected,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "rows_per_source": {k: v["rows"] for k, v in prepared.manifest["sources"].items()},
        "contaminated": prepared.manifest["contaminated_rows"],
        "selected": len(prepared.examples),
        "tokens": stats["tokens"],
        "token_cache_hit": hit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--budget", type=int, default=30_000)
    parser.add_argument("--cache")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.corpus, args.cache, args.budget, args.overrides)))
        return

    cache = tempfile.mkdtemp(prefix="medinject-bench-cache-")
    # build the tiny tokenizer outside the timed runs
    from medinject.model.load import load_tokenizer_and_model

    cfg = compose(args.corpus, cache, args.budget, ["adapter=lora"])
    load_tokenizer_and_model(cfg.model, cfg.adapter)

    results = {}
    for phase in ("full", "cached"):
        out = subprocess.run(
            [sys.executable, __file__, args.corpus, "--child", "--cache", cache, "--budget", str(args.budget), *args.overrides],
            capture_output=True, text=True, check=True,
        )
        results[phase] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[phase]
        print(
            f"{phase:>6}: {r['seconds']:7.1f} s (select {r['select_seconds']:.1f} s, tokenize {r['tokenize_seconds']:.1f} s), "
            f"peak RSS {r['peak_rss_gb']:.2f} GB, {r['selected']} examples, {r['tokens']} tokens, token cache hit: {r['token_cache_hit']}",
            flush=True,
        )
    full, cached = results["full"], results["cached"]
    print(f"rows per source: {full['rows_per_source']}; contaminated rows: {full['contaminated']}")
    print(
        f"targets: full pass {full['seconds']:.1f} / {TARGETS['full_s']:.0f} s, "
        f"peak RSS {full['peak_rss_gb']:.2f} / {TARGETS['full_rss_gb']:.0f} GB, "
        f"cached rerun {cached['seconds']:.1f} / {TARGETS['cached_s']:.0f} s; "
        f"cached rerun is {full['seconds'] / cached['seconds']:.0f}x faster than the full pass"
    )


if __name__ == "__main__":
    main()
