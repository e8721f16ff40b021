"""Jobs SLURM will never start. A job array that asks for more than any node of its partition has
stays pending with a reason such as `PartitionConfig`, and the launcher, waiting for its results,
would wait forever without a word. `NeverStartsWatch` looks at the sweep's jobs while the launcher
waits; when one stays pending for such a reason, it cancels the sweep's jobs (the launcher then
returns) and keeps the reason for the sweeper's one-line error."""

from __future__ import annotations

import getpass
import logging
import re
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# squeue reasons that no amount of waiting resolves: the request does not fit the partition, the
# account or the QOS. (Resources, Priority, Dependency... are ordinary waiting.)
NEVER_STARTS = {
    "PartitionConfig": "the request exceeds what the partition's nodes have",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a time limit above the partition's",
    "ReqNodeNotAvail": "the requested nodes are unavailable",
    "BadConstraints": "constraints no node satisfies",
    "InvalidAccount": "an invalid account",
    "InvalidQOS": "an invalid QOS",
    "QOSMaxCpuPerJobLimit": "more CPUs than the QOS allows",
    "QOSMaxGRESPerJob": "more GPUs than the QOS allows",
    "QOSMaxMemoryPerJob": "more memory than the QOS allows",
    "QOSMaxWallDurationPerJobLimit": "a time limit above the QOS's",
    "AssocMaxCpuPerJobLimit": "more CPUs than the association allows",
    "AssocMaxWallDurationPerJobLimit": "a time limit above the association's",
}
LAUNCHER_KEYS = "hydra.launcher.cpus_per_task, mem_gb, gpus_per_node, tasks_per_node, nodes, timeout_min or partition"
_JOB_FOLDER = re.compile(r"^(\d+)(?:_\d+)?$")


class NeverStartsWatch(threading.Thread):
    def __init__(self, submitit_root: Path, grace_s: float = 30.0, interval_s: float = 5.0):
        super().__init__(daemon=True, name="medinject-slurm-watch")
        self.submitit_root = Path(submitit_root)
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.reason: str | None = None  # the one line, once the watch gave up on the sweep
        self._halt = threading.Event()
        self._first_seen: dict[str, float] = {}

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.interval_s + 5)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                if self._check():
                    return
            except (OSError, subprocess.SubprocessError) as err:  # squeue missing or failing: no watch
                log.debug("pending-job watch: %s", err)

    def job_ids(self) -> list[str]:
        if not self.submitit_root.is_dir():
            return []
        return sorted({m[1] for p in self.submitit_root.iterdir() if (m := _JOB_FOLDER.match(p.name))})

    def _check(self) -> bool:
        ids = self.job_ids()
        if not ids:
            return False
        # the user's queue, filtered here: `squeue -j` with an id the cluster has already purged fails outright
        out = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=30).stdout
        now = time.monotonic()
        for line in out.splitlines():
            job, state, reason = (line.split("|") + ["", ""])[:3]
            if job.split("_")[0] not in ids:
                continue
            reason = reason.split(",")[0].strip()
            if state != "PENDING" or reason not in NEVER_STARTS:
                self._first_seen.pop(job, None)
                continue
            first = self._first_seen.setdefault(job, now)
            if now - first >= self.grace_s:
                self.reason = (
                    f"SLURM will never start job {job}: pending with reason {reason} ({NEVER_STARTS[reason]}); "
                    f"change {LAUNCHER_KEYS} (on the one-node cluster of slurm/: hydra/launcher=slurm_onenode); "
                    f"the sweep's jobs were cancelled"
                )
                subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
                return True
        return False
