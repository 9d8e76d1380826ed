"""The TFRecord image cache: exact round trip, resumable build, damage detected, same batches as files."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from data.cache import CacheError, build_cache, open_cache, verify_cache
from data.images import read_resize
from data.lists import ListEntry
from data.pipeline import CachedImages, FileImages, make_eval_dataset, make_train_dataset


def _make_images(folder: Path, labels: list[str]) -> list[ListEntry]:
    """Images of different sizes and formats: 8-bit PNG, 16-bit PNG, grey JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for i, label in enumerate(labels):
        h, w = 40 + 7 * (i % 3), 50 - 5 * (i % 2)
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (5, 5), 2)
        img[:12, :12] = 10 * (i + 1)  # a flat corner tags each image (survives resizing and JPEG)
        if i % 3 == 1:
            name = f"img{i:02d}.png"
            cv2.imwrite(str(folder / name), img.astype(np.uint16) * 257)
        elif i % 3 == 2:
            name = f"img{i:02d}.jpg"
            cv2.imwrite(str(folder / name), img)
        else:
            name = f"img{i:02d}.png"
            cv2.imwrite(str(folder / name), img)
        entries.append(ListEntry(f"p{i}", name, label, "test"))
    return entries


def _tag(image: np.ndarray) -> int:
    return int(round(float(image[0, 0, 0]) * 255 / 10)) - 1


LABELS = ["normal"] * 7 + ["pneumonia"] * 5 + ["COVID-19"] * 3


@pytest.fixture()
def cached(tmp_path: Path) -> tuple[Path, list[ListEntry], Path]:
    entries = _make_images(tmp_path / "train", LABELS)
    root = build_cache(
        tmp_path / "cache", lists={"train": (entries, tmp_path / "train")}, size=24, shard_images=3
    )
    return root, entries, tmp_path / "train"


