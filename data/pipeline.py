"""The tf.data input pipeline: list entries in, batches of ``[0, 1]`` images out.

Everything on the hot path is a TensorFlow op run by tf.data's thread pool:
reading, decoding (PNG/JPEG/BMP/GIF, 8 or 16 bit), resizing, balancing,
batching, augmentation (``data.augment``) and prefetching. Python only builds
the graph.

Preprocessing is :mod:`data.images`' decode and resize. The default
(``resize="baseline"``) is SURFsara's: ``cv2.imread`` (3 channels) then
``cv2.resize(x, (size, size))`` (bilinear, no antialiasing, aspect ratio not
kept) then ``/ 255``; ``resize="torchvision"`` is the PyTorch studies' Pillow
resize. The decoded channel order is RGB, where cv2 gave BGR; the two only
differ for the few colour images in the public sources.

Balanced training batches follow SURFsara's ``BalanceDataGenerator``: every
batch holds ``batch_size - k`` normal/pneumonia images and ``k`` COVID-19
images (k = 1 in the baseline). The non-COVID stream is reshuffled every pass
and one epoch is one pass over it; the COVID-19 stream is reshuffled and
repeated as often as needed. Class weights are applied per sample on top, as
the baseline passed ``class_weight`` to ``fit``.

Images come from an image source (:class:`ImageSource`): :class:`FileImages`
decodes the original files; :class:`CachedImages` reads the resized images of
a ``data.cache`` TFRecord cache, which removes the decoding cost from training.

What is deterministic (so that a run killed at any moment and resumed trains
on exactly the batches of an uninterrupted run with the same seed):

- the data order is a function of the position in the run only. Each pass over
  a stream (the non-COVID images, the COVID-19 images, or the whole list when
  batches are not balanced) is a permutation drawn from (seed, stream, pass
  index); the image at stream position ``p`` is element ``p % n`` of pass
  ``p // n``. Global batch ``g = epoch * steps_per_epoch + step`` takes stream
  positions ``[g * m, (g + 1) * m)`` (``m`` images of that stream per batch),
  so the pipeline can start at any (epoch, step) without replaying anything.
  With files the permutation is ``index_shuffle`` (stateless, no buffer); with
  a cache each pass reads the shards in an order and through a shuffle buffer
  seeded by (seed, stream, pass), and a resume skips to the offset inside its
  first pass;
- the augmentation and mixup draws are stateless functions of (seed, batch
  position, shard);
- the initial weights, given ``keras.utils.set_random_seed(seed)`` in the script.

On CPUs TensorFlow's float reductions are reproducible from run to run on the
same machine, so a resumed run is bit-identical to an uninterrupted one. On
GPUs some kernels (cuDNN convolution algorithms, atomic-add reductions) are
not, unless op determinism is enabled (``train_keras.py --deterministic``,
slower); the multi-worker all-reduce sums the workers' gradients in an order
TensorFlow does not promise either. There the data and the draws stay exactly
the same and the weights agree up to float rounding.

Corrupt images: ``--verify_images header`` (the default) also finds files that
are cut short (no PNG ``IEND`` chunk / JPEG ``FFD9`` marker / GIF trailer in
their last KiB, a BMP shorter than its header says) and empty files, for one
extra small read per file; the run then stops before its first step with one
line naming them. A file that passes and still fails to decode stops training
with an error that :func:`find_image_problems` (``verify="full"``) turns into
the file's name.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import tensorflow as tf

from data.augment import AugmentConfig, augment_batch, mixup_batch
from data.images import header_problem, read_resize, resize_image, tf_decode_problem
from data.labels import CLASS_TO_INDEX, CLASSES, NUM_CLASSES
from data.lists import VERIFY_MODES, ListEntry, read_list

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE

def image_paths(entries: Sequence[ListEntry], image_dir: str | os.PathLike[str]) -> list[str]:
    """Full paths of the entries' images inside ``image_dir``."""
    root = Path(image_dir)
    return [str(root / e.filename) for e in entries]


def _full_problem(path: Path) -> str | None:
    return header_problem(path) or tf_decode_problem(path)


