"""`python -m medinject.report <sweep dir>`: the sweep report (see medinject.report.build)."""

from medinject.report.cli import main

main()
