"""The study recipes in recipes/: syntax, every command they run, the study settings, one end-to-end run.

As tests/test_slurm.py does for the sbatch scripts, the scripts are run for real by bash with the
Python interpreter replaced by a stub that records its arguments (and, for train_keras.py, creates the
run folder's files the later steps look for): every train_keras.py / eval_keras.py / create_covidx.py /
compare.py / split_val.py command is then parsed by that script's own ``parse_args``, so the recipes
cannot drift from the flags. Cheap: bash and the stub only. One recipe (ResNet-18, SMOKE=1) runs for
real on synthetic data.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

import compare
import create_covidx
import eval_keras
import train_keras
from common.disclaimer import DISCLAIMER
from conftest import REPO_ROOT
from training.config import run_folder_name

RECIPES_DIR = REPO_ROOT / "recipes"
RECIPES = [
    "imagenet_transfer_densenet121.sh",
    "imagenet_transfer_ensemble.sh",
    "imagenet_transfer_xception.sh",
    "resnet18_radiography.sh",
    "surfsara_resnet50v2_512.sh",
]
TIMEOUT = 60
# Checkpoints the stub "trains": epoch 2 and 3 share the lowest validation loss.
STUB_CHECKPOINTS = (
    "cp-01-0.61.hdf5", "cp-02-0.40.hdf5", "cp-03-0.40.hdf5", "cp-04-0.52.hdf5", "cp-05-nan.hdf5"
)

STUB = """#!{python}
import json, os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if len(sys.argv) > 1 and Path(sys.argv[1]).name == "train_keras.py":
    import train_keras
    from training.config import run_folder_name
    args = train_keras.parse_args(sys.argv[2:])
    run = Path(args.output) / run_folder_name(args.name, args.lr)
    run.mkdir(parents=True, exist_ok=True)
    for name in {checkpoints!r} + ("final_model.hdf5",):
        (run / name).touch()
