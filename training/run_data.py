"""The data of a training run: its lists, where their images come from, and its datasets.

- :func:`load_run_data` reads and checks the three lists before anything
  trains and carves the validation list (:class:`RunData`);
- :func:`list_fingerprints` says which data a run means (``run_config.json``);
- :class:`TrainBatches` gives the training batches of a run at any position
  (epoch, step) and image size, plain or one shard per input pipeline;
- :class:`ValidationSets` gives the validation dataset at each image size.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import tensorflow as tf

from data.augment import AugmentConfig
from data.cache import open_cache
from data.lists import ListEntry
from data.pipeline import (
    CachedImages,
    FileImages,
    ImageSource,
    TrainData,
    load_entries,
    make_eval_dataset,
    make_train_dataset,
    patient_split,
)
from training.strategy import Distribution

log = logging.getLogger(__name__)


def image_folder(data_path: str | Path, flag: str) -> Path:
    """Where the images of the list given as ``flag`` are: SURFsara's ``DATA_PATH/train`` and
    ``DATA_PATH/test``; a ``--valfile`` holds training images, in ``train/``."""
    return Path(data_path) / ("test" if flag == "--testfile" else "train")


@dataclasses.dataclass
class RunData:
    """The three lists a run uses and where their images come from (folders or a cache)."""

    train: list[ListEntry]
    val: list[ListEntry]
    test: list[ListEntry]
    train_images: ImageSource
    val_images: ImageSource
    test_images: ImageSource


def load_run_data(
    *,
    data_path: str,
    trainfile: str,
    testfile: str,
    valfile: str = "",
    val_split: float = 0.1,
    seed: int = 0,
    cache: str = "",
    verify_images: str = "header",
    fingerprints: Mapping[str, str] | None = None,
) -> RunData:
    """Read and check the lists (before any training starts) and carve the validation set.

    With ``cache`` the images come from the preprocessed cache, which must
    hold every image of the lists; the original files are not needed.
    ``valfile`` names a validation list whose images are in
    ``DATA_PATH/train``; otherwise ``val_split`` carves one out of the train
    list by patient (drawn with ``seed``), or (``val_split`` 0) the test list
    validates, as in SURFsara's script. ``fingerprints`` (``{flag:
    fingerprint}``, :func:`list_fingerprints`) are checked against the ones a
    cache recorded when it was built: a cache of other lists is refused.
    """
    root = Path(data_path)
    if not cache and not root.is_dir():
        raise FileNotFoundError(f"--data_path {root} does not exist")
    # (flag, list file, image folder, cache split); validation images are training data, in train/.
    wanted = [
        ("--trainfile", trainfile, image_folder(root, "--trainfile"), "train"),
        ("--testfile", testfile, image_folder(root, "--testfile"), "test"),
    ]
    if valfile:
        wanted.append(("--valfile", valfile, image_folder(root, "--valfile"), "val"))
    lists: dict[str, list[ListEntry]] = {}
    images: dict[str, ImageSource] = {}
    for flag, list_file, image_dir, split in wanted:
        lists[split], images[split] = _read_list(
            flag, list_file, image_dir, split=split, cache=cache, verify_images=verify_images,
            fingerprint=(fingerprints or {}).get(flag),
        )
    _warn_about_shared_patients(lists)
    train, test = lists["train"], lists["test"]
    if valfile:
        _refuse_shared_images(train, lists["val"], trainfile=trainfile, valfile=valfile)
        val, val_images = lists["val"], images["val"]
        log.info("validation: %d images of --valfile %s", len(val), valfile)
    elif val_split > 0:
        train, val = patient_split(train, fraction=val_split, seed=seed)
        val_images = images["train"]
        log.info("validation: %d images of %d patients carved from the train list (--val_split %s)",
                 len(val), len({e.patient_key for e in val}), val_split)
    else:
        val, val_images = test, images["test"]
        log.info("validation on the test list (--val_split 0), as SURFsara's script did")
    return RunData(train=train, val=val, test=test, train_images=images["train"], val_images=val_images,
                   test_images=images["test"])


def _read_list(
    flag: str, list_file: str, image_dir: Path, *, split: str, cache: str, verify_images: str,
    fingerprint: str | None = None,
) -> tuple[list[ListEntry], ImageSource]:
    """One list's entries and their image source: ``image_dir``, or the cache's ``split``.

    ``fingerprint``: the list's, when its images could be hashed; the cache must have been built from it.
    """
    if not cache:
        return load_entries(list_file, image_dir, verify=verify_images, what=flag), FileImages(image_dir)
    # The lists still decide what is trained on; the cache only replaces the files.
    entries = load_entries(list_file, image_dir, verify="none", what=flag)
    full = verify_images == "full"
    opened = open_cache(cache, split, entries=entries, full_check=full, fingerprint=fingerprint,
                        what=f"{flag} {list_file}")
    return entries, CachedImages(opened)


def _warn_about_shared_patients(lists: dict[str, list[ListEntry]]) -> None:
    train_patients = {e.patient_key for e in lists["train"]}
    for other in [s for s in ("test", "val") if s in lists]:
        shared = train_patients & {e.patient_key for e in lists[other]}
        if shared:
            log.warning("%d patient ids appear in both the train and the %s list (e.g. %s); "
                        "check the lists for leakage", len(shared), other, ", ".join(sorted(shared)[:3]))


def _refuse_shared_images(
    train: Sequence[ListEntry], val: Sequence[ListEntry], *, trainfile: str, valfile: str
) -> None:
    both = {e.filename for e in train} & {e.filename for e in val}
    if both:
        raise ValueError(
            f"--valfile {valfile} lists {len(both)} images that --trainfile "
            f"{trainfile} lists too (e.g. {sorted(both)[0]}): validation would see training images"
        )


def list_fingerprints(*, data_path: str, trainfile: str, testfile: str, valfile: str = "") -> dict[str, str]:
    """``{flag: fingerprint}`` of the lists a run reads (data/fingerprint.py), for run_config.json.

    Image hashes come from ``SHA256SUMS`` beside the images (create_covidx.py
    writes it) for files not modified since, else from reading the files. A
    list whose images are not all there (a run from ``--cache``) is left out
    with a log line: its fingerprint cannot be computed.
    """
    from data.fingerprint import fingerprint_list_files
    from data.lists import read_list

    root = Path(data_path)
    found: dict[str, str] = {}
    start = time.perf_counter()
    hashed_total = 0
    for flag, list_file in (("--trainfile", trainfile), ("--valfile", valfile), ("--testfile", testfile)):
        if not list_file:
            continue
        image_dir = image_folder(root, flag)
        entries = read_list(list_file).entries
        if not all((image_dir / e.filename).is_file() for e in entries):
            log.debug("%s %s: not every image is in %s (training from --cache?): no fingerprint recorded",
                      flag, list_file, image_dir)
            continue
        found[flag], hashed = fingerprint_list_files(entries, image_dir, dataset_dir=root)
        hashed_total += hashed
    log.debug("list fingerprints in %.2f s (%d images read, the others from SHA256SUMS)",
              time.perf_counter() - start, hashed_total)
    return found


def format_fingerprints(fingerprints: dict[str, str]) -> str:
    """The short fingerprints as printed at the start of a run."""
    from data.fingerprint import short

    if not fingerprints:
        return "List fingerprints: none (the images are not in DATA_PATH)"
    return "List fingerprints: " + ", ".join(f"{flag} {short(fp)}" for flag, fp in fingerprints.items())


@dataclasses.dataclass(frozen=True)
class TrainBatches:
    """The training batches of a run (:func:`data.pipeline.make_train_dataset`) at any position and size.

    ``steps_per_epoch`` is the epoch length the batches are positioned with
    (None: the natural one, which :meth:`planned` fixes).
    """

    entries: Sequence[ListEntry]
    images: ImageSource
    batch_size: int
    channels: int
    balance: bool
    covid_per_batch: int
    class_weights: tuple[float, ...]
    augment: AugmentConfig | None
    mixup: float
    seed: int
    steps_per_epoch: int | None = None
    resize: str = "baseline"

    def make(
        self, *, img_size: int, start_epoch: int = 0, start_step: int = 0, num_shards: int = 1,
        shard_index: int = 0, shard_batch_size: int | None = None,
    ) -> TrainData:
        """The batches from (``start_epoch``, ``start_step``) on, at ``img_size``, of one shard."""
        return make_train_dataset(
            self.entries,
            self.images,
            img_size=img_size,
            batch_size=self.batch_size,
            channels=self.channels,
            balance=self.balance,
            covid_per_batch=self.covid_per_batch,
            class_weights=dict(enumerate(self.class_weights)),
            augment=self.augment,
            mixup_alpha=self.mixup,
            resize=self.resize,
            seed=self.seed,
            start_epoch=start_epoch,
            start_step=start_step,
            steps_per_epoch=self.steps_per_epoch,
            num_shards=num_shards,
            shard_index=shard_index,
            shard_batch_size=shard_batch_size,
        )

    def planned(self, *, img_size: int) -> tuple[TrainBatches, TrainData]:
        """These batches with their epoch length fixed (the configured one, else the plan's natural one),
        and the plan (making it checks the batch make-up before anything runs)."""
        plan = self.make(img_size=img_size)
        return dataclasses.replace(self, steps_per_epoch=self.steps_per_epoch or plan.steps_per_epoch), plan

    def for_fit(
        self, distribution: Distribution, *, img_size: int, start_epoch: int, start_step: int = 0
    ) -> tf.data.Dataset | tf.distribute.DistributedDataset:
        """The dataset as the strategy wants it: plain, or one shard per input pipeline."""
        if distribution.replicas == 1:
            return self.make(img_size=img_size, start_epoch=start_epoch, start_step=start_step).dataset

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return self.make(
                img_size=img_size,
                start_epoch=start_epoch,
                start_step=start_step,
                num_shards=context.num_input_pipelines,
                shard_index=context.input_pipeline_id,
                shard_batch_size=context.get_per_replica_batch_size(self.batch_size),
            ).dataset

        return distribution.strategy.distribute_datasets_from_function(dataset_fn)


class ValidationSets:
    """The validation dataset at each image size a run trains at, built once per size."""

    def __init__(
        self, entries: Sequence[ListEntry], images: ImageSource, *, batch_size: int, channels: int,
        shard_batches: bool, resize: str = "baseline",
    ) -> None:
        """``shard_batches``: each worker of a multi-worker run validates its share of the batches."""
        self.entries, self.images = entries, images
        self.batch_size, self.channels, self.shard_batches = batch_size, channels, shard_batches
        self.resize = resize
        self._built: dict[int, tf.data.Dataset] = {}

    def at(self, img_size: int) -> tf.data.Dataset:
        """The validation dataset at ``img_size``."""
        if img_size not in self._built:
            dataset = make_eval_dataset(
                self.entries, self.images, img_size=img_size, batch_size=self.batch_size,
                channels=self.channels, resize=self.resize,
            )
            if self.shard_batches:
                # By batch, not by file: the validation files are not sharded by file.
                options = tf.data.Options()
                options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
                dataset = dataset.with_options(options)
            self._built[img_size] = dataset
        return self._built[img_size]
