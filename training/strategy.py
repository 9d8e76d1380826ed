"""Choosing the tf.distribute strategy: one GPU, several GPUs, several nodes.

- one GPU (or none): the default strategy;
- several GPUs on one node: ``MirroredStrategy`` over the visible GPUs;
- several processes (nodes): ``MultiWorkerMirroredStrategy``, its cluster read
  from ``TF_CONFIG`` or from the SLURM job step (when it has more than one task).

``auto`` picks in that order; ``--strategy`` overrides. Which GPUs a process
sees is the scheduler's business (SLURM binds them per task); this code never
writes ``CUDA_VISIBLE_DEVICES`` or any other environment variable.

Under SLURM the cluster is built here, not by TensorFlow's
``SlurmClusterResolver``: that resolver orders the nodes by name as text
(``gcn10`` before ``gcn9``) while SLURM numbers the tasks in node-list order,
it fails on nodes without GPUs, and it always uses port 8888. Here the workers
are listed in SLURM's rank order (block distribution, checked against the
task's own node and local index), a node without GPUs is a CPU worker, and the
ports are derived from the job id (:func:`slurm_base_port`).

No collective timeout is set (``CommunicationOptions(timeout_seconds=...)``
starts a timer thread per collective and is documented as debug-only); a lost
worker is detected by TensorFlow's coordination service or, failing that, by
``training/watchdog.py``'s ``StallWatchdog``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping

import tensorflow as tf

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker")

# Ports of a SLURM job: PORT_BASE + PORT_STRIDE * (job id mod PORT_SLOTS) + the task's index on its node.
# Consecutive job ids get disjoint blocks of 16 ports, and everything stays in 20000-31999, below
# Linux's ephemeral range (32768-60999) where outgoing connections take their local ports.
PORT_BASE = 20000
PORT_STRIDE = 16
PORT_SLOTS = 750

_STEP_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE", "SLURM_JOB_ID")


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


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """The workers of a SLURM job step, as ``host:port`` in task-rank order, and this task's rank."""

    workers: tuple[str, ...]
    task_id: int


def _tf_config_tasks(env: Mapping[str, str]) -> int:
    raw = env.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        return sum(len(v) for v in json.loads(raw).get("cluster", {}).values())
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"TF_CONFIG must be a JSON object with a 'cluster' of task lists, received "
                         f"{raw[:80]!r}") from None


def _int_variable(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name} must be an integer, received {env[name]!r}") from None


def cluster_source(env: Mapping[str, str] | None = None) -> str:
    """Where a multi-process cluster is described: ``tf_config``, ``slurm`` or ``""`` (none).

    ``slurm`` needs a job step (a process started by ``srun``) with more than one
    task: ``SLURM_PROCID`` and ``SLURM_STEP_NUM_TASKS``. A process started
    directly by an sbatch script has only the job's variables; it is a plain
    single process (``""``) - :func:`unstarted_slurm_tasks` says whether the job
    meant it to be one of several.
    """
    env = os.environ if env is None else env
    if _tf_config_tasks(env) > 1:
        return "tf_config"
    in_step = "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env
    if in_step and _int_variable(env, "SLURM_STEP_NUM_TASKS") > 1:
        return "slurm"
    return ""


def unstarted_slurm_tasks(env: Mapping[str, str] | None = None) -> int:
    """Tasks a SLURM job asks for (``SLURM_NTASKS``) when this process is not in an srun job step, else 0.

    More than 1 means the training was started directly in an sbatch (or
    salloc) shell of a multi-task job: only this one process exists, and the
    job's other tasks never start.
    """
    env = os.environ if env is None else env
    if "SLURM_STEP_NUM_TASKS" in env or "SLURM_JOB_ID" not in env or "SLURM_NTASKS" not in env:
        return 0
    return _int_variable(env, "SLURM_NTASKS")


def _cluster_size(source: str, env: Mapping[str, str]) -> int:
    if source == "tf_config":
        return _tf_config_tasks(env)
    if source == "slurm":
        return _int_variable(env, "SLURM_STEP_NUM_TASKS")
    return 1


