"""Where trials run: a local Ray instance in a temporary folder (removed at the end) or an existing cluster.

Everything here is checked before any work: resource flags against the machine, Tune callbacks against the
installed packages, and a cluster address by a short TCP probe (an address where nothing listens fails in seconds
with the address named, instead of hanging on Ray's connection retries). Ray >= 2.5x starts clusters with token
authentication when a token exists (``~/.ray/auth_token``), but a driver given an explicit address does not send
one unless ``RAY_AUTH_MODE=token``: :func:`ray_session` sets it when a token is available here. A new local instance
gets Ray's own default, token authentication (a token is made if none exists), with the mode set explicitly, so Ray
does not print its "Token authentication is enabled ..." warning on every run; an explicit ``RAY_AUTH_MODE`` wins.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
from typing import Any, Iterator

logger = logging.getLogger(__name__)

START_HINT = ("start one with `ray start --head --port PORT` on the head machine (with RAY_AUTH_MODE=token there and "
              "here, and the head's ~/.ray/auth_token copied here or in RAY_AUTH_TOKEN), or omit --address to run on a "
              "local Ray instance")

# --tune-callback NAME -> (the package it needs, the Tune logger callback class)
TUNE_CALLBACKS = {
    "tensorboard": ("tensorboardX", "ray.tune.logger:TBXLoggerCallback"),
    "mlflow": ("mlflow", "ray.air.integrations.mlflow:MLflowLoggerCallback"),
    "wandb": ("wandb", "ray.air.integrations.wandb:WandbLoggerCallback"),
}


class ClusterError(RuntimeError):
    """A cluster address that does not answer, or a connection Ray refused (e.g. authentication)."""


def check_resources(cpus_per_trial: float, gpus_per_trial: float, num_cpus: int | None, local: bool) -> None:
    """Refuse resource flags no trial could be scheduled with (Ray would raise deep inside, or wait forever)."""
    if not (isinstance(cpus_per_trial, (int, float)) and math.isfinite(cpus_per_trial) and cpus_per_trial > 0):
        raise ValueError(f"--cpus-per-trial {cpus_per_trial}: must be a number > 0, e.g. 1")
    if not (isinstance(gpus_per_trial, (int, float)) and math.isfinite(gpus_per_trial) and gpus_per_trial >= 0):
        raise ValueError(f"--gpus-per-trial {gpus_per_trial}: must be a number >= 0 (fractions allowed, e.g. 0.25)")
    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"--num-cpus {num_cpus}: must be an integer >= 1 (default: all {os.cpu_count()} CPUs)")
    if not local:
        return  # checked against the cluster's resources once connected
    have = num_cpus or os.cpu_count() or 1
    if cpus_per_trial > have:
        raise ValueError(f"--cpus-per-trial {cpus_per_trial:g}: the local Ray instance has {have} CPUs; "
                         f"valid: 0 < value <= {have} (or --num-cpus, or --address a larger cluster)")
    if gpus_per_trial > 0:
        gpus = local_gpu_count()
        if gpus_per_trial > max(gpus, 0) or gpus == 0:
            raise ValueError(f"--gpus-per-trial {gpus_per_trial:g}: this machine has {gpus} GPU(s) visible to torch; "
                             f"use 0, a value <= {gpus}, or --address a cluster with GPUs")


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def check_cluster_resources(cluster: dict[str, float], cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Refuse a trial shape the connected cluster cannot hold (Tune would wait for it forever)."""
    if gpus_per_trial and cluster.get("GPU", 0) < gpus_per_trial:
        raise ClusterError(f"--gpus-per-trial {gpus_per_trial:g} but the Ray cluster has {cluster.get('GPU', 0):g} GPUs")
    if cluster.get("CPU", 0) < cpus_per_trial:
        raise ClusterError(f"--cpus-per-trial {cpus_per_trial:g} but the Ray cluster has {cluster.get('CPU', 0):g} CPUs")


