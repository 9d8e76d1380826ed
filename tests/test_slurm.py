"""The sbatch scripts in slurm/: syntax, SLURM directives, the train command, the requeue logic.

The scripts are run for real by bash, with ``srun`` and ``scontrol`` replaced by stubs that record
their arguments: the train command each script builds is parsed by ``train_keras.parse_args`` (so the
scripts cannot drift from the flags), and the exit code of the training decides whether the job is
requeued. Cheap: only bash processes, no TensorFlow run.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import train_keras
from conftest import REPO_ROOT
from training import strategy
from training.preemption import EXIT_PREEMPTED

SLURM_DIR = REPO_ROOT / "slurm"
SCRIPTS = {
    "train_1gpu.sbatch": "default",
    "train_1node_4gpu.sbatch": "mirrored",
    "train_multinode.sbatch": "multiworker",
}
SITE = "# >>> SITE:"
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
TIMEOUT = 30

SRUN_STUB = """#!/bin/bash
printf '%s\\0' "$@" > "$STUB_DIR/srun.args"
if [[ -n "${STUB_SLEEP:-}" ]]; then echo $$ > "$STUB_DIR/srun.pid"; exec sleep "$STUB_SLEEP"; fi
exit "${STUB_RC:-0}"
"""
SCONTROL_STUB = """#!/bin/bash
if [[ "$1 $2" == "show hostnames" ]]; then printf '%s\\n' $STUB_HOSTS; exit 0; fi
echo "$*" >> "$STUB_DIR/scontrol.log"
"""


def _directives(path: Path) -> list[str]:
    """The #SBATCH options, read as sbatch does: up to the first command line."""
    options = []
    for line in path.read_text().splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            options.append(stripped.split(None, 1)[1])
        elif stripped and not stripped.startswith("#"):
            break
    return options