def find_image_problems(
    entries: Sequence[ListEntry], image_dir: str | os.PathLike[str], *, verify: str = "header",
    workers: int | None = None,
) -> list[tuple[ListEntry, str]]:
    """Return ``(entry, reason)`` for every image that is missing, unreadable or cut short, in list order.

    ``verify``: ``"none"`` checks nothing; ``"header"`` (default) checks that
    each file exists, is not empty, starts like a PNG/JPEG/BMP/GIF image and
    ends like a complete one (two small reads per file: the first 8 bytes and
    the last KiB; see the module docstring); ``"full"`` also decodes every
    image, on ``workers`` threads (default: the CPUs, at most 8; TensorFlow's
    decoders release the GIL).
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, received {verify!r}")
    if verify == "none":
        return []
    root = Path(image_dir)
    paths = [root / entry.filename for entry in entries]
    if verify == "header":
        reasons = [header_problem(path) for path in paths]
    else:
        workers = workers or min(8, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(_full_problem, paths))
    return [(entry, reason) for entry, reason in zip(entries, reasons) if reason is not None]


def _describe_problems(problems: Sequence[tuple[ListEntry, str]], image_dir: Path, limit: int = 5) -> str:
    shown = "; ".join(f"{image_dir / e.filename}: {reason}" for e, reason in problems[:limit])
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return shown + more


def load_entries(
    list_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    *,
    verify: str = "header",
    what: str = "list",
) -> list[ListEntry]:
    """Read a list strictly for training or evaluation.

    Unlike dataset creation, which skips and reports bad rows, a list used to
    train or evaluate must be clean: any bad line (unknown label, file name
    escaping its folder), an empty list, or a missing/unreadable image raises
    before any work starts, with the file and the first offending lines named.
    Exact duplicate lines are dropped with a warning that counts them.
    """
    result = read_list(list_file)
    if result.bad_lines:
        shown = "; ".join(f"line {b.line_no}: {b.reason}" for b in result.bad_lines[:5])
        more = f" (and {len(result.bad_lines) - 5} more)" if len(result.bad_lines) > 5 else ""
        raise ValueError(f"{what} {result.path} has {len(result.bad_lines)} bad lines: {shown}{more}")
    if not result.entries:
        raise ValueError(f"{what} {result.path} has no images")
    if result.duplicates:
        # SURFsara's published train list repeats 3,079 lines; they trained on the repeats.
        log.warning("%s %s: %d duplicate lines dropped, each image is used once", what, result.path,
                    result.duplicates)
    image_dir = Path(image_dir)
    if verify != "none" and not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} for {what} {result.path} does not exist")
    problems = find_image_problems(result.entries, image_dir, verify=verify)
    if problems:
        raise ValueError(
            f"{what} {result.path}: {len(problems)} of {len(result.entries)} images are missing or "
            f"unreadable: {_describe_problems(problems, image_dir)}"
        )
    return result.entries


def patient_split(
    entries: Sequence[ListEntry], *, fraction: float, seed: int
) -> tuple[list[ListEntry], list[ListEntry]]:
    """Split entries into (train, validation) by patient, about ``fraction`` of each class.

    Patients are grouped by :attr:`ListEntry.patient_key`; each patient goes
    wholly to one side, so no patient is in both. For each class (a patient
    counts under the label of its first image), patients are shuffled with
    ``seed`` and moved to validation until the class's share reaches
    ``fraction``; every class with at least two patients gets at least one
    validation patient, so the rare COVID-19 class is never missing. The result
    keeps the list order and depends only on the entries and the seed.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), received {fraction}")
    patients: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        patients.setdefault(e.patient_key, []).append(i)
    by_class: dict[str, list[str]] = {c: [] for c in CLASSES}
    for key, idx in patients.items():
        by_class[entries[idx[0]].label].append(key)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in CLASSES:
        keys = sorted(by_class[label])
        if len(keys) < 2:
            continue
        total = sum(len(patients[k]) for k in keys)
        taken = 0
        # At most len(keys) - 1 patients: always leave one of the class for training.
        for j in rng.permutation(len(keys))[: len(keys) - 1]:
            if taken > 0 and taken >= fraction * total:
                break
            val_patients.add(keys[j])
            taken += len(patients[keys[j]])
    train = [e for e in entries if e.patient_key not in val_patients]
    val = [e for e in entries if e.patient_key in val_patients]
    return train, val


