"""Long jobs show progress on a terminal and stay quiet otherwise (issue 14 item 4)."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from evaluation import inference


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
        monkeypatch.setattr(inference.sys, "stderr", stream)
        with inference.progress_bar(250, progress=None, desc="predicting") as bar:
            for _ in range(250):
                bar.update()
        text = stream.getvalue()
        assert ("250/250" in text) == shown, text
    forced = _Terminal()
    monkeypatch.setattr(inference.sys, "stderr", forced)
    with inference.progress_bar(3, progress=False, desc="x") as bar:
        bar.update(3)
    assert forced.getvalue() == ""


def test_weights_only_evaluation_predicts_without_retracing(tmp_path, caplog: pytest.LogCaptureFixture):
    """43 images in batches of 4 (a last batch of 3) through a weights-only checkpoint: one trace per shape,
    never tf.function's 'triggered tf.function retracing' warning, and the per-image probabilities."""
    import cv2

    from data.lists import ListEntry
    from evaluation.loaders import load_predictor
    from models import build_model
    from training.checkpoints import write_weights_hdf5

    rng = np.random.default_rng(0)
    entries = []
    for i in range(43):
        cv2.imwrite(str(tmp_path / f"t{i}.png"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
        entries.append(ListEntry(f"p{i}", f"t{i}.png", "normal", ""))
    write_weights_hdf5(build_model("smallcnn", num_classes=3, input_shape=(32, 32, 3), weights=None),
                       tmp_path / "cp-01-0.50.hdf5")
    predictor = load_predictor(tmp_path / "cp-01-0.50.hdf5", model="smallcnn", img_size=32)
    with caplog.at_level(logging.WARNING):
        batched = inference.predict_images(predictor.predict_batch, entries, tmp_path, img_size=32,
                                            batch_size=4, progress=False)
        single = inference.predict_images(predictor.predict_batch, entries[:5], tmp_path, img_size=32,
                                           batch_size=1, progress=False)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert batched.shape == (43, 3)
    np.testing.assert_allclose(batched[:5], single, atol=1e-6)
