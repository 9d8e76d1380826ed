"""Choosing the tf.distribute strategy: one GPU, several GPUs, several nodes.

- one GPU (or none): the default strategy;
- several GPUs on one node: ``MirroredStrategy`` over the visible GPUs;
- several processes (nodes): ``MultiWorkerMirroredStrategy``, its cluster read
  from SLURM's environment (``SlurmClusterResolver``, when the job step has
  more than one task) or from ``TF_CONFIG``.

``auto`` picks in that order; ``--strategy`` overrides. Which GPUs a process
sees is the scheduler's business (SLURM binds them per task); this code never
writes ``CUDA_VISIBLE_DEVICES`` or any other environment variable (the SLURM
resolver is created with ``auto_set_gpu=False``).

Collective operations get a timeout, so if a worker dies (SIGKILL, node lost)
the others stop with an error after ``collective_timeout`` seconds instead of
waiting forever.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Mapping

import tensorflow as tf

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
DEFAULT_COLLECTIVE_TIMEOUT = 600


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The chosen strategy and this process's place in it."""

    strategy: tf.distribute.Strategy
    kind: str  # default | mirrored | multiworker
    num_workers: int
    worker_index: int
    is_chief: bool
    cluster_source: str = ""  # slurm | tf_config | "" (single process)

    @property
    def replicas(self) -> int:
        """Replicas in sync across all workers (GPUs, or 1 per CPU worker)."""
        return int(self.strategy.num_replicas_in_sync)


def cluster_source(env: Mapping[str, str] | None = None) -> str:
    """Where a multi-process cluster is described: ``tf_config``, ``slurm`` or ``""`` (none)."""
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG")
    if raw:
        try:
            cluster = json.loads(raw).get("cluster", {})
        except ValueError:
            raise ValueError(f"TF_CONFIG is not valid JSON: {raw[:80]!r}") from None
        if sum(len(v) for v in cluster.values()) > 1:
            return "tf_config"
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))) > 1:
        return "slurm"
    return ""


def _resolver(source: str) -> tf.distribute.cluster_resolver.ClusterResolver:
    if source == "slurm":
        gpus = len(tf.config.list_physical_devices("GPU"))
        tasks_per_node = max(int(t) for t in _tasks_per_node(os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1")))
        # auto_set_gpu=False: SLURM (--gpus-per-task / --gpu-bind) already chose this task's GPUs.
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            gpus_per_task=gpus, gpus_per_node=gpus * tasks_per_node, auto_set_gpu=False
        )
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _tasks_per_node(text: str) -> list[int]:
    """Expand SLURM's tasks-per-node syntax, e.g. ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts = []
    for part in text.split(","):
        if "(x" in part:
            n, times = part.rstrip(")").split("(x")
            counts += [int(n)] * int(times)
        elif part:
            counts.append(int(part))
    return counts or [1]


def choose_strategy(kind: str = "auto", *, collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT) -> Distribution:
    """Create the strategy for ``kind``; call it before any other TensorFlow work.

    ``MultiWorkerMirroredStrategy`` must be created before TensorFlow
    initialises its runtime, which is why ``train_keras.py`` calls this first.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, received {kind!r}")
    source = cluster_source()
    if kind == "auto":
        if source:
            kind = "multiworker"
        else:
            kind = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if kind == "multiworker":
        if not source:
            raise ValueError(
                "--strategy multiworker needs a cluster: run it as several SLURM tasks (srun) "
                "or set TF_CONFIG; neither was found"
            )
        resolver = _resolver(source)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                             communication_options=options)
        spec = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, int(resolver.task_id)
        chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in spec)
        workers = sum(len(v) for v in spec.values())
        log.info("MultiWorkerMirroredStrategy from %s: task %s/%d of %d, %d replicas", source, task_type,
                 task_id, workers, strategy.num_replicas_in_sync)
        return Distribution(strategy, "multiworker", workers, task_id, chief, source)
    if kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d replicas", strategy.num_replicas_in_sync)
        return Distribution(strategy, "mirrored", 1, 0, True)
    return Distribution(tf.distribute.get_strategy(), "default", 1, 0, True)


def gpu_available() -> bool:
    """True when TensorFlow sees at least one GPU."""
    return bool(tf.config.list_physical_devices("GPU"))
