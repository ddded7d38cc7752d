"""A private multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``).

Head node: no CPU (as on the real cluster, it runs the driver and nothing else). Worker nodes:
one CPU and one logical GPU each, like a one-GPU cloud worker. Everything lives in its own temp
dir; the cluster is never found by ``address="auto"`` from elsewhere (the address file Ray writes
for convenience is put back as it was), and it never attaches to another Ray on the machine.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

WORKER = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": 80 * 1024 * 1024}


@contextlib.contextmanager
def _keep_ray_address_file() -> Iterator[None]:
    from ray._private.utils import get_ray_address_file

    f = Path(get_ray_address_file(None))
    before = f.read_text() if f.exists() else None
    # Ray's Cluster writes this file without creating its folder (/tmp/ray), which exists only if
    # some Ray once ran with the default temp dir on this machine: do not depend on that.
    made = not f.parent.exists()
    f.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        if before is None:
            f.unlink(missing_ok=True)
        else:
            f.write_text(before)
        if made:
            with contextlib.suppress(OSError):  # only if nothing else was put there meanwhile
                f.parent.rmdir()


class LocalCluster:
    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        # short path: Ray's unix socket names must stay under ~100 characters
        self.temp_dir = tempfile.mkdtemp(prefix="ncray", dir="/tmp")
        with _keep_ray_address_file():
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "num_gpus": 0, "temp_dir": self.temp_dir, "include_dashboard": False,
                "object_store_memory": 100 * 1024 * 1024})
        self.workers = []
        try:
            for _ in range(2):
                self.add_worker()
        except BaseException:
            self.shutdown()
            raise

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self):
        node = self.cluster.add_node(**WORKER)
        self.workers.append(node)
        self.cluster.wait_for_nodes()
        return node

    def node_by_id(self, node_id: str):
        return next(n for n in self.workers if n.node_id == node_id)

    def remove_worker(self, node) -> None:
        """Kill every process of that node at once (no graceful shutdown), as a lost VM would."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def ensure_workers(self, n: int = 2) -> None:
        while len(self.workers) < n:
            self.add_worker()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """All worker CPUs free again (trial actors of a previous study gone)."""
        import ray

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ray.available_resources().get("CPU", 0) >= len(self.workers):
                return True
            time.sleep(0.2)
        return False

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        with _keep_ray_address_file():
            self.cluster.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
