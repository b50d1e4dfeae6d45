"""Ray Train's multi-worker TensorFlow set-up (``TF_CONFIG`` on every worker), without TensorFlow elsewhere.

Ray's own ``TensorflowTrainer`` lives in the package ``ray.train.tensorflow``, whose ``__init__`` imports
TensorFlow: the driver and Ray Train's controller actor, which only schedule the workers, each paid a
TensorFlow import (5-8 s of one core on the 2-core machine) before the first worker started. This backend
does what Ray's does -- every worker gets the addresses of all workers and its own index -- from a module
that imports no TensorFlow. It does not set ``TF_USE_LEGACY_KERAS``: the workers train with Keras 3.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig


def set_tf_config(worker_addresses: list[str], index: int) -> None:
    """On a worker: the cluster spec ``MultiWorkerMirroredStrategy`` reads when it is created."""
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": worker_addresses},
                                          "task": {"type": "worker", "index": index}})


def _worker_address() -> str:
    """This worker's node IP and a port free on it, as ``host:port`` (``[v6]:port``) for TF_CONFIG.

    Public Ray API and the standard library only: what Ray's own TensorFlow backend does, without its
    internal helpers, so a Ray upgrade that moves them cannot break fine-tuning."""
    host = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


class _MultiWorkerBackend(Backend):
    def on_start(self, worker_group, backend_config: "MultiWorkerTensorflowConfig") -> None:
        addresses = worker_group.execute(_worker_address)
        ray.get([worker_group.execute_single_async(i, set_tf_config, worker_addresses=addresses, index=i)
                 for i in range(len(worker_group))])


@dataclass
class MultiWorkerTensorflowConfig(BackendConfig):
    """``backend_config`` of a ``DataParallelTrainer`` whose workers build a ``MultiWorkerMirroredStrategy``."""

    @property
    def backend_cls(self):
        return _MultiWorkerBackend