def expand_hostlist(text: str) -> list[str]:
    """Expand SLURM's hostlist syntax in SLURM's order.

    ``gcn[9-10,12],login1`` -> ``[gcn9, gcn10, gcn12, login1]``; zero padding is
    kept (``gcn[08-10]`` -> ``gcn08, gcn09, gcn10``); several bracket groups in
    one name expand left to right (``r[1-2]n[1-2]`` -> ``r1n1, r1n2, r2n1, r2n2``).
    """
    names: list[str] = []
    for item in _split_top_level(text):
        expanded = [""]
        at = 0
        for match in re.finditer(r"\[([^\[\]]*)\]", item):
            literal = item[at:match.start()]
            if "[" in literal or "]" in literal:
                raise ValueError(f"host list {text!r}: unbalanced brackets in {item!r}")
            expanded = [prefix + literal + number for prefix in expanded
                        for number in _expand_range(match.group(1), text)]
            at = match.end()
        tail = item[at:]
        if "[" in tail or "]" in tail:
            raise ValueError(f"host list {text!r}: unbalanced brackets in {item!r}")
        names += [prefix + tail for prefix in expanded]
    return names


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"host list {text!r}: nested brackets")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"host list {text!r}: unbalanced brackets")
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"host list {text!r}: unbalanced brackets")
    items.append(text[start:])
    if any(not item.strip() or item != item.strip() for item in items):
        raise ValueError(f"host list {text!r}: an empty name or spaces")
    return items


def _expand_range(spec: str, text: str) -> list[str]:
    numbers = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"host list {text!r}: {part!r} in [{spec}] is not N or N-M")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"host list {text!r}: the range {part!r} runs backwards")
        numbers += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return numbers


