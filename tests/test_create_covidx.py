"""create_covidx.py: options, exit codes, one-line errors, and the synthetic demo end to end."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import create_covidx
from conftest import REPO_ROOT
from data.sources import BY_OPTION


def test_parse_args_defaults() -> None:
    args = create_covidx.parse_args(["--cohen", "c", "--out", "o"])
    assert args.cohen == Path("c") and args.out == Path("o") and args.figure1 is None
    # --split is resolved in main: covidnet for the COVIDx sources, radiography for --radiography-db.
    assert not hasattr(args, "split") and args.workers >= 1 and args.seed == 0
    assert create_covidx._split_name(args, {"cohen": Path("c")}) == "covidnet"
    assert create_covidx._split_name(args, {"radiography_db": Path("r")}) == "radiography"
    assert create_covidx.parse_args(["--split", "surfsara"]).split == "surfsara"
    assert (args.synthetic_size, args.synthetic_image_size) == (400, 256)


def test_source_flags_and_split_rules_come_from_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    args = create_covidx.parse_args([])
    assert [o for o in vars(args) if o in BY_OPTION] == [
        "cohen", "figure1", "actualmed", "sirm", "ricord", "rsna", "radiography_db"]
    assert {o for o in vars(args) if getattr(args, o) is None} >= set(BY_OPTION)
    with pytest.raises(SystemExit):
        create_covidx.parse_args(["--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for spec in BY_OPTION.values():
        assert "".join(f"{spec.flag} DIR {spec.help}".split()) in text
    assert "--split{covidnet,surfsara,radiography}" in text
    assert "radiographywith--radiography-db" in text and "covidnet:COVID-Net'screate_COVIDx" in text


def test_help_lists_groups_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        create_covidx.parse_args(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    for needle in (
        "sources (at least one, or --synthetic)",
        "--ricord-list",
        "performance",
        "covidnet, the default",
        "(default: 400)",
        "synthetic sources (no download)",
        "--radiography-db DIR",
        "--cache SIZE",
    ):
        assert needle in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "o"], "no source given: use at least one of --cohen"),
        (["--cohen", "{tmp}"], "--out is required"),
        (["--cohen", "{tmp}/absent", "--out", "{tmp}/o"], "--cohen: folder {tmp}/absent does not exist"),
        (["--cohen", "{tmp}", "--out", "{tmp}/o"], "--cohen: {tmp}/metadata.csv not found"),
        (
            ["--cohen", "{tmp}", "--figure1", "{tmp}", "--split", "surfsara", "--out", "{tmp}/o"],
            "--figure1 cannot be used with --split surfsara",
        ),
        (["--synthetic", "{tmp}/s", "--cohen", "{tmp}"], "do not combine it with --cohen"),
        (["--cohen", "{tmp}", "--out", "{tmp}/o", "--workers", "0"], "--workers must be at least 1"),
        (["--cohen", "{tmp}", "--out", "{tmp}/o", "--ricord-list", "x.txt"], "--ricord-list needs --ricord"),
        (["--synthetic", "{tmp}/s", "--synthetic-size", "5"], "--synthetic-size must be at least"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv, message
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert create_covidx.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert message.replace("{tmp}", str(tmp_path)) in err


def test_nothing_usable_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cohen"
    (root / "images").mkdir(parents=True)
    with open(root / "metadata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(
            [["patientid", "finding", "view", "filename"], ["1", "COVID-19", "PA", "gone.png"]]
        )
    assert create_covidx.main(["--cohen", str(root), "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert "no usable image" in captured.err and "missing image: 1" in captured.out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["sources"]["cohen"]["rows_read"] == 1


def test_synthetic_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--synthetic",
        str(tmp_path / "sources"),
        "--out",
        str(tmp_path / "covidx"),
        "--synthetic-size",
        "60",
        "--synthetic-image-size",
        "32",
        "--workers",
        "1",
    ]
    assert create_covidx.main(argv) == 0
    out = capsys.readouterr().out
    assert "COVIDx (covidnet split)" in out and "rsna" in out and "report:" in out
    train = (tmp_path / "covidx" / "train_COVIDx.txt").read_text().splitlines()
    test = (tmp_path / "covidx" / "test_COVIDx.txt").read_text().splitlines()
    report = json.loads((tmp_path / "covidx" / "report.json").read_text())
    assert len(train) == report["totals"]["train"]["total"] and len(test) == report["totals"]["test"]["total"]
    assert {line.split()[-1] for line in train} == {"cohen", "fig1", "actmed", "sirm", "ricord", "rsna"}
    # SURFsara's split rule on the same synthetic sources: cohen and RSNA only
    argv_s = argv[:3] + [str(tmp_path / "surf")] + argv[4:] + ["--split", "surfsara"]
    assert create_covidx.main(argv_s) == 0
    surf = json.loads((tmp_path / "surf" / "report.json").read_text())
    assert set(surf["sources"]) == {"cohen", "rsna"} and surf["list_format"] == "surfsara"
    # SURFsara's data.py form: three fields, the label last
    lines = (tmp_path / "surf" / "train_COVIDx.txt").read_text().splitlines()
    assert {len(line.split()) for line in lines} == {3}
    assert {line.split()[-1] for line in lines} == {"normal", "pneumonia", "COVID-19"}


def test_synthetic_only_writes_sources(tmp_path: Path) -> None:
    argv = ["--synthetic", str(tmp_path / "s"), "--synthetic-size", "60", "--synthetic-image-size", "32"]
    assert create_covidx.main(argv) == 0
    assert (tmp_path / "s" / "rsna" / "stage_2_train_labels.csv").is_file()
    assert not (tmp_path / "s" / "train_COVIDx.txt").exists()


def test_script_runs_and_import_has_no_side_effects(tmp_path: Path) -> None:
    code = "import sys, create_covidx; print('data.build' in sys.modules, 'tensorflow' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "False"]
    done = subprocess.run(
        [sys.executable, "create_covidx.py", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: no source given")
