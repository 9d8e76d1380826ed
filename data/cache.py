"""A preprocessed image cache: COVIDx resized once, in sharded TFRecord files.

Decoding the 1000-3000 px originals is what limits training throughput (a
2048x2048 PNG decodes at roughly 12-30 images/s per core). The cache decodes
and resizes every image of the lists once - with the training pipeline's
decode and resize (:mod:`data.images`, ``baseline`` or ``torchvision``) but to
grayscale - and stores the result as raw uint8 pixels, so training only reads
bytes; augmentation still happens on the fly.

Layout of a cache folder::

    manifest.json                      size, resize method, and per split: the list's fingerprint,
                                       shard names, record counts, SHA-256
    train_COVIDx.txt, test_COVIDx.txt  what the cache holds, as COVIDx lists
    train-normal-00000-of-00016.tfrecord ...   one shard group per split and class

Shards are grouped by class so the balanced sampler reads the COVID-19 images
without scanning the others. Building is parallel (tf.data decodes on all
cores), resumable (each shard is written under a temporary name, renamed, then
recorded in the manifest; a re-run skips recorded shards that are still
intact) and verified: :func:`verify_cache` checks every shard's size and hash
against the manifest, and reading a damaged record raises TensorFlow's
``DataLossError`` (TFRecord has a CRC per record) instead of truncating.

The manifest records each list's fingerprint (:mod:`data.fingerprint`: the
value ``create_covidx.py`` writes to ``report.json``). :func:`open_cache`
refuses a list whose fingerprint differs (other images, labels or patients)
with one line naming both; a cache of an older version, without fingerprints,
is read with a log line.

The one difference from training on the original files: colour images are
stored as grayscale (ITU-R 601 luma), replicated to 3 channels when read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.fsutil import atomic_path, atomic_write_text, remove_partials
from data.build import OutputError
from data.fingerprint import fingerprint_list_files, short
from data.images import RESIZE_METHODS, decode_image, resize_uint8
from data.labels import CLASS_TO_INDEX, CLASSES
from data.lists import ListEntry, read_list, write_list
from data.sources.base import describe_os_error

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_IMAGES = 256
AUTOTUNE = tf.data.AUTOTUNE

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "filename": tf.io.FixedLenFeature([], tf.string),
    "patient_id": tf.io.FixedLenFeature([], tf.string),
}


class CacheError(ValueError):
    """A cache folder that is missing, damaged, or does not match the lists."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entries_digest(entries: Sequence[ListEntry]) -> str:
    text = "\n".join(f"{e.patient_key}\t{e.filename}\t{e.label}" for e in entries)
    return hashlib.sha256(text.encode("utf8")).hexdigest()


def _class_tag(label: str) -> str:
    return label.lower()


def _shard_plan(
    split: str, entries: Sequence[ListEntry], shard_images: int
) -> list[tuple[str, list[ListEntry]]]:
    plan = []
    for label in CLASSES:
        group = [e for e in entries if e.label == label]
        n = math.ceil(len(group) / shard_images)
        for i in range(n):
            name = f"{split}-{_class_tag(label)}-{i:05d}-of-{n:05d}.tfrecord"
            plan.append((name, group[i * shard_images : (i + 1) * shard_images]))
    return plan


def _decode_gray(path: tf.Tensor, size: int, resize: str) -> tf.Tensor:
    """The training pipeline's decode and resize (``data.images``), on one channel, rounded to uint8."""
    return resize_uint8(decode_image(tf.io.read_file(path), channels=1), size, method=resize)


