"""Multi-process JAX start-up from the environment (call once, before anything touches a JAX device).

Order of precedence:
1. explicit arguments / flags, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID;
2. SLURM (GPU clusters): SLURM_NTASKS > 1, SLURM_PROCID, coordinator = first host of SLURM_STEP_NODELIST
   (or SLURM_JOB_NODELIST) on JAX_COORDINATOR_PORT (default 12321);
3. Cloud TPU VMs: jax.distributed.initialize() with no arguments (libtpu finds the pod's hosts itself);
4. otherwise a single process: nothing to do.
"""
import os
import re
from typing import Mapping, Optional

import jax
from absl import logging

DEFAULT_PORT = 12321


def expand_first_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'; 'a,b' -> 'a'."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("empty SLURM node list")
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    prefix, ranges = m.group(1), m.group(3)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _on_tpu_vm(env: Mapping[str, str]) -> bool:
    # TPU VM hosts expose /dev/accel* (v2-v5e) or /dev/vfio (v5p+); pods also set these env vars.
    if any(k in env for k in ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")):
        return env.get("JAX_PLATFORMS", "") in ("", "tpu")
    return env.get("JAX_PLATFORMS", "") in ("", "tpu") and (
        os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio/devices"))


def resolve(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
            process_id: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """The jax.distributed.initialize kwargs this environment asks for; None = single process.

    {} means "initialize() with no arguments" (TPU pods).
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
    ntasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if ntasks > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        if not nodelist:
            raise ValueError("SLURM_NTASKS > 1 but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set")
        port = int(env.get("JAX_COORDINATOR_PORT", DEFAULT_PORT))
        return dict(coordinator_address=f"{expand_first_host(nodelist)}:{port}", num_processes=ntasks,
                    process_id=int(env["SLURM_PROCID"]))
    if _on_tpu_vm(env):
        return {}
    return None


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
    logging.info("jax.distributed.initialize(%s)", kwargs)
    jax.distributed.initialize(**kwargs)
    return True