def test_cache_round_trips_images_and_labels(cached) -> None:
    root, entries, image_dir = cached
    manifest = json.loads((root / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) == 3 + 2 + 1  # ceil(7/3) + ceil(5/3) + ceil(3/3), grouped by class
    assert sum(s["count"] for s in shards.values()) == len(entries)
    cache = open_cache(root, "train", entries=entries)
    seen = {}
    for images, labels in make_eval_dataset(
        entries, CachedImages(cache), img_size=24, batch_size=4, channels=1
    ):
        for img, y in zip(images.numpy(), labels.numpy()):
            seen[_tag(img)] = (img, int(y.argmax()))
    assert len(seen) == len(entries)
    for e in entries:
        direct = read_resize(str(image_dir / e.filename), img_size=24, channels=1).numpy()
        img, label = seen[_tag(direct)]
        assert label == ("normal", "pneumonia", "COVID-19").index(e.label)
        # uint8 storage: equal to the file pipeline up to rounding to the nearest grey level.
        assert np.abs(img - direct).max() <= 0.5 / 255 + 1e-6
    assert verify_cache(root, full=True) == []


def test_rebuild_skips_intact_shards_and_redoes_damaged_ones(cached, tmp_path: Path) -> None:
    root, entries, image_dir = cached
    shards = sorted(root.glob("*.tfrecord"))
    times = {p.name: p.stat().st_mtime_ns for p in shards}
    victim = shards[0]
    victim.write_bytes(victim.read_bytes()[:-10])  # truncated, as by a kill or a full disk
    (root / ".partial-abc.train-normal-00000-of-00003.tfrecord").write_bytes(b"half")
    problems = verify_cache(root)
    assert len(problems) == 1 and victim.name in problems[0] and "truncated" in problems[0]
    with pytest.raises(CacheError, match="damaged"):
        open_cache(root, "train", entries=entries)
    build_cache(root, lists={"train": (entries, image_dir)}, size=24, shard_images=3)
    assert verify_cache(root, full=True) == []
    rewritten = [p.name for p in shards if p.stat().st_mtime_ns != times[p.name]]
    assert rewritten == [victim.name]
    assert not list(root.glob(".partial-*"))


def test_changed_bytes_are_detected(cached) -> None:
    root, entries, _ = cached
    shard = sorted(root.glob("train-covid-19-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit flipped
    shard.write_bytes(bytes(data))
    assert verify_cache(root) == []  # the quick check only sees sizes
    problems = verify_cache(root, full=True)
    assert len(problems) == 1 and "SHA-256" in problems[0]
    with pytest.raises(tf.errors.DataLossError):
        for _ in tf.data.TFRecordDataset(str(shard)):
            pass


def test_cache_must_hold_the_lists_images(cached) -> None:
    root, entries, _ = cached
    extra = entries + [ListEntry("x", "new.png", "normal")]
    with pytest.raises(CacheError, match="does not hold 1 of the 16 train images"):
        open_cache(root, "train", entries=extra)
    with pytest.raises(CacheError, match="no 'test' split"):
        open_cache(root, "test", entries=entries)
    with pytest.raises(CacheError, match="manifest.json is missing"):
        open_cache(root.parent, "train", entries=entries)


def test_balanced_batches_from_cache_match_files(cached) -> None:
    root, entries, image_dir = cached
    cache = open_cache(root, "train", entries=entries)
    subset = [e for e in entries if e.patient_id != "p0"]  # e.g. a validation patient held out
    for source in (CachedImages(cache), FileImages(image_dir)):
        data = make_train_dataset(subset, source, img_size=24, batch_size=4, augment=None, seed=1)
        assert data.steps_per_epoch == 4  # 11 normal/pneumonia images, 3 per batch
        tags = []
        for images, y, _w in data.dataset.take(data.steps_per_epoch):
            assert int((y.numpy().argmax(axis=1) == 2).sum()) == 1
            assert images.shape == (4, 24, 24, 3)
            tags += [_tag(img) for img, c in zip(images.numpy(), y.numpy().argmax(1)) if c != 2]
        # One epoch covers the 11 remaining normal/pneumonia images (12 slots: one repeats).
        assert set(tags) == set(range(1, 12))


def test_cached_batches_are_augmented_in_gray_then_tiled(cached) -> None:
    """Augmenting the one cached channel and tiling it gives the pixels of tiling first (a third of the work).
    """
    from data.augment import AugmentConfig, augment_batch

    gray = tf.random.stateless_uniform([3, 24, 24, 1], seed=[0, 1])
    key = tf.constant([5, 7], tf.int64)
    np.testing.assert_array_equal(
        tf.tile(augment_batch(gray, key, AugmentConfig()), [1, 1, 1, 3]).numpy(),
        augment_batch(tf.tile(gray, [1, 1, 1, 3]), key, AugmentConfig()).numpy(),
    )
    root, entries, _ = cached
    source = CachedImages(open_cache(root, "train", entries=entries))
    one = make_train_dataset(entries, source, img_size=24, batch_size=4, channels=1, seed=3, mixup_alpha=0.4)
    three = make_train_dataset(
        entries, source, img_size=24, batch_size=4, channels=3, seed=3, mixup_alpha=0.4
    )
    for (x1, y1, w1), (x3, y3, w3) in zip(one.dataset.take(3), three.dataset.take(3)):
        assert x3.shape == (4, 24, 24, 3) and float(tf.reduce_max(x3)) <= 1.0
        assert float(tf.math.reduce_std(x3)) > 0.01  # real, augmented pixels
        np.testing.assert_array_equal(x3.numpy(), np.repeat(x1.numpy(), 3, axis=-1))
        np.testing.assert_array_equal(y1.numpy(), y3.numpy())
        np.testing.assert_array_equal(w1.numpy(), w3.numpy())


def test_the_cache_records_the_lists_fingerprints_and_refuses_other_lists(
    cached, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from data.fingerprint import fingerprint_list_files, short

    root, entries, image_dir = cached
    fingerprint, hashed = fingerprint_list_files(entries, image_dir)
    assert hashed == len(entries) == 15
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["splits"]["train"]["fingerprint"] == fingerprint and manifest["resize"] == "baseline"
    assert open_cache(root, "train", entries=entries, fingerprint=fingerprint).fingerprint == fingerprint

    # One image changed under the same name: the list's fingerprint changes and the cache refuses it.
    changed = image_dir / entries[4].filename
    cv2.imwrite(str(changed), np.full((30, 30), 200, np.uint8).astype(np.uint16) * 257)
    other, _ = fingerprint_list_files(entries, image_dir)
    assert other != fingerprint
    with pytest.raises(CacheError) as refused:
        open_cache(root, "train", entries=entries, fingerprint=other, what="--trainfile train.txt")
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and message.startswith("--trainfile train.txt (fingerprint ")
    assert short(other) in message and short(fingerprint) in message and "rebuild the cache" in message

    # Building again rebuilds every shard (same list, other images) and records the new fingerprint.
    before = {p.name: p.read_bytes() for p in root.glob("*.tfrecord")}
    build_cache(root, lists={"train": (entries, image_dir)}, size=24, shard_images=3)
    after = {p.name: p.read_bytes() for p in root.glob("*.tfrecord")}
    assert after.keys() == before.keys() and sum(after[k] != before[k] for k in after) == 1
    assert open_cache(root, "train", entries=entries, fingerprint=other).fingerprint == other

    # A cache of an older version (no fingerprints) still reads, with a log line.
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["splits"]["train"]["fingerprint"], manifest["resize"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("INFO", logger="data.cache"):
        old = open_cache(root, "train", entries=entries, fingerprint=fingerprint, what="--trainfile x.txt")
    assert old.fingerprint is None and old.resize == "baseline" and len(old.entries) == 15
    assert "older version without list fingerprints: --trainfile x.txt cannot be checked" in caplog.text


def test_an_image_that_cannot_be_read_is_named_before_any_shard(tmp_path: Path) -> None:
    entries = _make_images(tmp_path / "train", LABELS[:4])
    (tmp_path / "train" / entries[2].filename).unlink()
    with pytest.raises(CacheError, match=rf"cannot cache .*{entries[2].filename}: .*\(ENOENT\)"):
        build_cache(tmp_path / "cache", lists={"train": (entries, tmp_path / "train")}, size=24)
    assert not list((tmp_path / "cache").glob("*.tfrecord"))


def test_a_torchvision_cache_holds_pillows_pixels_and_is_read_with_that_method_only(tmp_path: Path) -> None:
    from PIL import Image

    from data.images import decode_image

    entries = _make_images(tmp_path / "train", LABELS)
    root = build_cache(
        tmp_path / "tv", lists={"train": (entries, tmp_path / "train")}, size=24, resize="torchvision"
    )
    cache = open_cache(root, "train", entries=entries)
    assert cache.resize == "torchvision"
    with pytest.raises(ValueError, match="resized with 'torchvision'; received resize='baseline'"):
        make_eval_dataset(entries, CachedImages(cache), img_size=24, batch_size=4)
    seen = {}
    ds = CachedImages(cache).named(entries, img_size=24, channels=1, resize="torchvision")
    for image, name in ds:
        seen[name.numpy().decode()] = np.rint(image.numpy()[..., 0] * 255).astype(np.uint8)
    for e in entries:
        # Pillow resizing the pixels the pipeline decodes (libjpeg's IDCT differs between TensorFlow and cv2)
        gray = decode_image((tmp_path / "train" / e.filename).read_bytes(), channels=1).numpy()[..., 0]
        pillow = np.asarray(Image.fromarray(gray).resize((24, 24), Image.BILINEAR))
        np.testing.assert_array_equal(seen[e.filename], pillow)
    with pytest.raises(ValueError, match="must be one of baseline, torchvision, received 'pil'"):
        build_cache(tmp_path / "x", lists={"train": (entries, tmp_path / "train")}, size=24, resize="pil")