def _labels_array(entries: Sequence[ListEntry]) -> np.ndarray:
    return np.array([CLASS_TO_INDEX[e.label] for e in entries], dtype=np.int32)


# Stream numbers: independent permutations for the two streams of balanced batches and the unbalanced one.
STREAM_OTHERS, STREAM_COVID, STREAM_ALL = 0, 1, 2


def pass_key(seed: int, stream: int, pass_index: tf.Tensor) -> tf.Tensor:
    """The stateless key (int64 ``[2]``) of pass ``pass_index`` over ``stream`` of a run seeded ``seed``."""
    base = tf.constant([seed, stream], tf.int64)
    folded = tf.random.experimental.stateless_fold_in(base, tf.cast(pass_index, tf.int64))
    # fold_in keeps its data in the second word; one more draw mixes both words into both.
    return tf.random.stateless_uniform([2], folded, minval=None, maxval=None, dtype=tf.int64)


@runtime_checkable
class ImageSource(Protocol):
    """Where the images of list entries come from: :class:`FileImages` or :class:`CachedImages`.

    ``refs`` gives cheap references to images, shuffled and repeated (the
    training stream); ``load`` turns one reference into the model's input;
    ``ordered`` and ``named`` give every image once (evaluation, prediction).
    ``native_channels`` is the number of channels the source holds (1 for the
    grey cache), so the training pipeline can augment grey images on one
    channel and tile them afterwards. Every method takes ``resize``
    (:data:`data.images.RESIZE_METHODS`, default ``"baseline"``).
    """

    native_channels: int

    def refs(
        self, entries: Sequence[ListEntry], *, seed: int, stream: int = ..., start: int = 0
    ) -> tf.data.Dataset:
        """``(reference, label)`` forever from position ``start``; every pass over ``entries`` reshuffled."""

    def load(self, ref: tf.Tensor, *, img_size: int, channels: int, resize: str = "baseline") -> tf.Tensor:
        """The image a reference points to, float32 ``[img_size, img_size, channels]`` in [0, 1]."""

    def ordered(
        self, entries: Sequence[ListEntry], *, img_size: int, channels: int, resize: str = "baseline"
    ) -> tf.data.Dataset:
        """``(image, label)`` for each entry once."""

    def named(
        self, entries: Sequence[ListEntry], *, img_size: int, channels: int, resize: str = "baseline"
    ) -> tf.data.Dataset:
        """``(image, filename)`` for each entry once (for prediction)."""