def _example(image: np.ndarray, entry: ListEntry) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[CLASS_TO_INDEX[entry.label]])),
        "filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[entry.filename.encode("utf8")])),
        "patient_id": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[entry.patient_key.encode("utf8")])
        ),
    }
    # deterministic: protobuf writes map fields in hash order otherwise, which differs between processes,
    # and a re-built shard would not have the same bytes (and SHA-256) as the first build's.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def _op_message(exc: tf.errors.OpError) -> str:
    text = (exc.message or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _write_shard(path: Path, entries: Sequence[ListEntry], image_dir: Path, size: int, resize: str) -> None:
    """Write one shard through a temporary name.

    An image that cannot be read or decoded is a :class:`CacheError` naming
    it (the lists were checked, so the file changed since); a shard that
    cannot be written is an :class:`OutputError`. Either way the temporary
    file is removed and no shard is recorded.
    """
    paths = [str(image_dir / e.filename) for e in entries]
    images = iter(
        tf.data.Dataset.from_tensor_slices(paths).map(
            lambda p: _decode_gray(p, size, resize), num_parallel_calls=AUTOTUNE, deterministic=True
        )
    )
    with atomic_path(path) as tmp:
        try:
            writer = tf.io.TFRecordWriter(str(tmp))
        except tf.errors.OpError as exc:
            raise OutputError(f"cannot write {path}: {_op_message(exc)}") from None
        try:
            for entry in entries:
                try:
                    image = next(images)
                except tf.errors.OpError as exc:
                    raise CacheError(
                        f"cannot cache {image_dir / entry.filename}: {_op_message(exc)}"
                    ) from None
                try:
                    writer.write(_example(image.numpy(), entry))
                except tf.errors.OpError as exc:
                    raise OutputError(f"cannot write {path}: {_op_message(exc)}") from None
        finally:
            try:
                writer.close()
            except tf.errors.OpError as exc:  # a full disk may only show when the last block is flushed
                raise OutputError(f"cannot write {path}: {_op_message(exc)}") from None


def _read_manifest(root: Path) -> dict:
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise CacheError(f"{root} is not an image cache: {MANIFEST} is missing") from None
    except ValueError as exc:
        raise CacheError(f"{root / MANIFEST} is not valid JSON ({exc})") from None


def build_cache(
    out_dir: str | os.PathLike[str],
    *,
    lists: dict[str, tuple[Sequence[ListEntry], str | os.PathLike[str]]],
    size: int,
    shard_images: int = DEFAULT_SHARD_IMAGES,
    resize: str = "baseline",
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Path:
    """Build (or finish building) the cache of ``lists`` at ``size`` x ``size`` pixels.

    ``lists`` maps a split name (``train``, ``test``) to its entries and image
    folder; ``resize`` is the resize method (:data:`data.images.RESIZE_METHODS`).
    The manifest records each list's fingerprint (:mod:`data.fingerprint`, the
    value ``create_covidx.py`` writes to ``report.json``; image hashes come from
    the dataset's ``SHA256SUMS`` beside the image folder when it has them), so
    that :func:`open_cache` can refuse other lists. Shards already recorded in
    the manifest with an intact file are kept, so an interrupted build
    continues where it stopped; a manifest of a different size, method or
    different lists (or images) is replaced. ``progress`` wraps the shard
    iterator (e.g. ``tqdm``). A cache folder that cannot be written (full disk,
    read-only) raises :class:`~data.build.OutputError` naming it; the shards
    recorded so far stay valid and a re-run continues from them.
    """
    if size < 8:
        raise ValueError(f"cache size must be >= 8 px, received {size}")
    if shard_images < 1:
        raise ValueError(f"images per shard must be >= 1, received {shard_images}")
    if resize not in RESIZE_METHODS:
        raise ValueError(f"resize method must be one of {', '.join(RESIZE_METHODS)}, received {resize!r}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"cache folder {root} is an existing file; expected a folder")
    fingerprints = {s: _list_fingerprint(entries, Path(folder)) for s, (entries, folder) in lists.items()}
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_partials(root)
        manifest = _manifest_to_continue(
            root, lists=lists, fingerprints=fingerprints, size=size, shard_images=shard_images, resize=resize
        )
        _write_shards(root, manifest, lists=lists, progress=progress)
    except OutputError as exc:
        raise OutputError(
            f"cache {root}: {exc}; the shards recorded in {MANIFEST} are kept, re-run to finish"
        ) from None
    except OSError as exc:
        raise OutputError(
            f"cache {root}: cannot write ({describe_os_error(exc)}); the shards recorded in "
            f"{MANIFEST} are kept, re-run to finish"
        ) from None
    return root


def _list_fingerprint(entries: Sequence[ListEntry], image_dir: Path) -> str:
    """The list's fingerprint; an image that cannot be read is a :class:`CacheError` naming it."""
    try:
        return fingerprint_list_files(entries, image_dir, dataset_dir=image_dir.parent)[0]
    except OSError as exc:
        raise CacheError(f"cannot cache {exc.filename or image_dir}: {describe_os_error(exc)}") from None


def _manifest_to_continue(
    root: Path,
    *,
    lists: dict[str, tuple[Sequence[ListEntry], str | os.PathLike[str]]],
    fingerprints: dict[str, str],
    size: int,
    shard_images: int,
    resize: str,
) -> dict:
    """The manifest in ``root`` when it was built for these lists and settings, else a new, empty one."""
    splits = {
        s: {"entries_sha256": _entries_digest(entries), "fingerprint": fingerprints[s], "count": len(entries)}
        for s, (entries, _) in lists.items()
    }
    try:
        manifest = _read_manifest(root)
    except CacheError:
        manifest = {}
    settings = {"version": FORMAT_VERSION, "size": size, "channels": 1, "shard_images": shard_images}
    recorded = {
        s: {k: v.get(k) for k in ("entries_sha256", "fingerprint", "count")}
        for s, v in manifest.get("splits", {}).items()
    }
    if (
        all(manifest.get(k) == v for k, v in settings.items())
        and manifest.get("resize", "baseline") == resize
        and recorded == splits
    ):
        return manifest
    if manifest:
        log.warning("cache %s was built for other lists, images or settings; rebuilding it", root)
    return {**settings, "resize": resize, "splits": {s: {**v, "shards": {}} for s, v in splits.items()}}


def _write_shards(
    root: Path,
    manifest: dict,
    *,
    lists: dict[str, tuple[Sequence[ListEntry], str | os.PathLike[str]]],
    progress: Callable[[Iterable], Iterable] | None,
) -> None:
    """Write the lists and every shard the manifest does not record intact, recording each when done."""
    size, resize = manifest["size"], manifest["resize"]
    work = []
    for split, (entries, image_dir) in lists.items():
        write_list(root / f"{split}_COVIDx.txt", entries)
        recorded = manifest["splits"][split]["shards"]
        for name, shard_entries in _shard_plan(split, entries, manifest["shard_images"]):
            info = recorded.get(name)
            path = root / name
            if info and path.is_file() and path.stat().st_size == info["bytes"]:
                continue
            work.append((split, name, shard_entries, Path(image_dir)))
    for split, name, shard_entries, image_dir in progress(work) if progress else work:
        path = root / name
        _write_shard(path, shard_entries, image_dir, size, resize)
        manifest["splits"][split]["shards"][name] = {
            "count": len(shard_entries),
            "label": shard_entries[0].label,
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def verify_cache(cache_dir: str | os.PathLike[str], *, full: bool = False) -> list[str]:
    """Problems found in a cache folder (empty list when intact).

    Always checks that every shard in the manifest exists with its recorded
    size (catches truncated or missing shards instantly); ``full`` also checks
    every shard's SHA-256 and reads every record (catches any changed byte).
    """
    root = Path(cache_dir)
    manifest = _read_manifest(root)
    problems = []
    for split, info in manifest["splits"].items():
        expected = sum(s["count"] for s in info["shards"].values())
        if expected != info["count"]:
            problems.append(
                f"{split}: the manifest records {expected} of {info['count']} images (unfinished build)"
            )
        for name, shard in sorted(info["shards"].items()):
            path = root / name
            if not path.is_file():
                problems.append(f"{path}: shard is missing")
                continue
            if path.stat().st_size != shard["bytes"]:
                problems.append(
                    f"{path}: {path.stat().st_size} bytes, the manifest says {shard['bytes']} (truncated?)"
                )
                continue
            if full:
                if _sha256(path) != shard["sha256"]:
                    problems.append(f"{path}: content differs from the manifest (SHA-256 mismatch)")
                    continue
                try:
                    count = sum(1 for _ in tf.data.TFRecordDataset(str(path)))
                except tf.errors.DataLossError as exc:
                    problems.append(f"{path}: damaged record ({exc.message.splitlines()[0]})")
                    continue
                if count != shard["count"]:
                    problems.append(f"{path}: {count} records, the manifest says {shard['count']}")
    return problems


@dataclasses.dataclass(frozen=True)
class CacheSplit:
    """The shards of one split of a verified cache, ready to be read by the pipeline."""

    root: Path
    split: str
    size: int
    shards_by_label: dict[str, tuple[str, ...]]
    entries: tuple[ListEntry, ...]
    # How the images were resized (data.images.RESIZE_METHODS); caches of older versions: "baseline".
    resize: str = "baseline"
    # The fingerprint of the list the split was built from; None for a cache of an older version.
    fingerprint: str | None = None

    def shard_paths(self, labels: Iterable[str]) -> list[str]:
        """Paths of the shards holding images of ``labels``."""
        return [str(self.root / name) for label in labels for name in self.shards_by_label.get(label, ())]


def open_cache(
    cache_dir: str | os.PathLike[str],
    split: str,
    *,
    entries: Sequence[ListEntry],
    full_check: bool = False,
    fingerprint: str | None = None,
    what: str = "the list",
) -> CacheSplit:
    """Open ``split`` of a cache after checking it is intact and holds every image of ``entries``.

    ``fingerprint`` is the fingerprint of the list ``entries`` come from
    (:func:`data.fingerprint.fingerprint_list_files`, computed from its images),
    when known: a cache built from another list, or from other images under
    the same names, is then refused. ``what`` names that list in the messages
    (e.g. ``"--trainfile train_COVIDx.txt"``). A cache of an older version,
    without fingerprints, is read with a log line. Raises :class:`CacheError`
    naming the folder and the first problems.
    """
    root = Path(cache_dir)
    manifest = _read_manifest(root)
    if split not in manifest["splits"]:
        raise CacheError(
            f"cache {root} has no {split!r} split (it has {', '.join(manifest['splits'])}); received "
            f"split {split!r}"
        )
    problems = verify_cache(root, full=full_check)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CacheError(f"cache {root} is damaged: {'; '.join(problems[:3])}{more}; rebuild it")
    recorded = manifest["splits"][split].get("fingerprint")
    _check_fingerprint(root, split, recorded=recorded, given=fingerprint, what=what)
    cached = read_list(root / f"{split}_COVIDx.txt").entries
    have = {(e.filename, e.label) for e in cached}
    missing = [e for e in entries if (e.filename, e.label) not in have]
    if missing:
        raise CacheError(
            f"cache {root} does not hold {len(missing)} of the {len(entries)} {split} images "
            f"(e.g. {missing[0].filename}); rebuild it from the current lists"
        )
    shards: dict[str, list[str]] = {}
    for name, info in sorted(manifest["splits"][split]["shards"].items()):
        shards.setdefault(info["label"], []).append(name)
    return CacheSplit(
        root=root,
        split=split,
        size=int(manifest["size"]),
        shards_by_label={k: tuple(v) for k, v in shards.items()},
        entries=tuple(cached),
        resize=manifest.get("resize", "baseline"),
        fingerprint=recorded,
    )


def _check_fingerprint(root: Path, split: str, *, recorded: str | None, given: str | None, what: str) -> None:
    """Refuse a list whose fingerprint is not the one the cache split was built from."""
    if recorded is None:
        log.info(
            "cache %s was built by an older version without list fingerprints: %s cannot be checked against "
            "its %s split (rebuild the cache to record them)", root, what, split,
        )
        return
    if given is not None and given != recorded:
        raise CacheError(
            f"{what} (fingerprint {short(given)}) is not the {split} list cache {root} was built from "
            f"(fingerprint {short(recorded)}); rebuild the cache from this list (create_covidx.py --out "
            f"DATA --cache SIZE --cache-dir {root}) or train from the original files"
        )


def parse_record(record: tf.Tensor, *, size: int) -> dict[str, tf.Tensor]:
    """Decode one cache record into ``image`` (uint8 ``[size, size, 1]``), ``label``, ``filename``."""
    parsed = tf.io.parse_single_example(record, _FEATURES)
    image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), [size, size, 1])
    return {
        "image": image,
        "label": tf.cast(parsed["label"], tf.int32),
        "filename": parsed["filename"],
        "patient_id": parsed["patient_id"],
    }


def read_records(
    cache: CacheSplit,
    labels: Iterable[str],
    *,
    keep_filenames: Sequence[str] | None,
    shuffle_files_seed: int | None = None,
) -> tf.data.Dataset:
    """Parsed records of ``labels`` in ``cache``, optionally only those whose file name is kept."""
    paths = cache.shard_paths(labels)
    if not paths:
        raise CacheError(f"cache {cache.root} has no {cache.split} images of class {', '.join(labels)}")
    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle_files_seed is not None:
        files = files.shuffle(len(paths), seed=shuffle_files_seed, reshuffle_each_iteration=True)
    ds = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(8, len(paths)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    ds = ds.map(lambda r: parse_record(r, size=cache.size), num_parallel_calls=AUTOTUNE, deterministic=True)
    if keep_filenames is not None:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(keep_filenames) or [""], tf.string),
                tf.ones([max(1, len(keep_filenames))], tf.int32),
            ),
            default_value=0,
        )
        ds = ds.filter(lambda r: table.lookup(r["filename"]) > 0)
    return ds
