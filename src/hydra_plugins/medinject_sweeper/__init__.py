"""Hydra accepts sweepers only from the `hydra_plugins` namespace package; medinject's lives here and
its logic in `medinject.sweep.sweeper`. Hydra imports this package when it scans for plugins, before
it composes a config, which is when `hydra/sweeper: medinject` gets its schema."""

from hydra.core.config_store import ConfigStore

from medinject.sweep.sweeper import ProvenanceSweeperConf, SweeperWithSummary


class ProvenanceSweeper(SweeperWithSummary):
    pass


ConfigStore.instance().store(group="hydra/sweeper", name="medinject", node=ProvenanceSweeperConf, provider="medinject")