@pytest.fixture()
def stubs(tmp_path: Path) -> Path:
    """A folder with stub ``srun``/``scontrol`` executables and a fake virtual environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN_STUB), ("scontrol", SCONTROL_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("export FAKE_VENV_ACTIVE=1\n")
    return tmp_path


def _env(stub_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "TF_CONFIG"}
    env.update(
        PATH=f"{stub_dir / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        STUB_DIR=str(stub_dir),
        STUB_HOSTS="gcn1 gcn2",
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(REPO_ROOT),
        SLURM_JOB_NODELIST="gcn[1-2]",
        SLURM_CPUS_PER_TASK="8",
        VENV=str(stub_dir / "venv"),
        DATA_PATH="/dummy/covidx",
    )
    env.update(extra)
    return env


def _run(script: str, stub_dir: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_DIR / script)], env=_env(stub_dir, **extra), cwd=stub_dir,
                          capture_output=True, text=True, timeout=TIMEOUT)


def _srun_args(stub_dir: Path) -> list[str]:
    return (stub_dir / "srun.args").read_text().split("\0")[:-1]


def _requeues(stub_dir: Path) -> list[str]:
    log = stub_dir / "scontrol.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.startswith("requeue")]


def test_the_three_scripts_exist() -> None:
    assert sorted(p.name for p in SLURM_DIR.glob("*.sbatch")) == sorted(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bash_syntax(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(SLURM_DIR / script)], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_shellcheck(script: str) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "-s", "bash", str(SLURM_DIR / script)], capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_requeue_and_signal_directives(script: str) -> None:
    options = _directives(SLURM_DIR / script)
    assert "--requeue" in options and "--open-mode=append" in options
    signals = [o for o in options if o.startswith("--signal=")]
    assert len(signals) == 1
    # No "B:": the signal must reach the training, a job step started by srun, not the batch shell.
    match = re.fullmatch(r"--signal=TERM@(\d+)", signals[0])
    assert match, signals[0]
    # SLURM may send it up to 60 s early; the rest must cover a step and saving ~8 GB of state.
    assert 120 <= int(match.group(1)) <= 900
    assert any(o.startswith("--output=") and "%j" in o for o in options)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_placeholders_are_marked_and_no_site_paths(script: str) -> None:
    lines = (SLURM_DIR / script).read_text().splitlines()
    found = set()
    for i, line in enumerate(lines):
        if PLACEHOLDER.search(line):
            found.update(PLACEHOLDER.findall(line))
            window = lines[max(0, i - 3):i + 1]
            assert any(w.startswith(SITE) for w in window), f"line {i + 1}, unmarked placeholder: {line}"
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        # No absolute paths and no module loads outside the marked placeholders.
        assert not re.search(r"(^|[\s=\"'])/[A-Za-z]", code), f"line {i + 1}: {line}"
        assert not code.strip().startswith("module "), f"line {i + 1}: {line}"
    assert {"<ACCOUNT>", "<PARTITION>", "<VENV>", "<DATA_PATH>", "<MODULES>", "<KERAS_HOME>"} <= found


@pytest.mark.parametrize("script, strategy_name", sorted(SCRIPTS.items()))
def test_train_command_parses_with_train_keras(script: str, strategy_name: str, stubs: Path) -> None:
    result = _run(script, stubs)
    assert result.returncode == 0, result.stderr
    argv = _srun_args(stubs)
    at = argv.index("train_keras.py")
    assert argv[at - 2:at] == ["python", "-u"]
    args = train_keras.parse_args(argv[at + 1:])
    # SURFsara's baseline command line, the lists where create_covidx.py --out writes them.
    assert (args.trainfile, args.testfile, args.data_path) == (
        "/dummy/covidx/train_COVIDx.txt", "/dummy/covidx/test_COVIDx.txt", "/dummy/covidx")
    assert (args.img_size, args.lr, args.bs, args.epochs) == (512, 0.00002, 8, 10)
    assert (args.name, args.model) == ("covid-net-resnet512-", "resnet50v2")
    assert (args.strategy, args.output) == (strategy_name, "output")
    assert (args.cache, args.bs_per_replica, args.collective_timeout) == ("", None, 600)
    assert "--cpus-per-task=8" in argv[:at]
    if strategy_name == "multiworker":
        assert {"--ntasks-per-node=1", "--kill-on-bad-exit=0", "--wait=0"} <= set(argv[:at])
    else:
        assert "--ntasks=1" in argv[:at]
    assert _requeues(stubs) == []


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_optional_cache_output_and_batch_per_replica(script: str, stubs: Path) -> None:
    result = _run(script, stubs, CACHE="/dummy/cache512", OUTPUT="/dummy/runs", BS_PER_REPLICA="2")
    assert result.returncode == 0, result.stderr
    argv = _srun_args(stubs)
    args = train_keras.parse_args(argv[argv.index("train_keras.py") + 1:])
    assert (args.cache, args.output) == ("/dummy/cache512", "/dummy/runs")
    # The one-GPU script has no use for a per-replica batch.
    assert args.bs_per_replica == (None if script == "train_1gpu.sbatch" else 2)


def test_scripts_requeue_on_the_trainers_preemption_code() -> None:
    for script in SCRIPTS:
        text = (SLURM_DIR / script).read_text()
        assert f"EXIT_PREEMPTED={EXIT_PREEMPTED}" in text


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize(
    "rc, restarts, requeued",
    [(EXIT_PREEMPTED, "0", True), (EXIT_PREEMPTED, "19", True), (EXIT_PREEMPTED, "20", False),
     (0, "0", False), (1, "0", False), (2, "0", False), (137, "0", False)],
)
def test_requeue_only_after_a_saved_preemption(script: str, rc: int, restarts: str, requeued: bool,
                                               stubs: Path) -> None:
    result = _run(script, stubs, STUB_RC=str(rc), SLURM_RESTART_COUNT=restarts)
    assert result.returncode == rc, result.stderr
    assert _requeues(stubs) == (["requeue 4242"] if requeued else [])


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_unset_placeholders_stop_before_srun(script: str, stubs: Path) -> None:
    env = _env(stubs)
    del env["DATA_PATH"]
    result = subprocess.run(["bash", str(SLURM_DIR / script)], env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 2
    assert "DATA_PATH is not set" in result.stderr
    assert not (stubs / "srun.args").exists()


def test_multinode_runs_on_nodes_whose_names_do_not_sort_as_text(stubs: Path) -> None:
    # gcn9 before gcn10: training/strategy.py numbers the workers in SLURM's order (tests/test_strategy.py).
    result = _run("train_multinode.sbatch", stubs, STUB_HOSTS="gcn9 gcn10", SLURM_JOB_NODELIST="gcn[9-10]")
    assert result.returncode == 0, result.stderr
    assert (stubs / "srun.args").exists()


def test_sigterm_to_the_batch_shell_does_not_requeue(stubs: Path) -> None:
    """scancel terminates the batch shell too: with no trap it dies at once and never requeues."""
    proc = subprocess.Popen(["bash", str(SLURM_DIR / "train_1gpu.sbatch")], env=_env(stubs, STUB_SLEEP="60"),
                            cwd=stubs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = stubs / "srun.pid"
    try:
        deadline = time.time() + TIMEOUT
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.02)
        assert pid_file.exists()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)  # not communicate(): the orphaned stub would hold the pipes open
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    assert proc.returncode == -signal.SIGTERM
    assert _requeues(stubs) == []


def test_strategy_reads_the_multinode_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What srun sets for the multi-node script (4 nodes, one task per node, 4 GPUs each), seen by task 2."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SLURMD_")) or k == "TF_CONFIG"]:
        monkeypatch.delenv(key)
    env = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NTASKS": "4",
           "SLURM_STEP_NUM_TASKS": "4", "SLURM_NNODES": "4", "SLURM_STEP_NODELIST": "gcn[9-12]",
           "SLURM_STEP_TASKS_PER_NODE": "1(x4)", "SLURM_TASKS_PER_NODE": "1(x4)", "SLURMD_NODENAME": "gcn11"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert strategy.cluster_source() == "slurm"
    assert strategy._tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"]) == [1, 1, 1, 1]
    # The resolver as strategy.py builds it on a node where the task sees 4 GPUs: the workers in SLURM's
    # node order (gcn9 before gcn10), on the job's port.
    monkeypatch.setattr(strategy.tf.config, "list_physical_devices", lambda kind=None: ["GPU"] * 4)
    resolver = strategy._resolver("slurm")
    port = strategy.slurm_base_port(4242)
    assert port == 27872
    assert resolver.cluster_spec().as_dict() == {"worker": [f"gcn{i}:{port}" for i in range(9, 13)]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 2)
    assert resolver.num_accelerators() == {"GPU": 4}


def test_strategy_sees_no_cluster_in_the_single_task_scripts() -> None:
    """One task (1 GPU or 4 GPUs): no multi-worker cluster, so auto picks default or mirrored."""
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_NNODES": "1",
           "SLURM_STEP_NODELIST": "gcn1", "SLURM_STEP_TASKS_PER_NODE": "1"}
    assert strategy.cluster_source(env) == ""