def check_tune_callbacks(names: list[str] | None) -> None:
    """Each ``--tune-callback`` must be known and its package installed."""
    for name in names or ():
        if name not in TUNE_CALLBACKS:
            raise ValueError(f"--tune-callback {name!r}: unknown; valid: {', '.join(TUNE_CALLBACKS)}")
        package = TUNE_CALLBACKS[name][0]
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"--tune-callback {name} needs the {package} package, which is not installed here: "
                             f"pip install {package}")


def tune_callbacks(names: list[str] | None) -> list[Any]:
    """Instances of the Tune logger callbacks named by ``--tune-callback``."""
    out = []
    for name in names or ():
        module, cls = TUNE_CALLBACKS[name][1].split(":")
        out.append(getattr(importlib.import_module(module), cls)())
    return out


def resolve_address(address: str) -> tuple[str, int]:
    """``auto`` (the cluster last started here with ``ray start``), ``HOST:PORT`` or ``ray://HOST:PORT``."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
        if not found:
            raise ClusterError(f"--address auto: no Ray cluster was started on this machine; {START_HINT}")
        address = found
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    return host, int(port)


def probe_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast, naming the address, when nothing accepts a TCP connection there."""
    host, port = resolve_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ClusterError(f"--address {address}: no Ray cluster answers at {host}:{port} ({reason}); "
                           f"{START_HINT}") from None


def _set_token_mode() -> None:
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray._raylet" in sys.modules:  # Ray read its config at import: make it see the new mode (as Ray does)
        sys.modules["ray._raylet"].Config.initialize("")


def enable_token_auth() -> bool:
    """Set ``RAY_AUTH_MODE=token`` for a cluster connection when a token is at hand and the mode is not set."""
    if "RAY_AUTH_MODE" in os.environ:
        return os.environ["RAY_AUTH_MODE"].lower() == "token"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        _set_token_mode()
        logger.info("Ray token authentication on (token from %s)",
                    "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else path)
        return True
    return False


def ray_is_local() -> bool:
    """Whether every node of the connected Ray instance is this machine (its workers can write the run directory)."""
    import ray

    here = ray.util.get_node_ip_address()
    return all(n.get("NodeManagerAddress") == here for n in ray.nodes() if n.get("Alive"))


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None, gpus_per_trial: float) -> Iterator[str]:
    """``ray.init`` for the sweep and ``ray.shutdown`` after it; yields a scratch folder (Ray's session files for a
    local instance) that is removed at the end.

    A Ray already initialised in this process (``ray.init`` called by the user, a notebook, a test session, or a job
    submitted to a cluster) is used as it is, neither started nor shut down here: the sweep runs on its resources
    (``num_cpus`` and ``address`` do not apply to it; a conflicting ``address`` is refused)."""
    import ray

    if ray.is_initialized():
        if address is not None:
            raise ClusterError(f"--address {address}: Ray is already initialised in this process (on "
                               f"{ray.get_runtime_context().gcs_address}); the sweep runs there, or call "
                               f"ray.shutdown() first")
        logger.info("using the Ray instance already initialised in this process (%s)",
                    ray.get_runtime_context().gcs_address)
    # short (Ray's socket paths must stay < 108 chars): /tmp, or RAY_TMPDIR where the user moved Ray's files
    scratch = tempfile.mkdtemp(prefix="ub-ray-", dir=os.environ.get("RAY_TMPDIR") or "/tmp")
    if ray.is_initialized():
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="warning")
    if address is None:
        if "RAY_AUTH_MODE" not in os.environ:  # Ray's default for a new local instance, without its warning
            _set_token_mode()
        kw.update(num_cpus=num_cpus or os.cpu_count(), _temp_dir=os.path.join(scratch, "ray"))
        if gpus_per_trial:
            kw["num_gpus"] = local_gpu_count()
    else:
        probe_address(address)
        enable_token_auth()
        kw["address"] = address
    try:
        try:
            ray.init(**kw)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
            if address is None:
                raise
            raise ClusterError(f"--address {address}: Ray could not connect ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); if the cluster uses token "
                               f"authentication, {START_HINT}") from e
        yield scratch
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)

