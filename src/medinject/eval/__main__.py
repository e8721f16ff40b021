"""`python -m medinject.eval <run dir> [key=value ...]`: re-evaluate a trained run (see medinject.eval.reevaluate)."""

from medinject.eval.reevaluate import main

main()
