"""Hydra accepts sweepers only from the `hydra_plugins` namespace package; medinject's lives here and
its logic in `medinject.sweep`."""

from medinject.sweep import SweeperWithSummary


class ProvenanceSweeper(SweeperWithSummary):
    pass
