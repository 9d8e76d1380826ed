"""create_covidx.py on bad input: every bad row or file is skipped with its reason, every bad argument or
unwritable output is one ``error:`` line and a non-zero exit, and nothing is read or written outside the
source and output folders."""
from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

import create_covidx
from data import build as build_module
from data.build import ImageTask, TaskResult, plan_outputs, write_image
from data.sources import Record
from data.synthetic import render_cxr, write_rsna_dicom, write_xlsx

GOOD_PNG = cv2.imencode(".png", np.full((32, 32), 90, np.uint8))[1].tobytes()
GOOD_JPEG = cv2.imencode(".jpg", np.full((32, 32), 90, np.uint8))[1].tobytes()


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])


def snapshot(root: Path, *, skip: Path) -> set[str]:
    """Every file and folder under ``root``, except those under ``skip``."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if skip != p and skip not in p.parents}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = create_covidx.main([*argv, "--workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def rsna_dicom(path: Path, pid: str, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rsna_dicom(path, render_cxr("normal", np.random.default_rng(seed), 32), patient_id=pid, seed=seed)
    return path


def rsna_folder(root: Path, normal: list[str]) -> Path:
    write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"],
              [[p, "Normal"] for p in normal])
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
              [[p, "", "", "", "", "0"] for p in normal])
    (root / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
    return root


# -- file names in metadata that would leave the folders --------------------------------------------

ESCAPES = ("../../secret", "/etc/passwd")


def test_metadata_file_names_that_leave_the_folder_are_skipped_and_never_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    # Readable images where the escaping names point: copying one would prove it was read.
    (data / "secret.png").parent.mkdir(parents=True)
    (data / "secret.png").write_bytes(GOOD_PNG)
    (data / "secret.jpg").write_bytes(GOOD_JPEG)
    (data / "secret.dcm").write_bytes(rsna_dicom(tmp_path / "tmp.dcm", "x").read_bytes())
    cohen = data / "cohen"
    (cohen / "images").mkdir(parents=True)
    (cohen / "images" / "ok.png").write_bytes(GOOD_PNG)
    write_csv(cohen / "metadata.csv", ["patientid", "finding", "view", "filename", "folder"], [
        ["1", "COVID-19", "PA", "ok.png", "images"],
        ["2", "COVID-19", "PA", "../../secret.png", "images"],
        ["3", "COVID-19", "PA", "/etc/passwd", "images"],
        ["4", "COVID-19", "PA", "secret.png", ".."],
        ["5", "COVID-19", "PA", "passwd", "/etc"],
    ])
    figure1 = data / "figure1"
    (figure1 / "images").mkdir(parents=True)
    write_csv(figure1 / "metadata.csv", ["patientid", "finding"],
              [["../../secret", "COVID-19"], ["/etc/passwd", "COVID-19"]])
    actualmed = data / "actualmed"
    (actualmed / "images").mkdir(parents=True)
    write_csv(actualmed / "metadata.csv", ["patientid", "finding", "imagename"],
              [["a1", "COVID-19", "../../secret.png"], ["a2", "COVID-19", "/etc/passwd"]])
    sirm = data / "sirm"
    (sirm / "COVID").mkdir(parents=True)
    write_xlsx(sirm / "COVID.metadata.xlsx", ["FILE NAME", "FORMAT", "SIZE", "URL"],
               [["../../secret", "PNG", "32x32", "u1"], ["/etc/passwd", "PNG", "32x32", "u2"]])
    rsna = rsna_folder(data / "rsna", ["../../secret", "/etc/passwd", "../../../etc/passwd"])
    out = tmp_path / "out"
    before = snapshot(tmp_path, skip=out)
    code, stdout, err = run(["--cohen", str(cohen), "--figure1", str(figure1), "--actualmed", str(actualmed),
                             "--sirm", str(sirm), "--rsna", str(rsna), "--out", str(out)], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    bad = {name: [(s["row"], s["id"]) for s in src["skipped"] if s["reason"] == "bad file name"]
           for name, src in report["sources"].items()}
    assert bad == {
        "cohen": [(2, "2"), (3, "3"), (4, "4"), (5, "5")],
        "fig1": [(1, "../../secret"), (2, "/etc/passwd")],
        "actmed": [(1, "a1"), (2, "a2")],
        "sirm": [(1, "../../secret"), (2, "/etc/passwd")],
        "rsna": [("stage_2_detailed_class_info.csv:1", "../../secret"),
                 ("stage_2_detailed_class_info.csv:2", "/etc/passwd"),
                 ("stage_2_detailed_class_info.csv:3", "../../../etc/passwd")],
    }
    details = [s["detail"] for src in report["sources"].values() for s in src["skipped"]]
    assert any("escapes its folder" in d for d in details)
    assert any("is an absolute path" in d for d in details)
    assert "bad file name: 4" in stdout  # the summary counts them
    # only ok.png was read and written; nothing appeared or changed outside the output folder
    assert sorted(p.name for split in ("train", "test") for p in (out / split).iterdir()) == ["ok.png"]
    assert snapshot(tmp_path, skip=out) == before
    assert not list(tmp_path.glob("**/.partial-*"))


def test_a_record_outside_its_source_folder_is_refused_by_the_planner(tmp_path: Path) -> None:
    root = tmp_path / "cohen"
    inside = Record("cohen", 1, "p1", "COVID-19", "a.png", root / "images" / "a.png", "a.png")
    outside = Record("cohen", 2, "p2", "COVID-19", "b.png", root / "images" / ".." / ".." / "b.png", "b.png")
    sneaky = Record("cohen", 3, "p3", "COVID-19", "c.png", root / "images" / "c.png", "../c.png")
    skips: dict = {"cohen": []}
    tasks, planned = plan_outputs([(inside, "train"), (outside, "train"), (sneaky, "test")], tmp_path / "out",
                                  skips, roots={"cohen": root})
    assert [t.dest for t in tasks] == [str(tmp_path / "out" / "train" / "a.png")]
    assert [(s.row, s.reason) for s in skips["cohen"]] == [(2, "bad file name"), (3, "bad file name")]
    assert "is outside the source folder" in skips["cohen"][0].detail
    assert "escapes its folder" in skips["cohen"][1].detail


# -- damaged source files -----------------------------------------------------------------------------

def test_damaged_dicom_png_and_jpeg_are_skipped_with_their_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rsna = rsna_folder(tmp_path / "rsna", ["r-good", "r-truncated", "r-nopixels", "r-empty", "r-garbage"])
    images = rsna / "stage_2_train_images"
    full = rsna_dicom(images / "r-good.dcm", "r-good").read_bytes()
    (images / "r-truncated.dcm").write_bytes(full[: len(full) - 200])
    ds = pydicom.dcmread(images / "r-good.dcm")
    del ds.PixelData  # a header-only DICOM (a structured report, say) in the image folder
    ds.save_as(images / "r-nopixels.dcm")
    (images / "r-empty.dcm").write_bytes(b"")
    (images / "r-garbage.dcm").write_bytes(b"not a dicom at all" * 20)
    cohen = tmp_path / "cohen"
    (cohen / "images").mkdir(parents=True)
    (cohen / "images" / "ok.png").write_bytes(GOOD_PNG)
    (cohen / "images" / "empty.png").write_bytes(b"")
    (cohen / "images" / "empty.jpg").write_bytes(b"")
    (cohen / "images" / "cut.png").write_bytes(GOOD_PNG[: len(GOOD_PNG) // 2])
    (cohen / "images" / "cut.jpg").write_bytes(GOOD_JPEG[: len(GOOD_JPEG) // 2])
    (cohen / "images" / "text.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    names = ["ok.png", "empty.png", "empty.jpg", "cut.png", "cut.jpg", "text.jpg"]
    write_csv(cohen / "metadata.csv", ["patientid", "finding", "view", "filename"],
              [[str(100 + i), "COVID-19", "PA", n] for i, n in enumerate(names)])
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the truncated file before failing on it
        code, stdout, err = run(["--cohen", str(cohen), "--rsna", str(rsna), "--out", str(out)], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    cohen_skips = {s["id"]: s["reason"] for s in report["sources"]["cohen"]["skipped"]}
    assert cohen_skips == {str(100 + i): "corrupt image" for i in range(1, 6)}
    rsna_skips = {s["id"]: (s["reason"], s["detail"]) for s in report["sources"]["rsna"]["skipped"]}
    assert set(rsna_skips) == {"r-truncated", "r-nopixels", "r-empty", "r-garbage"}
    assert {reason for reason, _ in rsna_skips.values()} == {"bad DICOM"}
    assert "no pixel data" in rsna_skips["r-nopixels"][1]
    assert rsna_skips["r-truncated"][1] == "truncated file: the pixel data element is incomplete"
    assert report["sources"]["cohen"]["skipped"][3]["detail"] == "damaged JPEG (OSError: Truncated File Read)"
    assert "not a DICOM file" in rsna_skips["r-empty"][1] and "not a DICOM file" in rsna_skips["r-garbage"][1]
    assert report["images"] == {"written": 2, "already_present": 0, "failed": 9}
    assert "images: 2 written, 0 already present, 9 failed" in stdout
    assert "skipped: corrupt image: 5" in stdout and "skipped: bad DICOM: 4" in stdout
    listed = (out / "train_COVIDx.txt").read_text() + (out / "test_COVIDx.txt").read_text()
    assert sorted(line.split()[1] for line in listed.splitlines()) == ["ok.png", "r-good.png"]


# -- the output cannot be written ---------------------------------------------------------------------

@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A cohen source, a finished build of it, and the bytes of its lists and report."""
    cohen = tmp_path / "cohen"
    (cohen / "images").mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(cohen / "images" / f"{i}.png"), np.full((32, 32), 40 * i, np.uint8))
    write_csv(cohen / "metadata.csv", ["patientid", "finding", "view", "filename"],
              [[str(200 + i), "COVID-19", "PA", f"{i}.png"] for i in range(4)])
    out = tmp_path / "out"
    assert create_covidx.main(["--cohen", str(cohen), "--out", str(out), "--workers", "1"]) == 0
    # new rows: the next build has images to write
    for i in range(4, 8):
        cv2.imwrite(str(cohen / "images" / f"{i}.png"), np.full((32, 32), 20 * i, np.uint8))
    write_csv(cohen / "metadata.csv", ["patientid", "finding", "view", "filename"],
              [[str(200 + i), "COVID-19", "PA", f"{i}.png"] for i in range(8)])
    saved = {n: (out / n).read_bytes() for n in ("train_COVIDx.txt", "test_COVIDx.txt", "report.json")}
    return cohen, out, saved


