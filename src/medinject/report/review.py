"""Human review of open answers, blinded.

    python -m medinject.report.review export <sweep or run dirs...> --out review/ [--per-run 20] [--seed 0]
    python -m medinject.report.review import review/ratings.csv [--key review/key.csv]

`export` samples open answers from every run found under the given directories, shuffles them across
runs and writes `review.csv` (uid, question, reference, answer, rating — blank) for clinicians, with
nothing that tells which configuration wrote an answer, and `key.csv` apart (uid -> run, config,
item, judge verdict, per-item automatic metrics). `import` reads the filled-in ratings (1 = the
answer covers the essential information of the reference, 0 = it does not), joins them with the key
and reports judge-human agreement (accuracy, Cohen's kappa) and the Spearman correlation of each
automatic metric with the ratings, also written to `agreement.json` beside the ratings.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from medinject.util import rundir
from medinject.util.cli import tool
from medinject.util.errors import UserError
from medinject.util.io import check_writable, write_json_atomic, write_text_atomic

REVIEW_FIELDS = ["uid", "question", "reference", "answer", "rating"]
METRICS = ["judge", "rougeL", "bleu", "answer_words"]


def _runs(paths: list[Path]) -> list[tuple[Path, rundir.RunRecord]]:
    """(run directory, its record) of every completed run under `paths`."""
    found = sorted({run for path in paths for run in rundir.run_dirs(path)})
    runs = [(r, results) for r in found if (results := rundir.read_results(r)).get("status") == "completed"]
    if not runs:
        raise UserError(f"review export: no completed run ({rundir.RESULTS}) under {', '.join(map(str, paths))}")
    return runs


def _csv(rows: list[dict], fields: list[str]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def export(paths: list[Path], out: Path, per_run: int, seed: int) -> int:
    import evaluate

    from medinject.eval.runner import metric_module

    check_writable(out)
    rouge = evaluate.load(metric_module("rouge"), keep_in_memory=True)
    bleu = evaluate.load(metric_module("bleu"), keep_in_memory=True)
    rng = random.Random(seed)
    picked = []
    for run, results in _runs(paths):
        answers = [p for p in rundir.read_predictions(run) if p.get("task") == "oeq"]
        for record in rng.sample(answers, min(per_run, len(answers))):
            picked.append((run, results["data"]["config"], results["data"].get("seed"), record))
    rng.shuffle(picked)
    review, key = [], []
    for n, (run, config, run_seed, record) in enumerate(picked, start=1):
        uid = f"R{n:05d}"
        review.append({"uid": uid, "question": record["question"], "reference": record["reference"], "answer": record["output"], "rating": ""})
        key.append(
            {
                "uid": uid,
                "run_dir": str(run),
                "config": config,
                "seed": run_seed,
                "test_set": record["test_set"],
                "item_id": record["id"],
                "judge": "" if record.get("judge") is None else record["judge"],
                "rougeL": rouge.compute(predictions=[record["output"]], references=[record["reference"]])["rougeL"],
                "bleu": bleu.compute(predictions=[record["output"]], references=[record["reference"]])["bleu"],
                "answer_words": len(record["output"].split()),
            }
        )
    write_text_atomic(out / "review.csv", _csv(review, REVIEW_FIELDS))
    write_text_atomic(out / "key.csv", _csv(key, list(key[0]) if key else ["uid"]))
    return len(review)


def cohen_kappa(a: list[int], b: list[int]) -> float:
    """Cohen's kappa of two raters (scikit-learn's); 1.0 when both gave one and the same rating to
    every answer, where the chance agreement is 1 and kappa itself is 0 / 0."""
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(cohen_kappa_score(a, b))


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (scipy's, ties at their mean rank); None when either side is
    constant, where no correlation is defined."""
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def import_ratings(ratings_path: Path, key_path: Path) -> dict:
    def read(path: Path) -> list[dict]:
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, strict=True)  # strict: a broken quote is an error, not one long field
            try:
                return list(reader)
            except csv.Error as err:
                raise UserError(f"{path}:{reader.line_num}: not valid CSV ({err}); the file is damaged") from None
            except UnicodeDecodeError:
                raise UserError(f"{path}: not UTF-8 text") from None

    key = {}
    for line, row in enumerate(read(key_path), start=2):
        if (row.get("judge") or "") not in ("", "0", "1"):
            raise UserError(f"{key_path}:{line}: field 'judge': {row['judge']!r} is not 0, 1 or empty")
        key[row.get("uid")] = row
    pairs = []
    for line, row in enumerate(read(ratings_path), start=2):
        rating = (row.get("rating") or "").strip()
        if rating == "":
            continue
        if rating not in ("0", "1"):
            raise UserError(f"{ratings_path}:{line}: field 'rating': {rating!r} is not 0 or 1")
        if row.get("uid") not in key:
            raise UserError(f"{ratings_path}:{line}: field 'uid': {row.get('uid')!r} is not in {key_path}")
        pairs.append((int(rating), key[row["uid"]]))
    if not pairs:
        raise UserError(f"{ratings_path}: no rating filled in")
    human = [r for r, _ in pairs]
    judged = [(r, int(k["judge"])) for r, k in pairs if k.get("judge") not in ("", None)]
    report = {"rated": len(pairs), "human_positive_rate": sum(human) / len(human)}
    if judged:
        h, j = [a for a, _ in judged], [b for _, b in judged]
        report["judge"] = {"n": len(judged), "accuracy": sum(a == b for a, b in judged) / len(judged), "cohen_kappa": cohen_kappa(h, j)}
    report["spearman_with_human"] = {
        m: spearman([float(k[m]) for _, k in pairs if k.get(m) not in ("", None)], [r for r, k in pairs if k.get(m) not in ("", None)])
        for m in METRICS
        if any(k.get(m) not in ("", None) for _, k in pairs)
    }
    write_json_atomic(ratings_path.parent / "agreement.json", report)
    return report


@tool
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medinject.report.review", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("export", help="blinded CSV sample of open answers")
    ex.add_argument("paths", nargs="+", type=Path)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--per-run", type=int, default=20)
    ex.add_argument("--seed", type=int, default=0)
    im = commands.add_parser("import", help="agreement of ratings with the judge and the metrics")
    im.add_argument("ratings", type=Path)
    im.add_argument("--key", type=Path, help="default: key.csv beside the ratings")
    args = parser.parse_args(argv)
    if args.command == "export":
        n = export(args.paths, args.out, args.per_run, args.seed)
        print(f"{n} answers -> {args.out / 'review.csv'} (key apart: {args.out / 'key.csv'})")
    else:
        report = import_ratings(args.ratings, args.key or args.ratings.parent / "key.csv")
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