class FileImages:
    """Images read from the original files of a folder (``DATA_PATH/train`` or ``/test``).

    An :class:`ImageSource`: a reference is the file's path, decoded and
    resized by :func:`data.images.read_resize`.
    """

    # Files may be in colour; they are decoded to the channels asked for.
    native_channels = 3

    def __init__(self, image_dir: str | os.PathLike[str]) -> None:
        self.image_dir = Path(image_dir)

    def refs(self, entries: Sequence[ListEntry], *, seed: int, stream: int = STREAM_ALL,
             start: int = 0) -> tf.data.Dataset:
        """``(path, label)`` forever from stream position ``start``; each pass over ``entries`` permuted anew.

        Position ``p`` holds entry ``index_shuffle(p % n)`` of the permutation
        keyed by ``pass_key(seed, stream, p // n)``: a function of the
        position alone, so a stream started at ``start`` is exactly the tail
        of one started at 0.
        """
        if not entries:
            raise ValueError("no images to draw training batches from; received an empty list")
        paths = tf.constant(image_paths(entries, self.image_dir))
        labels = tf.constant(_labels_array(entries))
        n = tf.constant(len(entries), tf.int64)

        def at(position: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            key = pass_key(seed, stream, position // n)
            index = tf.random.experimental.index_shuffle(position % n, key, n - 1)
            return tf.gather(paths, index), tf.gather(labels, index)

        return tf.data.Dataset.counter(start).map(at)

    def load(self, ref: tf.Tensor, *, img_size: int, channels: int, resize: str = "baseline") -> tf.Tensor:
        """The image a reference points to, float32 in [0, 1]."""
        return read_resize(ref, img_size=img_size, channels=channels, resize=resize)

    def ordered(
        self, entries: Sequence[ListEntry], *, img_size: int, channels: int, resize: str = "baseline"
    ) -> tf.data.Dataset:
        """``(image, label)`` for each entry once, in list order."""
        labels = _labels_array(entries)
        return self._each(entries, labels, img_size=img_size, channels=channels, resize=resize)

    def named(
        self, entries: Sequence[ListEntry], *, img_size: int, channels: int, resize: str = "baseline"
    ) -> tf.data.Dataset:
        """``(image, filename)`` for each entry once, in list order (for prediction)."""
        names = [e.filename for e in entries]
        return self._each(entries, names, img_size=img_size, channels=channels, resize=resize)

    def _each(
        self, entries: Sequence[ListEntry], tags: Sequence | np.ndarray, *, img_size: int, channels: int,
        resize: str,
    ) -> tf.data.Dataset:
        """``(image, tag)`` for each entry once, in list order."""
        ds = tf.data.Dataset.from_tensor_slices((image_paths(entries, self.image_dir), tags))
        return ds.map(
            lambda path, tag: (self.load(path, img_size=img_size, channels=channels, resize=resize), tag),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )


class CachedImages:
    """Images read from a preprocessed TFRecord cache (``data.cache``) instead of the originals.

    An :class:`ImageSource`: a reference is a record's stored pixels. Shards
    are read in parallel (interleave) and records shuffled in blocks of
    ``shuffle_buffer`` images; each pass over the entries is shuffled anew.
    Cached images are grayscale at the cache size: they are resized to the
    training size when it differs and replicated to 3 channels.
    """

    # The cache stores one grey channel.
    native_channels = 1

    def __init__(self, cache, *, shuffle_buffer: int = 2048) -> None:
        self.cache = cache
        self.shuffle_buffer = shuffle_buffer

    def _selection(self, entries: Sequence[ListEntry]) -> tuple[list[str], list[str] | None]:
        """The labels whose shards hold ``entries`` and the file names to keep (None: every record)."""
        if not entries:
            raise ValueError("no images to read from the cache; received an empty list")
        labels = sorted({e.label for e in entries}, key=CLASSES.index)
        wanted = {e.filename for e in entries}
        everything = {e.filename for e in self.cache.entries if e.label in labels}
        return labels, None if wanted >= everything else sorted(wanted)

    def _records(self, entries: Sequence[ListEntry], *, seed: int | None) -> tf.data.Dataset:
        from data.cache import read_records

        labels, keep = self._selection(entries)
        return read_records(self.cache, labels, keep_filenames=keep, shuffle_files_seed=seed)

    def load(self, ref: tf.Tensor, *, img_size: int, channels: int, resize: str = "baseline") -> tf.Tensor:
        """The cached uint8 pixels of a reference as float32 in [0, 1], resized and tiled as needed.

        The cache was resized with one method (``CacheSplit.resize``); asking
        for another is a ``ValueError``: those pixels would not be the ones the
        files give.
        """
        if resize != self.cache.resize:
            raise ValueError(
                f"cache {self.cache.root} holds images resized with {self.cache.resize!r}; received "
                f"resize={resize!r} (rebuild the cache with that method or read the original files)"
            )
        if self.cache.size != img_size:
            image = resize_image(ref, img_size, method=resize)
        else:
            image = tf.cast(ref, tf.float32) / 255.0
        if channels == 3:
            image = tf.tile(image, [1, 1, 3])
        return tf.ensure_shape(image, [img_size, img_size, channels])

    def refs(
        self, entries: Sequence[ListEntry], *, seed: int, stream: int = STREAM_ALL, start: int = 0
    ) -> tf.data.Dataset:
        """``(pixels, label)`` forever from stream position ``start``, reshuffled every pass over ``entries``.

        The reference of a cached image is its stored uint8 pixels (reading them
        is the whole cost; there is nothing left to decode). Records can only
        be read in sequence, so each pass is its own dataset: the shards in an
        order, and the records in blocks of ``shuffle_buffer`` permuted within,
        all drawn statelessly from ``pass_key(seed, stream, pass)``. A stream
        started at ``start`` begins with pass ``start // n`` and skips (reads)
        the ``start % n`` records before its position.
        """
        from data.cache import parse_record

        labels, keep = self._selection(entries)
        n = len(entries)
        first_pass, offset = divmod(start, n)
        block = min(self.shuffle_buffer, n)
        paths = tf.constant(self.cache.shard_paths(labels))
        cycle = min(8, len(self.cache.shard_paths(labels)))
        size = self.cache.size
        table = None
        if keep is not None:
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(keep or [""], tf.string), tf.ones([max(1, len(keep))], tf.int32)
                ),
                default_value=0,
            )

        def shuffle_block(index: tf.Tensor, key: tf.Tensor, images: tf.Tensor, y: tf.Tensor):
            block_key = tf.random.experimental.stateless_fold_in(key, index)
            order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(y)[0]), block_key)
            return tf.gather(images, order), tf.gather(y, order)

        # Stateless draws, not Dataset.shuffle: its seed cannot be a tensor once a global seed of 0 is set.
        def one_pass(pass_index: tf.Tensor) -> tf.data.Dataset:
            key = pass_key(seed, stream, pass_index)
            files = tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(paths, key))
            ds = files.interleave(
                tf.data.TFRecordDataset, cycle_length=cycle, num_parallel_calls=AUTOTUNE, deterministic=True
            )
            ds = ds.map(lambda r: parse_record(r, size=size), num_parallel_calls=AUTOTUNE, deterministic=True)
            if table is not None:
                ds = ds.filter(lambda r: table.lookup(r["filename"]) > 0)
            ds = ds.map(lambda r: (r["image"], r["label"])).batch(block).enumerate()
            return ds.map(lambda i, b: shuffle_block(i, key, *b)).unbatch()

        return tf.data.Dataset.counter(first_pass).flat_map(one_pass).skip(offset)

    def _once(self, entries: Sequence[ListEntry]) -> tf.data.Dataset:
        # The count is known: stating it lets Keras size its progress bar and
        # makes tf.data fail loudly if the cache yields a different number.
        ds = self._records(entries, seed=None)
        return ds.apply(tf.data.experimental.assert_cardinality(len(entries)))

    def ordered(
        self, entries: Sequence[ListEntry], *, img_size: int, channels: int, resize: str = "baseline"
    ) -> tf.data.Dataset:
        """``(image, label)`` for each entry once, in the cache's order."""
        return self._each(entries, "label", img_size=img_size, channels=channels, resize=resize)

    def named(
        self, entries: Sequence[ListEntry], *, img_size: int, channels: int, resize: str = "baseline"
    ) -> tf.data.Dataset:
        """``(image, filename)`` for each entry once, in the cache's order (for prediction)."""
        return self._each(entries, "filename", img_size=img_size, channels=channels, resize=resize)

    def _each(
        self, entries: Sequence[ListEntry], tag: str, *, img_size: int, channels: int, resize: str
    ) -> tf.data.Dataset:
        """``(image, record[tag])`` for each entry once, in the cache's order."""
        return self._once(entries).map(
            lambda r: (self.load(r["image"], img_size=img_size, channels=channels, resize=resize), r[tag]),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )


