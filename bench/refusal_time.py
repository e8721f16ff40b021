"""Time a refused setting against a valid `--cfg job`, each in a fresh process through the real CLI.

    python bench/refusal_time.py [--repeat 5] [--root CHECKOUT] [overrides of the refused run...]

Prints the median wall-clock seconds of `python train.py optim.lr=-1` (refused with one line, exit 2)
next to `python train.py --cfg job` (compose and print only), with the target: the refusal answers
in <= 3 s on 2 cores. Exits 1 when the refusal misses it or does not exit 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 3.0


def _timed(args: list[str], env: dict, root: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "train.py", *args], cwd=root, capture_output=True, text=True, env=env, timeout=600)
    last = (result.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - started, result.returncode, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose train.py is timed (another commit's, to compare)")
    parser.add_argument("overrides", nargs="*", default=["optim.lr=-1"], help="what the refused run is given (default optim.lr=-1)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(args.root.resolve() / "src")}
    refusal, valid, status, line = [], [], None, ""
    with tempfile.TemporaryDirectory(prefix="medinject-refusal-") as tmp:
        for i in range(args.repeat):
            seconds, status, line = _timed([*args.overrides, f"hydra.run.dir={tmp}/run{i}"], env, args.root)
            refusal.append(seconds)
            seconds, valid_status, _ = _timed(["--cfg", "job"], env, args.root)
            if valid_status != 0:
                print(f"`train.py --cfg job` failed with status {valid_status}", file=sys.stderr)
                return 1
            valid.append(seconds)
    refused_s, valid_s = statistics.median(refusal), statistics.median(valid)
    print(f"cores: {os.cpu_count()}  repeats: {args.repeat}")
    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'max s':>7}")
    print(f"{'train.py ' + ' '.join(args.overrides):<40} {refused_s:>9.2f} {min(refusal):>7.2f} {max(refusal):>7.2f}  (exit {status}: {line})")
    print(f"{'train.py --cfg job':<40} {valid_s:>9.2f} {min(valid):>7.2f} {max(valid):>7.2f}")
    ok = status == 2 and refused_s <= TARGET_S
    print(f"refusal: {refused_s:.2f} s, target <= {TARGET_S:.0f} s with exit 2: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