def _tasks_per_node(text: str) -> list[int]:
    """Expand SLURM's tasks-per-node syntax, e.g. ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ValueError(f"SLURM_STEP_TASKS_PER_NODE must look like '2(x3),1', received {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def slurm_base_port(job_id: int | str) -> int:
    """The first port of a SLURM job's workers: 20000 + 16 x (job id mod 750).

    A task listens on this port plus its index on the node, so two jobs on the
    same node collide only if their ids are equal modulo 750 (or a node runs
    more than 16 tasks of one job).
    """
    if not re.fullmatch(r"\d+", str(job_id)):
        raise ValueError(f"SLURM_JOB_ID must be an integer, received {job_id!r}")
    return PORT_BASE + PORT_STRIDE * (int(job_id) % PORT_SLOTS)


def slurm_cluster(env: Mapping[str, str] | None = None) -> SlurmCluster:
    """The workers of this SLURM job step in SLURM's task order, and this task's rank.

    Built from ``SLURM_STEP_NODELIST`` (nodes in SLURM's order),
    ``SLURM_STEP_TASKS_PER_NODE`` and ``SLURM_PROCID``, for srun's block
    distribution (consecutive ranks share a node). Where the task's own
    ``SLURMD_NODENAME`` / ``SLURM_LOCALID`` say otherwise (e.g. ``srun
    --distribution=cyclic``), it raises ``ValueError`` rather than give workers
    each other's addresses.
    """
    env = os.environ if env is None else env
    missing = [name for name in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", *_STEP_VARIABLES) if name not in env]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: a multi-worker SLURM run must be started with srun "
                         "(one job step with one task per worker)")
    nodes = expand_hostlist(env["SLURM_STEP_NODELIST"])
    counts = _tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])
    if len(nodes) != len(counts):
        raise ValueError(f"SLURM_STEP_NODELIST {env['SLURM_STEP_NODELIST']!r} names {len(nodes)} nodes but "
                         f"SLURM_STEP_TASKS_PER_NODE {env['SLURM_STEP_TASKS_PER_NODE']!r} gives "
                         f"{len(counts)}")
    num_tasks = _int_variable(env, "SLURM_STEP_NUM_TASKS")
    if sum(counts) != num_tasks:
        raise ValueError(f"SLURM_STEP_TASKS_PER_NODE {env['SLURM_STEP_TASKS_PER_NODE']!r} adds up to "
                         f"{sum(counts)} tasks, SLURM_STEP_NUM_TASKS is {num_tasks}")
    rank = _int_variable(env, "SLURM_PROCID")
    if not 0 <= rank < num_tasks:
        raise ValueError(f"SLURM_PROCID must be in 0..{num_tasks - 1}, received {rank}")
    base = slurm_base_port(env["SLURM_JOB_ID"])
    places = [(node, local) for node, count in zip(nodes, counts) for local in range(count)]
    node, local = places[rank]
    actual_node, actual_local = env.get("SLURMD_NODENAME", node), env.get("SLURM_LOCALID", str(local))
    if (actual_node, actual_local) != (node, str(local)):
        raise ValueError(
            f"task {rank} runs as local task {actual_local} on {actual_node}, but the block distribution of "
            f"{env['SLURM_STEP_NODELIST']} ({env['SLURM_STEP_TASKS_PER_NODE']} tasks per node) puts it as "
            f"local task {local} on {node}: start srun with --distribution=block"
        )
    return SlurmCluster(tuple(f"{host}:{base + i}" for host, i in places), rank)


def _resolver(source: str,
              env: Mapping[str, str] | None = None) -> tf.distribute.cluster_resolver.ClusterResolver:
    if source == "slurm":
        cluster = slurm_cluster(env)
        # The GPUs this task sees are its GPUs (SLURM chose them); none makes it a CPU worker.
        gpus = len(tf.config.list_physical_devices("GPU"))
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": list(cluster.workers)}), task_type="worker",
            task_id=cluster.task_id, num_accelerators={"GPU": gpus} if gpus else {}, rpc_layer="grpc",
        )
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def choose_strategy(kind: str = "auto") -> Distribution:
    """Create the strategy for ``kind``; call it before any other TensorFlow work.

    ``MultiWorkerMirroredStrategy`` must be created before TensorFlow
    initialises its runtime, which is why ``train_keras.py`` calls this first.
    A lost worker is detected by the trainer's stall watchdog
    (``training.watchdog``), not by collective timeouts.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, received {kind!r}")
    env = os.environ
    source = cluster_source(env)
    unstarted = unstarted_slurm_tasks(env)
    if kind in ("auto", "multiworker") and not source and unstarted > 1:
        raise ValueError(
            f"this SLURM job has {unstarted} tasks (SLURM_NTASKS) but this process was not started by srun, "
            "so the other workers do not exist: start it with srun (srun python train_keras.py ...), "
            "or pass --strategy default|mirrored to train in this one process"
        )
    if unstarted > 1 and kind in ("default", "mirrored"):
        log.warning("this SLURM job has %d tasks but this process was not started by srun: training in this "
                    "one process only", unstarted)
    if source and kind in ("default", "mirrored"):
        where = "TF_CONFIG" if source == "tf_config" else "the SLURM job step (SLURM_STEP_NUM_TASKS)"
        raise ValueError(
            f"--strategy {kind} trains in one process, but {where} describes a cluster of "
            f"{_cluster_size(source, env)} processes: every one would act as the chief and write the same "
            "run folder; use --strategy multiworker (or auto), or start a single task"
        )
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
        resolver = _resolver(source, env)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        spec = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, int(resolver.task_id)
        chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in spec)
        workers = sum(len(v) for v in spec.values())
        log.info("MultiWorkerMirroredStrategy from %s: task %s/%d of %d (%s), %d replicas", source, task_type,
                 task_id, workers, spec[task_type][task_id], strategy.num_replicas_in_sync)
        return Distribution(strategy, "multiworker", workers, task_id, chief, source)
    if kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d replicas", strategy.num_replicas_in_sync)
        return Distribution(strategy, "mirrored", 1, 0, True)
    return Distribution(tf.distribute.get_strategy(), "default", 1, 0, True)


def gpu_available() -> bool:
    """True when TensorFlow sees at least one GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """TensorFlow op determinism for one run (put back as it was, for callers of main in-process)."""
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    if enabled:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not before:
            tf_config.disable_op_determinism()
