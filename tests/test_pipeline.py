"""The tf.data pipeline: decoding like cv2, strict list loading, patient split, balanced batches."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from conftest import grey_level, write_constant_images
from data.images import read_resize
from data.labels import CLASS_TO_INDEX
from data.lists import ListEntry, write_list
from data.pipeline import (
    find_image_problems,
    load_entries,
    make_eval_dataset,
    make_train_dataset,
    patient_split,
)


def test_read_resize_matches_cv2(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (90, 70), dtype=np.uint8), (9, 9), 3)
    color = cv2.GaussianBlur(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8), (9, 9), 3)
    deep = (gray.astype(np.uint16) * 257)  # 16-bit PNG, as some public sources ship
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "c.png"), color)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    for name in ("g.png", "c.png", "d.png"):
        ours = read_resize(str(tmp_path / name), img_size=32).numpy()
        ref = cv2.resize(cv2.imread(str(tmp_path / name)), (32, 32)).astype(np.float32) / 255.0
        ref = ref[..., ::-1]  # cv2 is BGR, the pipeline RGB
        assert ours.shape == (32, 32, 3) and ours.dtype == np.float32
        assert 0.0 <= ours.min() and ours.max() <= 1.0
        # Same bilinear sampling; cv2's fixed-point arithmetic differs by at most a grey level.
        np.testing.assert_allclose(ours, ref, atol=2.5 / 255)
        assert np.abs(ours - ref).mean() < 0.6 / 255
    one = read_resize(str(tmp_path / "c.png"), img_size=16, channels=1).numpy()
    assert one.shape == (16, 16, 1)


def test_load_entries_is_strict(tmp_path: Path) -> None:
    images = tmp_path / "train"
    entries = write_constant_images(images, ["normal", "COVID-19"])
    good = write_list(tmp_path / "good.txt", entries)
    assert load_entries(good, images) == entries

    missing = write_list(tmp_path / "missing.txt", entries + [ListEntry("x", "nope.png", "normal")])
    with pytest.raises(ValueError, match=r"1 of 3 images are missing.*nope.png: file does not exist"):
        load_entries(missing, images)

    (tmp_path / "bad.txt").write_text("a img000.png normal\nb img001.png covid\n")
    with pytest.raises(ValueError, match=r"1 bad lines: line 2: no known label"):
        load_entries(tmp_path / "bad.txt", images)

    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="has no images"):
        load_entries(tmp_path / "empty.txt", images)

    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_entries(good, tmp_path / "nowhere")


def test_unreadable_images_are_named(tmp_path: Path) -> None:
    images = tmp_path / "train"
    entries = write_constant_images(images, ["normal", "pneumonia"])
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # incompressible: files of several KiB
    cv2.imwrite(str(images / "big.png"), noisy)
    cv2.imwrite(str(images / "big.jpg"), noisy)
    cv2.imwrite(str(images / "big.bmp"), noisy)
    png, jpg, bmp = ((images / f"big.{x}").read_bytes() for x in ("png", "jpg", "bmp"))
    files = {
        "notes.png": b"this is not an image",
        "empty.png": b"",
        "cut.png": png[: len(png) // 2],  # a valid header, cut mid-IDAT (what a killed copy leaves)
        "cut.jpg": jpg[: len(jpg) - 300],
        "cut.bmp": bmp[:-10],
        "padded.jpg": jpg + b"\x00" * 100,  # zeros after FFD9: complete, decodes
        "trailer.png": png + b"junk after IEND",  # complete, decodes
        # Starts and ends like a complete PNG, but the middle is gone: only a decode finds it.
        "hollow.png": png[:200] + png[-12:],
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    entries += [ListEntry(name.split(".")[0], name, "normal") for name in ["big.png", "big.jpg", *files]]
    header = dict((e.filename, r) for e, r in find_image_problems(entries, images, verify="header"))
    assert header == {
        "notes.png": "not a PNG, JPEG, BMP or GIF image",
        "empty.png": "empty file",
        "cut.png": "truncated PNG (no IEND chunk at its end)",
        "cut.jpg": "truncated JPEG (no FFD9 end marker at its end)",
        "cut.bmp": f"truncated BMP ({len(bmp) - 10} of the {len(bmp)} bytes its header declares)",
    }
    full = dict((e.filename, r) for e, r in find_image_problems(entries, images, verify="full", workers=2))
    assert set(full) == set(header) | {"hollow.png"}
    assert full["hollow.png"].startswith("cannot be decoded")
    assert {k: v for k, v in full.items() if k != "hollow.png"} == header  # the header reasons come first
    assert find_image_problems(entries, images, verify="none") == []
    # The list names them all, before any training, in one error.
    listed = write_list(tmp_path / "list.txt", entries)
    with pytest.raises(ValueError, match=r"5 of 12 images are missing or unreadable: .*notes.png: not a PNG"):
        load_entries(listed, images)


def test_patient_split_keeps_patients_whole_and_every_class() -> None:
    rng = np.random.default_rng(1)
    entries = []
    for label, n_patients in (("normal", 200), ("pneumonia", 150), ("COVID-19", 12)):
        for p in range(n_patients):
            for k in range(int(rng.integers(1, 4))):
                entries.append(ListEntry(f"{label}-{p}", f"{label}-{p}-{k}.png", label, "src"))
    train, val = patient_split(entries, fraction=0.1, seed=0)
    assert len(train) + len(val) == len(entries)
    assert not {e.patient_key for e in train} & {e.patient_key for e in val}
    for label in ("normal", "pneumonia", "COVID-19"):
        total = sum(e.label == label for e in entries)
        share = sum(e.label == label for e in val) / total
        assert 0.08 <= share <= 0.2, (label, share)
    assert patient_split(entries, fraction=0.1, seed=0) == (train, val)
    assert patient_split(entries, fraction=0.1, seed=1) != (train, val)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        patient_split(entries, fraction=1.0, seed=0)


def test_balanced_batches_have_one_covid_and_cover_the_others_once(tmp_path: Path) -> None:
    labels = ["normal"] * 8 + ["pneumonia"] * 6 + ["COVID-19"] * 3
    entries = write_constant_images(tmp_path, labels)
    data = make_train_dataset(
        entries,
        tmp_path,
        img_size=8,
        batch_size=8,
        class_weights={0: 1.0, 1: 1.0, 2: 25.0},
        augment=None,
        seed=3,
    )
    assert data.steps_per_epoch == 2  # 14 normal/pneumonia images, 7 per batch
    seen = Counter()
    for images, y, w in data.dataset.take(2 * data.steps_per_epoch):
        images, y, w = images.numpy(), y.numpy(), w.numpy()
        assert images.shape == (8, 8, 8, 3)
        classes = y.argmax(axis=1)
        assert (classes == CLASS_TO_INDEX["COVID-19"]).sum() == 1
        np.testing.assert_array_equal(w, np.where(classes == 2, 25.0, 1.0))
        for img, c in zip(images, classes):
            idx = grey_level(img)
            assert labels[idx] == ("normal", "pneumonia", "COVID-19")[c]  # label travels with its image
            seen[idx] += 1
    # Two epochs: every normal/pneumonia image exactly twice, COVID-19 images 4 times in total.
    assert all(seen[i] == 2 for i in range(14))
    assert sum(seen[i] for i in range(14, 17)) == 4


def test_unbalanced_mode_and_errors(tmp_path: Path) -> None:
    entries = write_constant_images(tmp_path, ["normal"] * 5 + ["pneumonia"] * 5)
    data = make_train_dataset(entries, tmp_path, img_size=8, batch_size=4, balance=False, augment=None)
    assert data.steps_per_epoch == 3 and data.covid_per_batch == 0
    with pytest.raises(ValueError, match="at least one COVID-19 image"):
        make_train_dataset(entries, tmp_path, img_size=8, batch_size=4)
    with pytest.raises(ValueError, match="batch size 1"):
        make_train_dataset(entries, tmp_path, img_size=8, batch_size=1)


def test_augmented_batches_stay_in_range(tmp_path: Path) -> None:
    entries = write_constant_images(tmp_path, ["normal"] * 6 + ["COVID-19"] * 2, size=32)
    data = make_train_dataset(entries, tmp_path, img_size=32, batch_size=4, seed=0)
    images, _, _ = next(iter(data.dataset))
    images = images.numpy()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert (images == 0.0).any()  # the constant fill of rotated/shifted images


def test_eval_dataset_is_each_image_once_in_order(tmp_path: Path) -> None:
    labels = ["normal", "pneumonia", "COVID-19", "normal", "COVID-19"]
    entries = write_constant_images(tmp_path, labels)
    batches = list(make_eval_dataset(entries, tmp_path, img_size=8, batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    levels = [grey_level(img) for b in batches for img in b[0].numpy()]
    classes = [int(c) for b in batches for c in b[1].numpy().argmax(axis=1)]
    assert levels == [0, 1, 2, 3, 4]
    assert classes == [0, 1, 2, 0, 2]


def test_same_seed_same_batches(tmp_path: Path) -> None:
    entries = write_constant_images(tmp_path, ["normal"] * 9 + ["pneumonia"] * 6 + ["COVID-19"] * 3, size=32)

    def first_batches(seed: int, start_epoch: int = 0) -> np.ndarray:
        data = make_train_dataset(
            entries, tmp_path, img_size=16, batch_size=4, seed=seed, start_epoch=start_epoch
        )
        return np.stack([b[0].numpy() for b in data.dataset.take(5)])

    a, b = first_batches(7), first_batches(7)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - first_batches(8)).mean() > 0.01
    # A resumed run (start_epoch > 0) does not replay the first epoch's shuffles and draws.
    assert np.abs(a - first_batches(7, start_epoch=3)).mean() > 0.01


@pytest.mark.parametrize("source", ["files", "cache"])
@pytest.mark.parametrize("balance", [True, False])
def test_a_resumed_stream_is_the_tail_of_an_uninterrupted_one(
    tmp_path: Path, source: str, balance: bool
) -> None:
    """Starting at (epoch, step) gives exactly the batches an uninterrupted stream has there, draws too."""
    from data.cache import build_cache, open_cache
    from data.pipeline import CachedImages

    labels = ["normal"] * 6 + ["pneumonia"] * 5 + ["COVID-19"] * 3  # 11 others: passes, epochs unaligned
    entries = write_constant_images(tmp_path / "img", labels, size=16)
    images = tmp_path / "img"
    if source == "cache":
        root = build_cache(tmp_path / "cache", lists={"train": (entries, images)}, size=16, shard_images=4)
        images = CachedImages(open_cache(root, "train", entries=entries), shuffle_buffer=4)
    kwargs = dict(img_size=16, batch_size=4, balance=balance, mixup_alpha=0.4, seed=5, steps_per_epoch=5)

    def batches(n: int, **start) -> list[np.ndarray]:
        data = make_train_dataset(entries, images, **kwargs, **start)
        return [
            np.concatenate([x.numpy().ravel(), y.numpy().ravel(), w.numpy()])
            for x, y, w in data.dataset.take(n)
        ]

    whole = batches(14)
    for epoch, step in ((0, 3), (1, 0), (2, 1)):
        tail = batches(14 - (epoch * 5 + step), start_epoch=epoch, start_step=step)
        for got, want in zip(tail, whole[epoch * 5 + step :], strict=True):
            np.testing.assert_array_equal(got, want)


def test_every_pass_over_a_stream_is_a_permutation(tmp_path: Path) -> None:
    """11 non-COVID images, 3 per batch: each run of 11 consecutive non-COVID rows holds every image once."""
    labels = ["normal"] * 6 + ["pneumonia"] * 5 + ["COVID-19"] * 2
    entries = write_constant_images(tmp_path, labels)
    data = make_train_dataset(entries, tmp_path, img_size=8, batch_size=4, augment=None, seed=2)
    assert data.steps_per_epoch == 4
    others, covid = [], []
    for images, y, _ in data.dataset.take(22):  # 66 non-COVID rows: 6 passes
        for img, c in zip(images.numpy(), y.numpy().argmax(axis=1)):
            (covid if c == 2 else others).append(grey_level(img))
    passes = [others[i : i + 11] for i in range(0, 66, 11)]
    assert all(sorted(p) == list(range(11)) for p in passes)
    assert len({tuple(p) for p in passes}) == 6  # a new order every pass
    assert [sorted(covid[i : i + 2]) for i in range(0, 22, 2)] == [[11, 12]] * 11


def test_shards_split_each_global_batch_exactly(tmp_path: Path) -> None:
    """Two workers' shards together are the single-worker batch, and each decodes only its half."""
    labels = ["normal"] * 8 + ["pneumonia"] * 7 + ["COVID-19"] * 3
    entries = write_constant_images(tmp_path, labels)
    kwargs = dict(img_size=8, batch_size=6, class_weights={2: 25.0}, augment=None, seed=4)
    whole = make_train_dataset(entries, tmp_path, **kwargs)
    halves = [make_train_dataset(entries, tmp_path, num_shards=2, shard_index=i, **kwargs) for i in (0, 1)]
    assert whole.steps_per_epoch == halves[0].steps_per_epoch == 3
    for (x, y, w), (x0, y0, w0), (x1, y1, w1) in zip(
        whole.dataset.take(6), halves[0].dataset.take(6), halves[1].dataset.take(6)
    ):
        assert x0.shape[0] == x1.shape[0] == 3
        np.testing.assert_array_equal(x.numpy(), np.concatenate([x0, x1]))
        np.testing.assert_array_equal(y.numpy(), np.concatenate([y0, y1]))
        np.testing.assert_array_equal(w.numpy(), np.concatenate([w0, w1]))
    # Per-replica batches: a worker with two local replicas gets its rows as two batches of 3.
    split = make_train_dataset(entries, tmp_path, shard_batch_size=3, **kwargs)
    first, second = [b[0].numpy() for b in split.dataset.take(2)]
    fresh = make_train_dataset(entries, tmp_path, **kwargs)  # a new iterator of `whole` would reshuffle
    np.testing.assert_array_equal(np.concatenate([first, second]), next(iter(fresh.dataset))[0].numpy())
    with pytest.raises(ValueError, match="cannot split batches of 6 into shard 0 of 4"):
        make_train_dataset(entries, tmp_path, num_shards=4, shard_index=0, **kwargs)


def test_grey_batches_are_augmented_on_one_channel_with_the_same_pixels() -> None:
    """The grey fast path and the full path give identical pixels; colour batches keep their colours."""
    from data.augment import AugmentConfig, augment_batch
    from data.pipeline import _augment_channels_once

    key = tf.constant([3, 9], tf.int64)
    grey = tf.tile(tf.random.stateless_uniform([4, 32, 32, 1], seed=[1, 2]), [1, 1, 1, 3])
    np.testing.assert_array_equal(
        _augment_channels_once(grey, key, AugmentConfig()).numpy(),
        augment_batch(grey, key, AugmentConfig()).numpy(),
    )
    colour = tf.random.stateless_uniform([4, 32, 32, 3], seed=[1, 3])
    out = _augment_channels_once(colour, key, AugmentConfig()).numpy()
    np.testing.assert_array_equal(out, augment_batch(colour, key, AugmentConfig()).numpy())
    assert np.abs(out[..., 0] - out[..., 1]).max() > 0.1  # not flattened to grey
