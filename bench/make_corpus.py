"""Write a synthetic corpus with the size and shape of MedInjection-FR's ALL snapshot.

    python bench/make_corpus.py /tmp/medinjection-bench        # 571,436 rows, ~1 minute
    python bench/make_corpus.py /tmp/small --scale 0.01

Layout: <out>/ALL/data/{train,validation,test}-0000N-of-0000M.parquet with the columns instruction,
context, answer, type, origin, exactly as on the hub. Row counts per split are the real ones
(500,439 / 43,066 / 27,931), origins in the real proportions (native 77,247, synthetic 76,506,
translated 417,674 over all splits), task types and text lengths drawn per origin (native: short exam
stems; synthetic: clinical-case contexts; translated: long vignettes). Words are drawn from the bundled
sample's vocabulary, so texts look French to a tokenizer but no two rows share long word sequences by
accident (the contamination audit would otherwise flag generated rows). Generated data is not committed.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medinject.config import sample_data_dir

SPLITS = {"train": 500_439, "validation": 43_066, "test": 27_931}
ORIGINS = {"native": 77_247, "synthetic": 76_506, "translated": 417_674}
TYPES = {  # share of mcqu / mcq / oeq per origin (assumed; the real split is not published per origin)
    "native": (0.45, 0.35, 0.20),
    "synthetic": (0.35, 0.25, 0.40),
    "translated": (0.55, 0.15, 0.30),
}
WORDS = {  # mean words of (instruction, context before options, each option, open answer)
    "native": (18, 25, 6, 45),
    "synthetic": (16, 110, 7, 70),
    "translated": (20, 150, 5, 60),
}
STEMS = {
    "mcqu": "Quelle est la proposition exacte ?",
    "mcq": "Parmi les propositions suivantes, lesquelles sont exactes ?",
    "oeq": "Répondez à la question suivante :",
}


def vocabulary() -> np.ndarray:
    words = set()
    for path in Path(sample_data_dir()).rglob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            words.update(re.findall(r"[^\W\d_]{2,}", f"{row['instruction']} {row['context']} {row['answer']}"))
    return np.array(sorted(words))


def text(rng: np.random.Generator, vocab: np.ndarray, mean: int) -> str:
    n = max(3, int(rng.lognormal(np.log(mean), 0.45)))
    return " ".join(vocab[rng.integers(0, len(vocab), n)])


def row(rng: np.random.Generator, vocab: np.ndarray, origin: str, length_scale: float = 1.0) -> dict:
    type_ = rng.choice(["mcqu", "mcq", "oeq"], p=TYPES[origin])
    n_instr, n_ctx, n_opt, n_ans = WORDS[origin]
    n_ctx = max(1, round(n_ctx * length_scale))
    instruction = f"{text(rng, vocab, n_instr)} {STEMS[type_]}"
    context = text(rng, vocab, n_ctx) if origin != "native" or rng.random() < 0.3 else ""
    if type_ == "oeq":
        return {"instruction": instruction, "context": context, "answer": text(rng, vocab, n_ans), "type": type_, "origin": origin}
    options = "\n".join(f"{letter}. {text(rng, vocab, n_opt)}" for letter in "ABCDE")
    context = f"{context}\n\n{options}" if context else options
    if type_ == "mcqu":
        answer = "ABCDE"[rng.integers(0, 5)]
    else:
        k = int(rng.integers(2, 5))
        answer = ", ".join(sorted(rng.choice(list("ABCDE"), size=k, replace=False)))
    return {"instruction": instruction, "context": context, "answer": answer, "type": type_, "origin": origin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length-scale", type=float, default=1.0,
                        help="contexts this many times longer (bench/gpu_shape.py: rows near 2,048 tokens)")
    parser.add_argument("--rows-per-shard", type=int, default=100_000)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    vocab = vocabulary()
    total = sum(ORIGINS.values())
    origin_names = list(ORIGINS)
    origin_p = np.array([ORIGINS[o] for o in origin_names]) / total
    folder = args.out / "ALL" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for split, n_rows in SPLITS.items():
        n_rows = max(1, round(n_rows * args.scale))
        shards = (n_rows + args.rows_per_shard - 1) // args.rows_per_shard
        for shard in range(shards):
            count = min(args.rows_per_shard, n_rows - shard * args.rows_per_shard)
            origins = rng.choice(origin_names, size=count, p=origin_p)
            rows = [row(rng, vocab, o, args.length_scale) for o in origins]
            path = folder / f"{split}-{shard:05d}-of-{shards:05d}.parquet"
            pq.write_table(pa.Table.from_pylist(rows), path)
            print(f"{path} ({count} rows, {time.perf_counter() - start:.0f}s)", flush=True)
    print(f"done: {args.out} ({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