"""


def _split_val_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recipes_split_val", RECIPES_DIR / "split_val.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


split_val = _split_val_module()
PARSERS = {
    "train_keras.py": train_keras.parse_args,
    "eval_keras.py": eval_keras.parse_args,
    "create_covidx.py": create_covidx.parse_args,
    "compare.py": compare.parse_args,
    "split_val.py": split_val.parse_args,
}


@pytest.fixture()
def stub(tmp_path: Path) -> Path:
    path = tmp_path / "stub_python"
    path.write_text(STUB.format(python=sys.executable, repo=str(REPO_ROOT), checkpoints=STUB_CHECKPOINTS))
    path.chmod(0o755)
    return path


def _run(script: str, env: dict[str, str], cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RECIPES_DIR / script)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _stub_env(tmp_path: Path, stub: Path, **extra: str) -> dict[str, str]:
    ours = ("SMOKE", "DATA", "OUT", "PY", "WEIGHTS", "RADIOGRAPHY_DB")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(PY=str(stub), STUB_LOG=str(tmp_path / "calls.jsonl"), DATA=str(tmp_path / "covidx"),
               RADIOGRAPHY_DB=str(tmp_path / "COVID-19_Radiography_Dataset"), OUT=str(tmp_path / "out"))
    env.update(extra)
    return env


def _calls(tmp_path: Path) -> list[tuple[str, object]]:
    """(script name, parsed namespace) of every Python command the recipe ran, in order."""
    log = tmp_path / "calls.jsonl"
    calls = []
    for line in (log.read_text().splitlines() if log.exists() else []):
        argv = json.loads(line)
        name = Path(argv[0]).name
        assert name in PARSERS, f"unexpected command: {argv}"
        calls.append((name, PARSERS[name](argv[1:])))
    return calls


def _run_and_parse(script: str, tmp_path: Path, stub: Path, **extra: str):
    result = _run(script, _stub_env(tmp_path, stub, **extra), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The research-use notice is the last thing every recipe prints.
    assert result.stdout.rstrip().endswith(DISCLAIMER)
    return _calls(tmp_path), result


def _by_script(calls, name: str) -> list:
    return [args for script, args in calls if script == name]


def _run_dir(train_args) -> Path:
    return Path(train_args.output) / run_folder_name(train_args.name, train_args.lr)


# ---------------------------------------------------------------- files and syntax


def test_the_five_recipes_exist() -> None:
    assert sorted(p.name for p in RECIPES_DIR.glob("*.sh") if p.name != "common.sh") == RECIPES
    assert (RECIPES_DIR / "README.md").is_file()
    for script in RECIPES:
        text = (RECIPES_DIR / script).read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
        for variable in ("SMOKE", "OUT", "PY"):
            assert f'{variable}="${{{variable}:-' in text, (script, variable)


@pytest.mark.parametrize("script", [*RECIPES, "common.sh"])
def test_bash_syntax(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(RECIPES_DIR / script)], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = [str(RECIPES_DIR / s) for s in [*RECIPES, "common.sh"]]
    result = subprocess.run(["shellcheck", "-s", "bash", "-x", *scripts], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout


def test_the_scripts_print_the_projects_disclaimer() -> None:
    assert f'DISCLAIMER="{DISCLAIMER}"' in (RECIPES_DIR / "common.sh").read_text()
    for script in RECIPES:
        assert 'echo "$DISCLAIMER"' in (RECIPES_DIR / script).read_text()


# ---------------------------------------------------------------- the real-data commands


def test_surfsara_is_the_readme_command(tmp_path: Path, stub: Path) -> None:
    calls, _ = _run_and_parse("surfsara_resnet50v2_512.sh", tmp_path, stub)
    assert [name for name, _ in calls] == ["train_keras.py", "eval_keras.py"]
    (_, train), (_, ev) = calls
    data = str(tmp_path / "covidx")
    assert (train.trainfile, train.testfile, train.data_path) == (f"{data}/train_COVIDx.txt",
                                                                   f"{data}/test_COVIDx.txt", data)
    assert (train.img_size, train.lr, train.bs, train.epochs) == (512, 0.00002, 8, 10)
    assert (train.name, train.model, train.weights, train.head) == ("covid-net-resnet512-", "resnet50v2",
                                                                    "imagenet", "flatten")
    # Everything else is the baseline's default.
    assert (train.class_weights, train.balance, train.schedule) == ((1.0, 1.0, 25.0), "covid", "plateau")
    assert _run_dir(train).name == "covid-net-resnet512-lr2e-05"  # SURFsara's folder name
    assert ev.checkpoint == str(_run_dir(train) / "final_model.hdf5")
    assert (ev.testfile, ev.data_path) == (train.testfile, data) and not hasattr(ev, "image_dir")


def test_densenet121_is_progressive_frozen_mixup_onecycle(tmp_path: Path, stub: Path) -> None:
    calls, _ = _run_and_parse("imagenet_transfer_densenet121.sh", tmp_path, stub)
    assert [name for name, _ in calls] == ["split_val.py", "train_keras.py", "eval_keras.py", "eval_keras.py"]
    split, train, test_eval, val_eval = (args for _, args in calls)
    train_list = str(tmp_path / "covidx" / "train_COVIDx.txt")
    assert (split.fraction, split.seed, split.trainfile) == (0.1, 0, train_list)
    assert (train.trainfile, train.valfile) == (split.out_train, split.out_val)
    assert (train.model, train.weights, train.head, train.img_size) == ("densenet121", "imagenet", "avg", 128)
    assert (train.progressive, train.epochs, train.freeze_epochs) == ("64:10,128:10", 20, 20)
    assert (train.mixup, train.schedule, train.lr, train.bs) == (0.4, "onecycle", 0.01, 32)
    assert (train.onecycle_pct_start, train.onecycle_div_final, train.onecycle_div) == (0.3, 2.5e5, 25.0)
    assert (train.balance, train.class_weights, train.train_bn) == ("none", (1.0, 1.0, 1.0), "on")
    _check_val_and_test_evals(train, split, test_eval, val_eval, tmp_path)


def test_xception_is_frozen_then_unfrozen_with_mixup(tmp_path: Path, stub: Path) -> None:
    calls, _ = _run_and_parse("imagenet_transfer_xception.sh", tmp_path, stub)
    split, train, test_eval, val_eval = (args for _, args in calls)
    assert (train.model, train.weights, train.head, train.img_size, train.progressive) == (
        "xception", "imagenet", "avg", 224, None)
    assert (train.epochs, train.freeze_epochs, train.backbone_lr_mult) == (20, 10, 0.01)
    assert (train.mixup, train.schedule, train.lr, train.bs) == (0.4, "onecycle", 0.01, 32)
    assert (train.onecycle_pct_start, train.onecycle_div_final) == (0.3, 2.5e5)
    assert (train.balance, train.class_weights) == ("none", (1.0, 1.0, 1.0))
    _check_val_and_test_evals(train, split, test_eval, val_eval, tmp_path)


def _check_val_and_test_evals(train, split, test_eval, val_eval, tmp_path: Path) -> None:
    data = tmp_path / "covidx"
    final = str(_run_dir(train) / "final_model.hdf5")
    assert test_eval.checkpoint == val_eval.checkpoint == final
    assert (test_eval.testfile, test_eval.data_path) == (str(data / "test_COVIDx.txt"), str(data))
    # The validation images are training images: their folder is DATA/train.
    assert (val_eval.testfile, val_eval.image_dir) == (split.out_val, str(data / "train"))
    assert Path(test_eval.out).parent == Path(val_eval.out).parent == tmp_path / "out" / "eval"


def test_ensemble_fits_weights_on_the_validation_predictions(tmp_path: Path, stub: Path) -> None:
    calls, result = _run_and_parse("imagenet_transfer_ensemble.sh", tmp_path, stub)
    names = [name for name, _ in calls]
    assert names == ["split_val.py", "train_keras.py", "eval_keras.py", "eval_keras.py"] * 2 + ["compare.py"]
    evals = _by_script(calls, "eval_keras.py")
    splits = _by_script(calls, "split_val.py")
    assert splits[0] == splits[1]  # both models hold out the same validation patients
    (cmp,) = _by_script(calls, "compare.py")
    csv = {Path(e.out).name: str(Path(e.out) / "predictions.csv") for e in evals}
    assert cmp.predictions == [csv["densenet121_test"], csv["xception_test"]]
    assert cmp.weights_from == [csv["densenet121_val"], csv["xception_val"]]
    assert cmp.names == ["densenet121", "xception"]
    assert [m.model for m in _by_script(calls, "train_keras.py")] == ["densenet121", "xception"]
    # Prediction files already there: the models are not trained again.
    for name in csv:
        (tmp_path / "out" / "eval" / name).mkdir(parents=True, exist_ok=True)
        Path(csv[name]).touch()
    (tmp_path / "calls.jsonl").unlink()
    calls, result = _run_and_parse("imagenet_transfer_ensemble.sh", tmp_path, stub)
    assert [name for name, _ in calls] == ["compare.py"]
    assert "densenet121: using the predictions in" in result.stdout


def test_resnet18_builds_the_split_trains_and_evaluates_the_best_epoch(tmp_path: Path, stub: Path) -> None:
    calls, result = _run_and_parse("resnet18_radiography.sh", tmp_path, stub, DATA="")
    assert [name for name, _ in calls] == ["create_covidx.py", "train_keras.py", "eval_keras.py"]
    (_, build), (_, train), (_, ev) = calls
    data = tmp_path / "out" / "radiography"
    database = tmp_path / "COVID-19_Radiography_Dataset"
    assert (build.radiography_db, build.out, build.seed) == (database, data, 0)
    assert build.radiography_split == (0.7, 0.1, 0.2)
    lists = [str(data / f"{split}_COVIDx.txt") for split in ("train", "val", "test")]
    assert [train.trainfile, train.valfile, train.testfile, train.data_path] == [*lists, str(data)]
    assert (train.model, train.img_size, train.lr, train.epochs, train.bs) == ("resnet18", 224, 3e-5, 20, 32)
    # A constant rate: the plateau schedule's floor is the rate itself.
    assert (train.schedule, train.min_lr) == ("plateau", train.lr)
    assert (train.no_augment, train.balance, train.class_weights) == (True, "none", (1.0, 1.0, 1.0))
    assert (train.head, train.weights, train.mixup, train.freeze_epochs) == ("avg", "none", 0.0, 0)
    # The first epoch with the lowest validation loss; a nan epoch is never chosen.
    assert ev.checkpoint == str(_run_dir(train) / "cp-02-0.40.hdf5")
    assert f"lowest validation loss: {ev.checkpoint}" in result.stdout
    assert (ev.testfile, ev.data_path) == (train.testfile, str(data))


@pytest.mark.parametrize("script, variable", [("surfsara_resnet50v2_512.sh", "DATA"),
                                              ("imagenet_transfer_densenet121.sh", "DATA"),
                                              ("imagenet_transfer_xception.sh", "DATA"),
                                              ("imagenet_transfer_ensemble.sh", "DATA"),
                                              ("resnet18_radiography.sh", "RADIOGRAPHY_DB")])
def test_missing_data_stops_before_any_command(script: str, variable: str, tmp_path: Path,
                                               stub: Path) -> None:
    env = _stub_env(tmp_path, stub)
    del env[variable]
    result = _run(script, env, cwd=tmp_path)
    assert result.returncode != 0
    assert f"{variable}: set {variable} to the" in result.stderr and "SMOKE=1" in result.stderr
    assert _calls(tmp_path) == []


# ---------------------------------------------------------------- SMOKE=1: the same pipeline, tiny


@pytest.mark.parametrize("script", RECIPES)
def test_smoke_mode_runs_the_same_pipeline_small(script: str, tmp_path: Path, stub: Path) -> None:
    real, _ = _run_and_parse(script, tmp_path, stub)
    (tmp_path / "calls.jsonl").unlink()
    env = {"SMOKE": "1", "DATA": ""} if script != "resnet18_radiography.sh" else {"SMOKE": "1"}
    smoke, result = _run_and_parse(script, tmp_path, stub, **env)
    assert "SMOKE=1: synthetic data" in result.stdout
    builds = _by_script(smoke, "create_covidx.py")
    assert builds and all(b.synthetic is not None and b.out.is_relative_to(tmp_path / "out") for b in builds)
    # Same steps as the real recipe, plus building the synthetic data.
    assert [name for name, _ in smoke if name != "create_covidx.py"] == [
        name for name, _ in real if name != "create_covidx.py"]
    for args in [*_by_script(real, "train_keras.py"), *_by_script(smoke, "train_keras.py")]:
        _check_recipe_flags(args)
    for real_args, smoke_args in zip(_by_script(real, "train_keras.py"), _by_script(smoke, "train_keras.py")):
        assert smoke_args.weights == "none" and smoke_args.img_size <= 72 and smoke_args.epochs <= 2
        same = ("model", "head", "lr", "mixup", "schedule", "balance", "class_weights", "no_augment",
                "backbone_lr_mult", "min_lr", "name")
        assert {k: getattr(smoke_args, k) for k in same} == {k: getattr(real_args, k) for k in same}
        assert smoke_args.data_path.startswith(str(tmp_path / "out"))


def _check_recipe_flags(args) -> None:
    """The checks train_keras.py makes of the ImageNet-transfer flags before it reads any list, passed."""
    import models
    from training.checks import check_transfer_options

    min_size = models.get_model_info(args.model).min_size
    assert args.img_size >= min_size
    stages = check_transfer_options(
        epochs=args.epochs, lr=args.lr, schedule=args.schedule, min_lr=args.min_lr,
        onecycle_pct_start=args.onecycle_pct_start, label_smoothing=args.label_smoothing,
        freeze_epochs=args.freeze_epochs, random_backbone=False, progressive=args.progressive,
        head=args.head, img_size=args.img_size, min_size=min_size,
    )
    if args.progressive:
        assert sum(epochs for _, epochs in stages) == args.epochs and stages[-1][0] == args.img_size


# ---------------------------------------------------------------- split_val.py


def test_split_val_writes_train_keras_patient_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from data.lists import read_list
    from data.pipeline import patient_split

    rng = np.random.default_rng(0)
    labels = ("normal", "pneumonia", "COVID-19")
    lines = [f"p{i // 2} img{i}.png {labels[rng.integers(3)]} src\n" for i in range(60)]
    (tmp_path / "train.txt").write_text("".join(lines) + "bad line\n" + lines[0])
    argv = ["--trainfile", str(tmp_path / "train.txt"), "--out-train", str(tmp_path / "lists" / "t.txt"),
            "--out-val", str(tmp_path / "lists" / "v.txt"), "--fraction", "0.2", "--seed", "3"]
    assert split_val.main(argv) == 0
    out = capsys.readouterr().out
    assert "60 images, 1 bad lines skipped, 1 duplicate lines dropped" in out
    train = read_list(tmp_path / "lists" / "t.txt").entries
    val = read_list(tmp_path / "lists" / "v.txt").entries
    expected = patient_split(read_list(tmp_path / "train.txt").entries, fraction=0.2, seed=3)
    assert (train, val) == expected
    assert len(train) + len(val) == 60 and 0 < len(val) < 30
    assert not {e.patient_key for e in train} & {e.patient_key for e in val}
    before = (tmp_path / "lists" / "v.txt").read_bytes()
    assert split_val.main(argv) == 0 and (tmp_path / "lists" / "v.txt").read_bytes() == before
    assert split_val.main([*argv[:6], "--fraction", "1.5"]) == 2
    assert "--fraction must be between 0 and 1" in capsys.readouterr().err


# ---------------------------------------------------------------- one recipe for real


@pytest.mark.slow
def test_resnet18_recipe_end_to_end_in_smoke_mode(tmp_path: Path) -> None:
    """SMOKE=1 ResNet-18: synthetic database -> split -> 2 epochs at 64 px -> best epoch evaluated (~50 s)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "WEIGHTS", "RADIOGRAPHY_DB")}
    env.update(SMOKE="1", OUT=str(tmp_path / "out"), PY=sys.executable, TF_CPP_MIN_LOG_LEVEL="2")
    result = _run("resnet18_radiography.sh", env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.rstrip().endswith(DISCLAIMER)
    data = tmp_path / "out" / "synthetic" / "radiography"
    counts = {name: len((data / f"{name}_COVIDx.txt").read_text().splitlines())
              for name in ("train", "val", "test")}
    assert counts == {"train": 83, "val": 13, "test": 24}
    run = tmp_path / "out" / "runs" / "resnet18-radiography-lr3e-05"
    config = json.loads((run / "run_config.json").read_text())
    assert config["model"]["name"] == "resnet18" and config["model"]["input_shape"] == [64, 64, 3]
    assert (config["augment"], config["epochs"], config["min_lr"], config["valfile"]) == (
        None, 2, 3e-5, str(data / "val_COVIDx.txt"))
    losses = {p.name: float(p.stem.split("-")[2]) for p in run.glob("cp-*.hdf5")}
    assert len(losses) == 2
    metrics = json.loads((tmp_path / "out" / "eval" / "resnet18_test" / "metrics.json").read_text())
    best = min(sorted(losses), key=losses.get)
    assert Path(metrics["evaluated"]["checkpoint"]).name == best
    assert metrics["n_images"] == 24
    assert 0.0 <= metrics["metrics"]["accuracy"]["value"] <= 1.0
    predictions = pd.read_csv(tmp_path / "out" / "eval" / "resnet18_test" / "predictions.csv")
    assert len(predictions) == 24
    np.testing.assert_allclose(predictions[["p_normal", "p_pneumonia", "p_COVID-19"]].sum(axis=1), 1.0,
                               atol=1e-4)
    assert "Sens Normal: " in result.stdout and "PPV Normal: " in result.stdout