@pytest.mark.parametrize("code_", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO],
                         ids=lambda c: errno.errorcode[c])
def test_a_full_disk_while_writing_images_stops_the_run_and_keeps_the_old_lists(
    built, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code_: int
) -> None:
    cohen, out, saved = built
    capsys.readouterr()
    real = build_module.atomic_write_bytes
    written: list[str] = []

    def full_disk(target, data, **kw):
        if len(written) >= 2:
            raise (PermissionError if code_ == errno.EACCES else OSError)(code_, os.strerror(code_))
        written.append(Path(target).name)
        return real(target, data, **kw)

    monkeypatch.setattr(build_module, "atomic_write_bytes", full_disk)
    code, _, err = run(["--cohen", str(cohen), "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 1
    assert line.startswith(f"error: --out {out.resolve()}: cannot write {out.resolve()}/")
    assert f"{os.strerror(code_)} ({errno.errorcode[code_]})" in line
    assert "previous lists and report.json are untouched" in line
    assert {n: (out / n).read_bytes() for n in saved} == saved
    assert len(written) == 2 and not list(out.rglob(".partial-*"))
    # once there is space again, the re-run lists every image
    monkeypatch.setattr(build_module, "atomic_write_bytes", real)
    code, stdout, _ = run(["--cohen", str(cohen), "--out", str(out)], capsys)
    assert code == 0 and "images: 2 written, 6 already present, 0 failed" in stdout


def test_a_full_disk_while_writing_the_lists_leaves_every_old_list_and_report(
    built, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cohen, out, saved = built
    capsys.readouterr()
    real = Path.write_bytes

    def full_at_report(self: Path, data: bytes) -> int:
        if self.name.endswith("report.json"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_at_report)
    code, _, err = run(["--cohen", str(cohen), "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 1 and "cannot write the lists and report.json" in line and "(EDQUOT)" in line
    # the train and test lists were complete under temporary names, but none replaced the old ones
    assert {n: (out / n).read_bytes() for n in saved} == saved
    assert not list(out.rglob(".partial-*"))


def test_an_unwritable_output_image_is_an_error_of_the_run_not_a_bad_image(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(GOOD_PNG)
    blocker = tmp_path / "out"
    blocker.write_text("a file where the split folder should be")
    result = write_image(ImageTask(0, str(tmp_path / "a.png"), str(blocker / "a.png"), "copy"))
    assert result.status == build_module.OUTPUT_FAILED and result.reason == "cannot write the output"
    assert result.detail == f"{blocker / 'a.png'}: File exists (EEXIST)"  # mkdir of the folder "out"
    # the same image from a source that cannot be read is a skipped image
    missing = write_image(ImageTask(1, str(tmp_path / "gone.png"), str(tmp_path / "ok" / "gone.png"), "copy"))
    assert missing == TaskResult(1, "failed", "missing image", f"{tmp_path / 'gone.png'} disappeared")


def _output_fails_at_3(task: ImageTask, options: object = None) -> TaskResult:
    """Stands for a worker whose disk filled up at the 4th image."""
    if task.index == 3:
        return TaskResult(task.index, build_module.OUTPUT_FAILED, "cannot write the output",
                          f"{task.dest}: No space left on device (ENOSPC)")
    time.sleep(0.05)
    Path(task.dest).write_bytes(b"done")
    return TaskResult(task.index, "written")


def test_an_output_failure_in_a_worker_stops_the_pool_at_once(tmp_path: Path) -> None:
    tasks = [ImageTask(i, f"/in/{i}", str(tmp_path / f"{i}.png"), "copy") for i in range(60)]
    full = r"cannot write .*/3\.png: No space left on device \(ENOSPC\)"
    with pytest.raises(build_module.OutputError, match=full):
        build_module.run_tasks(tasks, workers=2, func=_output_fails_at_3)
    # the queued tasks were cancelled (at most two per worker were in flight) and the workers are gone
    done = len(list(tmp_path.iterdir()))
    assert 1 <= done <= 3 + 2 * 2, done
    assert multiprocessing.active_children() == []


def test_a_read_only_output_file_system_is_one_error_line(
    built, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cohen, out, saved = built
    capsys.readouterr()
    real = tempfile.mkstemp

    def read_only(*args, **kwargs):
        if Path(kwargs.get("dir", "")).resolve().is_relative_to(out.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, _, err = run(["--cohen", str(cohen), "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2
    assert line == (f"error: --out {out}: cannot write into this folder (Read-only file system (EROFS)); "
                    "expected a writable folder")
    assert {n: (out / n).read_bytes() for n in saved} == saved


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores file permissions, so a read-only folder cannot be tested as root")
def test_a_read_only_split_folder_stops_the_run(built, capsys: pytest.CaptureFixture[str]) -> None:
    cohen, out, saved = built
    capsys.readouterr()
    (out / "train").chmod(0o555)
    try:
        code, _, err = run(["--cohen", str(cohen), "--out", str(out)], capsys)
    finally:
        (out / "train").chmod(0o755)
    line = one_error_line(err)
    assert code == 1 and "Permission denied (EACCES)" in line and f"--out {out.resolve()}" in line
    assert {n: (out / n).read_bytes() for n in saved} == saved


# -- bad folders --------------------------------------------------------------------------------------

def test_out_that_is_a_file_and_symlink_loops_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cohen = tmp_path / "cohen"
    (cohen / "images").mkdir(parents=True)
    (cohen / "images" / "a.png").write_bytes(GOOD_PNG)
    write_csv(cohen / "metadata.csv", ["patientid", "finding", "view", "filename"],
              [["1", "COVID-19", "PA", "a.png"]])
    a_file = tmp_path / "out.txt"
    a_file.write_text("not a folder")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = [
        (["--cohen", str(cohen), "--out", str(a_file)],
         f"error: --out {a_file} is an existing file; expected a folder (new or existing)"),
        (["--cohen", str(cohen), "--out", str(loop)],
         f"error: --out: expected a folder to write into, received {loop}, a symbolic link loop"),
        (["--cohen", str(cohen), "--out", str(loop / "sub")],
         f"received {loop / 'sub'}, a symbolic link loop"),
        (["--cohen", str(loop), "--out", str(tmp_path / "o")],
         f"error: --cohen: expected the covid-chestxray-dataset folder with metadata.csv and images/, "
         f"received {loop}, a symbolic link loop"),
        (["--cohen", str(cohen), "--figure1", str(tmp_path / "dangling"), "--out", str(tmp_path / "o")],
         f"error: --figure1: {tmp_path / 'dangling'} is a symbolic link to 'nowhere', which does not exist"),
    ]
    (tmp_path / "dangling").symlink_to("nowhere")
    cases.append((["--synthetic", str(a_file / "sources"), "--synthetic-size", "60"],
                  "error: --synthetic: expected a folder the synthetic sources can be written into, "
                  f"received {a_file / 'sources'} (Not a directory (ENOTDIR))"))
    for argv, expected in cases:
        code, _, err = run(argv, capsys)
        line = one_error_line(err)
        assert code == 2, line
        assert line.startswith(expected) if expected.startswith("error:") else expected in line, line
    assert a_file.read_text() == "not a folder" and not (tmp_path / "o").exists()


# -- --cache from existing lists ----------------------------------------------------------------------

@pytest.mark.slow
def test_cache_reads_bom_crlf_tabs_and_blank_lines_and_refuses_bad_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "covidx"
    labels = ["normal", "pneumonia", "COVID-19"]
    for split in ("train", "test"):
        (out / split).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(out / split / f"{split}{i}.png"), np.full((24, 24), 60 * i, np.uint8))
    train = ("\ufeff" + f"p0\ttrain0.png\t{labels[0]}\tcohen\r\n" + "\r\n" + "   \r\n"
             + f"p1 train1.png {labels[1]} cohen\r\n" + f"COVID 2\ttrain2.png  {labels[2]}\tsirm\r\n")
    (out / "train_COVIDx.txt").write_bytes(train.encode("utf-8"))
    (out / "test_COVIDx.txt").write_text("".join(f"t{i} test{i}.png {labels[i]} rsna\n" for i in range(3)))
    code, stdout, err = run(["--out", str(out), "--cache", "16"], capsys)
    assert code == 0, err
    cached = (out / "cache-16" / "train_COVIDx.txt").read_text(encoding="utf-8").splitlines()
    assert cached == ["p0 train0.png normal cohen", "p1 train1.png pneumonia cohen",
                      "COVID 2 train2.png COVID-19 sirm"]
    assert "(train 3, test 3, baseline resize)" in stdout
    for bad, reason in (("t9 test0.png\n", "line 4: expected at least 3 fields"),
                        ("t9 test0.png flu rsna\n", "line 4: no known label in fields 3 and after")):
        good = "".join(f"t{i} test{i}.png {labels[i]} rsna\n" for i in range(3))
        (out / "test_COVIDx.txt").write_text(good + bad)
        code, _, err = run(["--out", str(out), "--cache", "16"], capsys)
        line = one_error_line(err)
        assert code == 2 and f"{out / 'test_COVIDx.txt'} has 1 bad lines: {reason}" in line
