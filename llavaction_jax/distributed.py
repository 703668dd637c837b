"""Multi-process JAX: start-up from the environment, and the small host collectives every part shares.

Start-up (`initialize_from_env`, call once, before anything touches a JAX device), order of precedence:
1. explicit arguments / flags, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID: passed to
   jax.distributed.initialize as overrides;
2. a multi-process cluster that jax.distributed.initialize() detects itself (its cluster detectors: SLURM with
   SLURM_NTASKS > 1, Open MPI's mpirun with OMPI_COMM_WORLD_SIZE > 1, Cloud TPU VMs / pods): initialize() with no
   arguments, so JAX reads the coordinator, process count and id (JAX_COORDINATOR_PORT sets the port);
3. otherwise a single process: nothing to do.

Collectives (`allgather_ints`, `gather_json`, `broadcast_json`): host-side values (stream positions, counts, JSON
records) exchanged between processes, each a no-op on one process. Every process must call them in the same order.
"""
import json
import os
from typing import List, Mapping, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def _on_tpu_vm(env: Mapping[str, str]) -> bool:
    # TPU VM hosts expose /dev/accel* (v2-v5e) or /dev/vfio (v5p+); pods also set these env vars.
    if any(k in env for k in ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")):
        return env.get("JAX_PLATFORMS", "") in ("", "tpu")
    return env.get("JAX_PLATFORMS", "") in ("", "tpu") and (
        os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio/devices"))


def detected_cluster(env: Mapping[str, str]) -> Optional[str]:
    """The multi-process launcher jax.distributed.initialize() will detect here, or None (one process).

    Only says whether there is more than one process; JAX's own cluster classes read the rest."""
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "ompi"
    if _on_tpu_vm(env):
        return "tpu"
    return None


def resolve(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
            process_id: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """The jax.distributed.initialize kwargs this environment asks for; None = single process.

    {} means "initialize() with no arguments": JAX detects the cluster (SLURM, Open MPI, TPU pods).
    """
    env = os.environ if env is None else env
    addr = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    n = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    if addr or n is not None or pid is not None:
        missing = [name for name, v in (("coordinator_address", addr), ("num_processes", n),
                                        ("process_id", pid)) if v in (None, "")]
        if missing:
            raise ValueError(f"multi-process start needs coordinator_address, num_processes and process_id; "
                             f"missing {missing} (flags or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
        n, pid = int(n), int(pid)
        if not 0 <= pid < n:
            raise ValueError(f"process_id {pid} is not in [0, num_processes={n})")
        return None if n == 1 else dict(coordinator_address=addr, num_processes=n, process_id=pid)
    return {} if detected_cluster(env) else None


def initialize_from_env(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                        process_id: Optional[int] = None, initialization_timeout: int = 300) -> bool:
    """Starts jax.distributed when the environment is multi-process; returns True if it did (or had)."""
    if jax.distributed.is_initialized():
        return True
    kwargs = resolve(coordinator_address, num_processes, process_id)
    if kwargs is None:
        return False
    if kwargs:
        kwargs["initialization_timeout"] = initialization_timeout
    logging.info("jax.distributed.initialize(%s) (%s)", kwargs, detected_cluster(os.environ) or "explicit")
    jax.distributed.initialize(**kwargs)
    return True


def allgather_ints(values) -> np.ndarray:
    """[process_count, len(values)] int64: every host's `values` (one tiny allgather; none on one process)."""
    local = np.asarray(values, np.int64).reshape(1, -1)
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local[0])).reshape(jax.process_count(), -1)


def gather_json(local: List) -> List:
    """Every host's list items on every host, host-major order; one pair of allgathers (lengths, then bytes)."""
    if jax.process_count() == 1:
        return list(local)
    payload = np.frombuffer(json.dumps(local).encode("utf-8"), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([payload.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:payload.size] = payload
    everything = multihost_utils.process_allgather(padded)
    out = []
    for host, size in enumerate(sizes):
        out.extend(json.loads(everything[host, :int(size)].tobytes().decode("utf-8")))
    return out


def broadcast_json(obj):
    """Process 0's JSON-able `obj` on every host."""
    if jax.process_count() == 1:
        return obj
    payload = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8) if jax.process_index() == 0 \
        else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.asarray([payload.size], np.int64))[0])
    padded = np.zeros(size, np.uint8)
    padded[:payload.size] = payload
    return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(padded)).tobytes().decode("utf-8"))
