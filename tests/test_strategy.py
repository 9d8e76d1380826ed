"""training/strategy.py without a cluster: SLURM host lists, the cluster of a job step, ports, refusals.

Pure Python on made-up environments (no SLURM, no TensorFlow runtime, no network). The real
multi-worker runs are in tests/test_distributed.py.
"""
from __future__ import annotations

import json
import os

import pytest

from training import strategy
from training.strategy import (
    PORT_BASE,
    SlurmCluster,
    _tasks_per_node,
    choose_strategy,
    cluster_source,
    expand_hostlist,
    slurm_base_port,
    slurm_cluster,
    unstarted_slurm_tasks,
)


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("gcn1", ["gcn1"]),
        ("gcn[9-10]", ["gcn9", "gcn10"]),  # SLURM's order, not text order (gcn10 < gcn9)
        ("gcn[9-10,12],login1", ["gcn9", "gcn10", "gcn12", "login1"]),
        ("gcn[08-11]", ["gcn08", "gcn09", "gcn10", "gcn11"]),  # zero padding of the lower bound
        ("gcn[098-101]", ["gcn098", "gcn099", "gcn100", "gcn101"]),
        ("gcn[7],tcn[1-2,5]", ["gcn7", "tcn1", "tcn2", "tcn5"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("node[1-2]-ib", ["node1-ib", "node2-ib"]),
        ("a,b.example.org,127.0.0.1", ["a", "b.example.org", "127.0.0.1"]),
    ],
)
def test_expand_hostlist(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


def test_expand_hostlist_long_range() -> None:
    hosts = expand_hostlist("gcn[1-100]")
    assert len(hosts) == 100 and hosts[:3] == ["gcn1", "gcn2", "gcn3"] and hosts[-1] == "gcn100"
    assert hosts.index("gcn10") == 9


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"), ("gcn1,,gcn2", "empty"), ("gcn1, gcn2", "spaces"),
        ("gcn[1-2", "unbalanced"), ("gcn1-2]", "unbalanced"), ("gcn[[1-2]]", "nested"),
        ("gcn[a-b]", "not N or N-M"), ("gcn[1-]", "not N or N-M"), ("gcn[]", "not N or N-M"),
        ("gcn[5-3]", "backwards"),
    ],
)
def test_expand_hostlist_refuses_bad_syntax(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        expand_hostlist(text)


def test_tasks_per_node_syntax() -> None:
    assert _tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert _tasks_per_node("1(x4)") == [1, 1, 1, 1]
    assert _tasks_per_node("4") == [4]
    assert _tasks_per_node("3,1(x2),2") == [3, 1, 1, 2]
    for bad in ("", "2(x)", "two", "2(3)"):
        with pytest.raises(ValueError, match="SLURM_STEP_TASKS_PER_NODE"):
            _tasks_per_node(bad)


def test_base_port_from_the_job_id() -> None:
    assert slurm_base_port(4242) == PORT_BASE + 16 * (4242 % 750) == 27872
    assert slurm_base_port("750") == slurm_base_port(0) == PORT_BASE
    ports = {job: slurm_base_port(job) for job in range(100_000, 100_000 + 750)}
    # Consecutive jobs get disjoint blocks of 16 ports, all below Linux's ephemeral range.
    assert len(set(ports.values())) == 750
    assert all(abs(slurm_base_port(j + 1) - slurm_base_port(j)) >= 16 for j in range(100_000, 100_000 + 749))
    assert min(ports.values()) == 20000 and max(ports.values()) + 15 == 31999 < 32768
    with pytest.raises(ValueError, match="SLURM_JOB_ID"):
        slurm_base_port("12_3")


def _step(**extra: str) -> dict[str, str]:
    """What srun sets in a task of a 2-node, 1-task-per-node step on gcn9 and gcn10 (job 1000)."""
    env = {"SLURM_JOB_ID": "1000", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gcn[9-10]",
           "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURMD_NODENAME": "gcn9"}
    env.update(extra)
    return env


def test_cluster_in_slurm_order_with_the_job_port() -> None:
    port = slurm_base_port(1000)
    assert port == 20000 + 16 * 250
    # Task 0 runs on gcn9 and gets gcn9's address (SlurmClusterResolver gave it gcn10's).
    assert slurm_cluster(_step()) == SlurmCluster((f"gcn9:{port}", f"gcn10:{port}"), 0)
    assert slurm_cluster(_step(SLURM_PROCID="1", SLURMD_NODENAME="gcn10")).task_id == 1


def test_cluster_with_several_tasks_per_node() -> None:
    env = _step(SLURM_STEP_NUM_TASKS="7", SLURM_STEP_NODELIST="gcn[9-10],tcn1",
                SLURM_STEP_TASKS_PER_NODE="3,2(x2)", SLURM_PROCID="4", SLURM_LOCALID="1",
                SLURMD_NODENAME="gcn10")
    cluster = slurm_cluster(env)
    p = slurm_base_port(1000)
    assert cluster.workers == (f"gcn9:{p}", f"gcn9:{p + 1}", f"gcn9:{p + 2}", f"gcn10:{p}", f"gcn10:{p + 1}",
                               f"tcn1:{p}", f"tcn1:{p + 1}")
    assert cluster.task_id == 4


def test_cluster_without_the_task_placement_variables_assumes_block() -> None:
    env = _step(SLURM_PROCID="1")
    del env["SLURMD_NODENAME"], env["SLURM_LOCALID"]
    assert slurm_cluster(env).task_id == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        # srun --distribution=cyclic on 2 nodes x 2 tasks: task 1 runs on the second node.
        ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_PROCID": "1",
          "SLURMD_NODENAME": "gcn10", "SLURM_LOCALID": "0"}, "distribution=block"),
        ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_PROCID": "1",
          "SLURMD_NODENAME": "gcn9", "SLURM_LOCALID": "0"}, "local task 1 on gcn9"),
        ({"SLURM_STEP_TASKS_PER_NODE": "1(x3)", "SLURM_STEP_NUM_TASKS": "3"}, "names 2 nodes but"),
        ({"SLURM_STEP_NUM_TASKS": "3"}, "adds up to 2 tasks"),
        ({"SLURM_PROCID": "2"}, "SLURM_PROCID must be in 0..1"),
        ({"SLURM_STEP_NODELIST": "gcn[9-10"}, "unbalanced"),
        ({"SLURM_JOB_ID": "x"}, "SLURM_JOB_ID must be an integer"),
    ],
)
def test_inconsistent_steps_are_refused(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slurm_cluster(_step(**extra))


@pytest.mark.parametrize("missing", ["SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE", "SLURM_JOB_ID"])
def test_cluster_needs_the_step_variables(missing: str) -> None:
    env = _step()
    del env[missing]
    with pytest.raises(ValueError, match=f"{missing} not set: .*started with srun"):
        slurm_cluster(env)


@pytest.mark.parametrize(
    "env, source, unstarted",
    [
        ({}, "", 0),
        # srun step of 2 tasks (the multi-node script).
        (_step(), "slurm", 0),
        # srun step of 1 task (the 1-GPU and 4-GPU scripts).
        (_step(SLURM_NTASKS="1", SLURM_STEP_NUM_TASKS="1", SLURM_STEP_NODELIST="gcn9",
               SLURM_STEP_TASKS_PER_NODE="1"), "", 0),
        # python started directly in a 1-task sbatch script: a plain single process.
        ({"SLURM_JOB_ID": "1000", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, "", 1),
        ({"SLURM_JOB_ID": "1000", "SLURM_PROCID": "0"}, "", 0),
        # ... in a 4-task sbatch script: the other 3 tasks never start.
        ({"SLURM_JOB_ID": "1000", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "gcn[1-4]"},
         "", 4),
        # TF_CONFIG comes first.
        ({**_step(), "TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                              "task": {"type": "worker", "index": 0}})}, "tf_config", 0),
    ],
)
def test_cluster_source(env: dict[str, str], source: str, unstarted: int) -> None:
    assert cluster_source(env) == source
    assert unstarted_slurm_tasks(env) == unstarted


def test_bad_tf_config_is_one_error() -> None:
    for raw in ("{not json", "[1, 2]", json.dumps({"cluster": 3})):
        with pytest.raises(ValueError, match="TF_CONFIG must be a JSON object"):
            cluster_source({"TF_CONFIG": raw})


@pytest.fixture()
def environ(monkeypatch: pytest.MonkeyPatch):
    """A clean environment without SLURM or TF_CONFIG; returns a setter for a test's variables."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SLURMD_")) or k == "TF_CONFIG"]:
        monkeypatch.delenv(key)

    def set_env(env: dict[str, str]) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return set_env


@pytest.mark.parametrize("kind", ["auto", "multiworker"])
def test_multi_task_job_without_srun_says_start_it_with_srun(kind: str, environ) -> None:
    environ({"SLURM_JOB_ID": "1000", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"})
    with pytest.raises(ValueError, match=r"4 tasks \(SLURM_NTASKS\) but this process was not started by "
                                         r"srun.*start it with srun"):
        choose_strategy(kind)


def test_single_process_in_an_sbatch_script_just_works(environ) -> None:
    environ({"SLURM_JOB_ID": "1000", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"})
    distribution = choose_strategy("auto")
    assert (distribution.kind, distribution.num_workers, distribution.is_chief) == ("default", 1, True)
    # An explicit one-process strategy in a multi-task job without srun: one process, so allowed.
    environ({"SLURM_NTASKS": "4"})
    assert choose_strategy("default").kind == "default"


@pytest.mark.parametrize("kind", ["default", "mirrored"])
@pytest.mark.parametrize("source", ["slurm", "tf_config"])
def test_one_process_strategy_in_a_cluster_is_refused(kind: str, source: str, environ) -> None:
    if source == "slurm":
        environ(_step())
    else:
        environ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1", "c:1"]},
                                          "task": {"type": "worker", "index": 1}})})
    size = 2 if source == "slurm" else 3
    with pytest.raises(ValueError, match=f"--strategy {kind} trains in one process, .* cluster of {size} "
                                         "processes: every one would act as the chief"):
        choose_strategy(kind)


@pytest.mark.parametrize("gpus, accelerators", [(0, {}), (4, {"GPU": 4})])
def test_resolver_from_the_slurm_step(gpus: int, accelerators: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only node is a CPU worker (SlurmClusterResolver stopped: 'range() arg 3 must not be zero')."""
    monkeypatch.setattr(strategy.tf.config, "list_physical_devices", lambda kind=None: ["GPU"] * gpus)
    env = _step(SLURM_PROCID="1", SLURMD_NODENAME="gcn10")
    resolver = strategy._resolver("slurm", env)
    port = slurm_base_port(1000)
    assert resolver.cluster_spec().as_dict() == {"worker": [f"gcn9:{port}", f"gcn10:{port}"]}
    assert (resolver.task_type, resolver.task_id, resolver.rpc_layer) == ("worker", 1, "grpc")
    assert resolver.num_accelerators() == accelerators


def test_multiworker_from_slurm_without_a_collective_timeout(environ,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No CommunicationOptions(timeout_seconds=...): it started a timer thread per collective (10,808 threads
    after 150 steps); a lost worker is left to the coordination service and the stall watchdog."""
    created = []

    class FakeMultiWorker:
        num_replicas_in_sync = 2

        def __init__(self, **kwargs) -> None:
            created.append(kwargs)

    monkeypatch.setattr(strategy.tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorker)
    monkeypatch.setattr(strategy.tf.config, "list_physical_devices", lambda kind=None: [])
    environ(_step(SLURM_PROCID="1", SLURMD_NODENAME="gcn10"))
    distribution = choose_strategy("auto")
    assert (distribution.kind, distribution.num_workers, distribution.worker_index, distribution.is_chief,
            distribution.cluster_source, distribution.replicas) == ("multiworker", 2, 1, False, "slurm", 2)
    assert len(created) == 1 and set(created[0]) == {"cluster_resolver"}
    assert created[0]["cluster_resolver"].task_id == 1