def as_image_source(images: str | os.PathLike[str] | ImageSource) -> ImageSource:
    """An image source as given, or :class:`FileImages` over a folder path."""
    return FileImages(images) if isinstance(images, (str, os.PathLike)) else images


@dataclasses.dataclass(frozen=True)
class TrainData:
    """A repeated training dataset and how many of its batches make one epoch."""

    dataset: tf.data.Dataset
    steps_per_epoch: int
    batch_size: int
    covid_per_batch: int


def make_train_dataset(
    entries: Sequence[ListEntry],
    images: str | os.PathLike[str] | ImageSource,
    *,
    img_size: int,
    batch_size: int,
    channels: int = 3,
    balance: bool = True,
    covid_per_batch: int = 1,
    class_weights: dict[int, float] | None = None,
    augment: AugmentConfig | None = AugmentConfig(),
    mixup_alpha: float = 0.0,
    seed: int = 0,
    start_epoch: int = 0,
    start_step: int = 0,
    steps_per_epoch: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    shard_batch_size: int | None = None,
    resize: str = "baseline",
) -> TrainData:
    """Infinite stream of ``(images, one_hot_labels, sample_weights)`` training batches.

    ``images`` is the folder of the entries' files, or an image source
    (:class:`FileImages`, :class:`CachedImages`); ``resize`` is the resize
    method (:data:`data.images.RESIZE_METHODS`).

    With ``balance`` (SURFsara's default) each batch has ``batch_size -
    covid_per_batch`` normal/pneumonia images and ``covid_per_batch`` COVID-19
    images, and an epoch is one pass over the normal/pneumonia images;
    otherwise batches are drawn from the shuffled list and an epoch is one pass
    over it.

    The batches are a function of their position in the run (see the module
    docstring): the dataset starts with global batch ``start_epoch *
    steps_per_epoch + start_step``, exactly the batch an uninterrupted run
    trains on at that (epoch, step). ``steps_per_epoch`` is the epoch length
    the run uses (default: the natural one returned in
    :attr:`TrainData.steps_per_epoch`).

    ``mixup_alpha`` > 0 applies mixup (:func:`data.augment.mixup_batch`) to
    every output batch after the augmentation: images, one-hot labels and
    sample weights of each row are mixed with those of a partner row of the
    same output batch, so the labels become mixed one-hots. Balanced batches
    are made (and their COVID-19 rows chosen) before mixing.

    Distributed training: every input pipeline (one per worker) builds the
    same global batches of image *references* from the same seed, keeps rows
    ``[shard_index * n, (shard_index + 1) * n)`` of each (n = ``batch_size /
    num_shards``), and only then decodes, so each worker decodes only its own
    images and the union of the workers' images at every step is exactly the
    single-worker batch. The result is batched by ``shard_batch_size`` (the
    per-replica batch; default n), as ``distribute_datasets_from_function`` wants.
    Mixup pairs rows within each of these per-replica batches (a replica
    never holds its partner's pixels otherwise), with draws keyed by the batch
    and the shard like the augmentation's.
    """
    _check_training_batches(batch_size, mixup_alpha, start_epoch, start_step, steps_per_epoch)
    source = as_image_source(images)
    streams = _plan_streams(entries, batch_size=batch_size, balance=balance, covid_per_batch=covid_per_batch)
    steps = math.ceil(len(streams[0].entries) / streams[0].per_batch)  # one pass over the first stream
    first = start_epoch * (steps_per_epoch or steps) + start_step  # global index of the first batch
    local, out_batch = _worker_batch_sizes(batch_size, num_shards, shard_index, shard_batch_size)
    refs = _reference_batches(source, streams, seed=seed, first_batch=first)
    if num_shards > 1:
        refs = _keep_shard(refs, batch_size, lo=shard_index * local, hi=(shard_index + 1) * local)
    # Grey sources (the cache) are loaded on one channel: the augmentation and mixup treat every channel
    # alike, so the result is tiled to three afterwards: the same pixels for a third of the work.
    load_channels = min(channels, source.native_channels)
    ds = _load_in_order(refs, source, img_size=img_size, channels=load_channels, resize=resize)
    ds = ds.batch(out_batch, drop_remainder=True)
    # The draws' key counts output batches from the start of the run, so they resume with the data.
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter(start=first * (batch_size // out_batch))))
    finish = _FinishBatch(
        seed=seed, num_shards=num_shards, shard_index=shard_index, augment=augment, mixup_alpha=mixup_alpha,
        class_weights=_class_weight_table(class_weights), load_channels=load_channels, channels=channels,
    )
    ds = ds.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    covid = sum(s.per_batch for s in streams if s.number == STREAM_COVID)
    return TrainData(dataset=ds, steps_per_epoch=steps, batch_size=batch_size, covid_per_batch=covid)


def _check_training_batches(
    batch_size: int, mixup_alpha: float, start_epoch: int, start_step: int, steps_per_epoch: int | None
) -> None:
    """``ValueError`` for a batch size, mixup alpha or start position that cannot be."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, received {batch_size}")
    if not mixup_alpha >= 0:
        raise ValueError(f"mixup alpha must be >= 0 (0 turns mixup off), received {mixup_alpha}")
    if start_epoch < 0 or start_step < 0 or (steps_per_epoch is not None and steps_per_epoch < 1):
        raise ValueError(
            f"the start of the training data must be at epoch >= 0, step >= 0 with epochs of "
            f">= 1 steps; received epoch {start_epoch}, step {start_step}, {steps_per_epoch} steps"
        )


@dataclasses.dataclass(frozen=True)
class _Stream:
    """One stream of a training batch: its entries, its stream number and its images per batch."""

    entries: Sequence[ListEntry]
    number: int
    per_batch: int


def _plan_streams(
    entries: Sequence[ListEntry], *, batch_size: int, balance: bool, covid_per_batch: int
) -> list[_Stream]:
    """The streams a batch is drawn from; the first one's pass is an epoch.

    Balanced: ``batch_size - covid_per_batch`` normal/pneumonia images and
    ``covid_per_batch`` COVID-19 images per batch. Otherwise the whole list.
    """
    if not balance:
        return [_Stream(entries, STREAM_ALL, batch_size)]
    if not 1 <= covid_per_batch < batch_size:
        raise ValueError(
            f"balanced batches need 1 <= COVID-19 images per batch < batch size; received "
            f"{covid_per_batch} COVID-19 images per batch with batch size {batch_size}"
        )
    is_covid = _labels_array(entries) == CLASS_TO_INDEX["COVID-19"]
    if not is_covid.any():
        raise ValueError(
            f"balanced batches need at least one COVID-19 image in the training list; received "
            f"{len(entries)} images, none of them COVID-19"
        )
    if is_covid.all():
        raise ValueError(
            f"balanced batches need normal or pneumonia images in the training list; received "
            f"{len(entries)} images, all of them COVID-19"
        )
    others = [e for e, c in zip(entries, is_covid) if not c]
    covids = [e for e, c in zip(entries, is_covid) if c]
    return [
        _Stream(others, STREAM_OTHERS, batch_size - covid_per_batch),
        _Stream(covids, STREAM_COVID, covid_per_batch),
    ]


def _reference_batches(
    source: ImageSource, streams: Sequence[_Stream], *, seed: int, first_batch: int
) -> tf.data.Dataset:
    """``(reference, label)`` rows of the global batches from ``first_batch`` on, each stream in its slots."""
    datasets = [
        source.refs(s.entries, seed=seed, stream=s.number, start=first_batch * s.per_batch) for s in streams
    ]
    if len(datasets) == 1:
        return datasets[0]
    slots = [i for i, s in enumerate(streams) for _ in range(s.per_batch)]
    pattern = tf.data.Dataset.from_tensor_slices(tf.constant(slots, tf.int64)).repeat()
    return tf.data.Dataset.choose_from_datasets(datasets, pattern)


def _worker_batch_sizes(
    batch_size: int, num_shards: int, shard_index: int, shard_batch_size: int | None
) -> tuple[int, int]:
    """The rows of each global batch one worker takes, and the size of the batches it outputs.

    ``ValueError`` unless the shards split the batch evenly and the per-replica
    batch (default: the worker's rows) divides the worker's rows.
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards or batch_size % num_shards:
        raise ValueError(
            f"cannot split batches of {batch_size} into shard {shard_index} of {num_shards} equal parts: "
            f"the shards must divide the batch and 0 <= shard index < shards; received batch size "
            f"{batch_size}, shard index {shard_index}, {num_shards} shards"
        )
    local = batch_size // num_shards
    out_batch = shard_batch_size or local
    if local % out_batch:
        raise ValueError(
            f"per-replica batch {out_batch} does not divide the per-worker batch {local}; received "
            f"shard_batch_size={out_batch}"
        )
    return local, out_batch


def _load_in_order(
    refs: tf.data.Dataset, source: ImageSource, *, img_size: int, channels: int, resize: str
) -> tf.data.Dataset:
    """``(image, label)`` for each ``(reference, label)``, loaded in parallel and kept in order.

    With a free order, images of the next pass would overtake the last ones of
    this pass, so an epoch would no longer show every image exactly once, and a
    seed would not fix the batches.
    """
    return refs.map(
        lambda ref, y: (source.load(ref, img_size=img_size, channels=channels, resize=resize), y),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


def _keep_shard(refs: tf.data.Dataset, batch_size: int, *, lo: int, hi: int) -> tf.data.Dataset:
    """Rows ``[lo, hi)`` of every global batch of ``refs``, before anything is decoded."""
    ds = refs.batch(batch_size, drop_remainder=True)
    return ds.map(lambda ref, y: (tf.nest.map_structure(lambda t: t[lo:hi], ref), y[lo:hi])).unbatch()


def _class_weight_table(class_weights: dict[int, float] | None) -> tuple[float, ...]:
    """Per-class sample weights, 1 for a class without one."""
    weights = np.ones(NUM_CLASSES, np.float32)
    for index, w in (class_weights or {}).items():
        weights[index] = w
    return tuple(float(w) for w in weights)


@dataclasses.dataclass(frozen=True)
class _FinishBatch:
    """The last step of a training batch: augmentation, one-hot labels and weights, mixup, channels.

    Called with ``((images, labels), counter)``; the draws are keyed by the
    seed and the batch's position ``counter`` (and the shard: each worker's
    batches get their own draws).
    """

    seed: int
    num_shards: int
    shard_index: int
    augment: AugmentConfig | None
    mixup_alpha: float
    class_weights: tuple[float, ...]
    load_channels: int
    channels: int

    def __call__(self, batch: tuple[tf.Tensor, tf.Tensor], counter: tf.Tensor):
        images, y = batch
        key = tf.stack([tf.cast(self.seed, tf.int64), counter * self.num_shards + self.shard_index])
        if self.augment is not None:
            images = _augment_channels_once(images, key, self.augment)
        labels = tf.one_hot(y, NUM_CLASSES)
        sample_weights = tf.gather(tf.constant(self.class_weights, tf.float32), y)
        if self.mixup_alpha > 0:
            images, labels, sample_weights = mixup_batch(
                images, labels, sample_weights, key, self.mixup_alpha
            )
        if self.load_channels != self.channels:
            images = tf.tile(images, [1, 1, 1, self.channels])
        return images, labels, sample_weights


def _augment_channels_once(images: tf.Tensor, key: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """``augment_batch``, on one channel when every image of the batch is grey.

    The augmentation transforms every channel alike, so a batch whose channels
    are equal (almost every chest X-ray) gives the same pixels when one channel
    is augmented and tiled, for a third of the cost; colour batches take the
    full path.
    """
    if images.shape[-1] == 1:
        return augment_batch(images, key, config)
    grey = tf.reduce_all(tf.equal(images[..., :1], images[..., 1:]))
    return tf.cond(
        grey,
        lambda: tf.tile(augment_batch(images[..., :1], key, config), [1, 1, 1, images.shape[-1]]),
        lambda: augment_batch(images, key, config),
    )


def make_eval_dataset(
    entries: Sequence[ListEntry],
    images: str | os.PathLike[str] | ImageSource,
    *,
    img_size: int,
    batch_size: int,
    channels: int = 3,
    resize: str = "baseline",
) -> tf.data.Dataset:
    """Finite ``(images, one_hot_labels)`` batches, each image exactly once.

    In list order when reading files. The last batch may be smaller
    (SURFsara's generator instead repeated the last image to fill it, counting
    it several times).
    """
    ds = as_image_source(images).ordered(entries, img_size=img_size, channels=channels, resize=resize)
    ds = ds.map(lambda x, y: (x, tf.one_hot(y, NUM_CLASSES)))
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def make_predict_dataset(
    paths: Iterable[str], *, img_size: int, batch_size: int, channels: int = 3, resize: str = "baseline"
) -> tf.data.Dataset:
    """Finite batches of images only, in the given order (for prediction)."""
    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(
        lambda p: read_resize(p, img_size=img_size, channels=channels, resize=resize),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(AUTOTUNE)
