"""`ReferDataModule`: RefCOCO, RefCOCO+, RefCOCOg, ReferIt (RefClef) and synthref behind one interface.

The constructor arguments are the keys of the ``data:`` config node (conf/data/*.yaml). The tokenizer
comes from the model config, so the harness hands it over with `set_tokenizer` before the loaders are
built. A batch is the dict described in `risbench.models.base`.

Bad input is handled deliberately (``python -m risbench.data check`` finds all of it before training):

* empty or blank expressions are replaced by ``blind_placeholder`` with a warning, and counted;
* masks of zero area are kept (the IoU logic scores them), with a warning, and counted;
* grayscale, palette, CMYK, 16-bit and RGBA images are converted to RGB (`transforms.to_rgb`);
* a missing image fails `setup` with the list of missing files; with ``skip_corrupt`` the images are
  checked at setup (present, readable header, size as annotated) and the bad ones skipped with a
  warning and counted in `stats`, as are referents whose annotation or image record is missing from
  instances.json. An image that only fails to decode later (a truncated file) is dropped from its batch
  with a warning; the batch says so (``batch["skipped"]``) and `on_before_batch_transfer` counts it, in
  the training process even when loader workers decoded it (a batch with nothing left becomes None).

`stats` (results.json ``data_stats``) counts every skipped sample by kind: missing, unreadable,
truncated, wrong_size, missing_annotation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from risbench.data.refer import MASK_UNIONS, SPLIT_UNIONS, ReferAnnotations, layout_hint, refs_path
from risbench.data.samplers import TrainSampler, eval_sampler
from risbench.data.synthref import ensure_synthref, find_synthref
from risbench.data.tokenizers import count_words
from risbench.data.transforms import InputTransform, UnreadableImageError, load_rgb
from risbench.errors import MissingFileError, RisbenchError

# dataset -> its split schemes (refs(<split_by>).p files) and their published splits
SPLITS = {
    "refcoco": {"unc": ("train", "val", "testA", "testB"), "google": ("train", "val", "test")},
    "refcoco+": {"unc": ("train", "val", "testA", "testB")},
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
    "refclef": {"unc": ("train", "val", "testA", "testB", "testC"), "berkeley": ("train", "val", "test")},
    "synthref": {"unc": ("train", "val", "testA", "testB")},
}
IMAGE_HINTS = {
    "coco": "the COCO train2014 images (train2014.zip from cocodataset.org) in <data_dir>/images/mscoco/train2014/",
    "refclef": "the SAIAPR TC-12 subset of the refer toolkit (saiapr_tc-12.zip) in <data_dir>/images/saiapr_tc-12/",
    "synthref": "synthref regenerates its images: remove its folder (paths.synthref_dir) and run again",
}
TRAIN_SAMPLING = ("all", "one_per_ref")
MAX_LISTED_FILES = 50  # skipped files named in stats (results.json); the counts cover all
SKIP_KINDS = ("missing", "unreadable", "truncated", "wrong_size", "missing_annotation")


@dataclass(frozen=True, slots=True)
class Sample:
    """One (referent, expression) pair with everything __getitem__ needs; `rle` is shared per referent."""

    path: Path
    height: int
    width: int
    rle: dict
    text: str
    ref_id: int
    sent_id: int
    image_id: int


class ReferDataset(Dataset):
    """Samples of one split; `groups` lists each referent's sample indices (for one_per_ref)."""

    def __init__(self, samples: list[Sample], groups: list[list[int]], transform: InputTransform,
                 with_orig_mask: bool, skip_corrupt: bool, split: str = ""):
        self.samples, self.groups = samples, groups
        self.transform, self.with_orig_mask, self.skip_corrupt = transform, with_orig_mask, skip_corrupt
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        try:
            image = load_rgb(s.path)
            if image.size != (s.width, s.height):
                raise UnreadableImageError(f"image {s.path} is {image.size[0]}x{image.size[1]} but the "
                                           f"annotations say {s.width}x{s.height}", kind="wrong_size")
        except UnreadableImageError as exc:
            if not self.skip_corrupt:
                raise RisbenchError(f"{exc}\n  how to fix: replace the file, or set data.skip_corrupt=true") from None
            warnings.warn(f"{exc}; sample skipped (data.skip_corrupt=true)", stacklevel=2)
            # the training process counts it (`ReferDataModule.on_before_batch_transfer`), workers or not
            return {"skipped": (self.split, index, str(s.path), exc.kind)}
        mask = mask_utils.decode(s.rle).astype(bool)
        pixels, target, valid_box = self.transform(image, mask)
        sample = {"image": pixels, "mask": target, "valid_box": valid_box,
                  "orig_size": torch.tensor([s.height, s.width]), "text": s.text, "ref_id": s.ref_id,
                  "sent_id": s.sent_id, "image_id": s.image_id}
        if self.with_orig_mask:
            sample["orig_mask"] = torch.from_numpy(mask)
        return sample


class ReferCollator:
    """Stacks samples and tokenises the batch; with `blind_placeholder` every text becomes that word.

    ``text`` and ``num_words`` keep the real expression even for the text-blind control, so its
    per-length results line up with the real run's.
    """

    def __init__(self, tokenizer, blind_placeholder: str | None = None):
        self.tokenizer, self.blind_placeholder = tokenizer, blind_placeholder

    def __call__(self, samples: list[dict | None]) -> dict | None:
        skipped = [s["skipped"] for s in samples if s is not None and "skipped" in s]
        samples = [s for s in samples if s is not None and "skipped" not in s]
        if not samples:
            return {"skipped": skipped} if skipped else None
        texts = [s["text"] for s in samples]
        tokens, attention_mask = self.tokenizer([self.blind_placeholder] * len(texts) if self.blind_placeholder
                                                else texts)
        batch = {
            "image": _stack([s["image"] for s in samples]),
            "tokens": tokens,
            "attention_mask": attention_mask,
            "mask": _stack([s["mask"] for s in samples]),
            "valid_box": torch.stack([s["valid_box"] for s in samples]),
            "orig_size": torch.stack([s["orig_size"] for s in samples]),
            "num_words": torch.tensor([count_words(t) for t in texts], dtype=torch.long),
            "text": texts,
            "ref_id": [s["ref_id"] for s in samples],
            "sent_id": [s["sent_id"] for s in samples],
            "image_id": [s["image_id"] for s in samples],
        }
        if "orig_mask" in samples[0]:
            batch["orig_masks"] = [s["orig_mask"] for s in samples]
        if skipped:
            batch["skipped"] = skipped
        return batch


class ReferDataModule(L.LightningDataModule):
    def __init__(self, dataset: str = "synthref", split_by: str = "unc", data_dir: str = "data/synthref",
                 image_dir: str | None = None, train_split: str = "train", val_split: str | None = "val",
                 test_splits=None, img_size: int = 480, resize: str = "letterbox",
                 normalize: str = "imagenet", batch_size: int = 8, eval_batch_size: int | None = None,
                 num_workers: int = 0, train_sampling: str = "all", mask_union: str = "union",
                 blind_text: bool = False, blind_placeholder: str = "object", skip_corrupt: bool = False,
                 synthref: dict | None = None, seed: int = 0, tokenizer=None,
                 max_eval_samples: int | None = None, max_train_samples: int | None = None,
                 text_coverage_warning: float = 0.05):
        super().__init__()
        if dataset not in SPLITS:
            raise RisbenchError(f"data.dataset must be one of {list(SPLITS)}, got {dataset!r}")
        if split_by not in SPLITS[dataset]:
            raise RisbenchError(f"{dataset} has the split schemes {list(SPLITS[dataset])}, "
                                f"not data.split_by={split_by!r}")
        if train_sampling not in TRAIN_SAMPLING:
            raise RisbenchError(f"data.train_sampling must be one of {TRAIN_SAMPLING}, got {train_sampling!r}")
        if mask_union not in MASK_UNIONS:
            raise RisbenchError(f"data.mask_union must be one of {MASK_UNIONS}, got {mask_union!r}")
        for key, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                  ("num_workers", num_workers, 0), ("max_train_samples", max_train_samples, 1),
                                  ("max_eval_samples", max_eval_samples, 1)):
            if value is not None and value < least:  # 0 batch size fails deep in the sampler; 0 samples trains on none
                raise RisbenchError(f"data.{key} must be a whole number >= {least}, got {value!r}")
        self.dataset, self.split_by = dataset, split_by
        self.data_dir = Path(data_dir).expanduser()
        self.image_dir = Path(image_dir).expanduser() if image_dir else self.data_dir / "images"
        self.train_split, self.val_split = train_split, val_split
        # None: every split of the scheme that training does not use (resolved when first asked)
        self.test_splits = [test_splits] if isinstance(test_splits, str) else (
            None if test_splits is None else list(test_splits))
        self.transform = InputTransform(img_size, resize, normalize)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(batch_size if eval_batch_size is None else eval_batch_size)
        self.num_workers = int(num_workers)
        self.train_sampling, self.mask_union = train_sampling, mask_union
        self.blind_text, self.blind_placeholder = bool(blind_text), blind_placeholder
        self.skip_corrupt = bool(skip_corrupt)
        self.synthref = _plain(synthref)
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.max_eval_samples, self.max_train_samples = max_eval_samples, max_train_samples
        self.text_coverage_warning = float(text_coverage_warning)
        self.datasets: dict[str, ReferDataset] = {}
        self._annotations: ReferAnnotations | None = None
        self._split_stats: dict[str, dict] = {}
        self._skipped_files: list[str] = []
        # split -> sample index -> (file, kind) of samples dropped while loading (counted once each)
        self._loading_skips: dict[str, dict[int, tuple[str, str]]] = {}

    # ------------------------------------------------------------------------------------ public API
    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def test_split_names(self) -> list[str]:
        if self.test_splits is None:
            used = set(SPLIT_UNIONS.get(self.train_split, (self.train_split,)))
            present = self.annotations.split_names
            published = [s for s in SPLITS[self.dataset][self.split_by] if s in present]
            self.test_splits = [s for s in published + sorted(set(present) - set(published)) if s not in used]
        return list(self.test_splits)

    @property
    def tokenizer_dir(self) -> Path | None:
        """synthref's own WordPiece tokenizer directory (None for the real datasets)."""
        return self.data_dir / "tokenizer" if self.dataset == "synthref" else None

    @property
    def stats(self) -> dict:
        """Counts for results.json: skipped samples by kind, blank expressions, empty masks, per split."""
        splits = {}
        for split, stats in self._split_stats.items():
            stats = {**stats, "skipped_by_kind": dict(stats["skipped_by_kind"])}
            for _, kind in self._loading_skips.get(split, {}).values():
                stats["skipped_samples"] += 1
                stats["skipped_by_kind"][kind] = stats["skipped_by_kind"].get(kind, 0) + 1
            splits[split] = stats
        totals = {key: sum(s[key] for s in splits.values())
                  for key in ("skipped_images", "skipped_samples", "empty_expressions", "zero_area_masks")}
        by_kind = {kind: sum(s["skipped_by_kind"].get(kind, 0) for s in splits.values()) for kind in SKIP_KINDS}
        files = self._skipped_files + [f"{path} ({kind})" for skips in self._loading_skips.values()
                                       for path, kind in skips.values()]
        return {**totals, "skipped_by_kind": {k: n for k, n in by_kind.items() if n},
                "skipped_files": list(dict.fromkeys(files))[:MAX_LISTED_FILES], "splits": splits}

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Count the samples a loader dropped (``batch["skipped"]``); a batch left empty becomes None."""
        if isinstance(batch, dict) and "skipped" in batch:
            self.record_skipped(batch.pop("skipped"))
            if "image" not in batch:
                return None
        return batch

    def loading_skips(self) -> list[tuple]:
        """(split, index, file, kind) of every sample dropped while loading (for gathering over DDP ranks)."""
        return [(split, index, path, kind) for split, skips in self._loading_skips.items()
                for index, (path, kind) in skips.items()]

    def record_skipped(self, records) -> None:
        for split, index, path, kind in records:
            self._loading_skips.setdefault(split, {})[int(index)] = (path, kind)

    def prepare_data(self) -> None:
        """Generate synthref if needed; for a real dataset, check that its files are where expected."""
        if self.dataset == "synthref":
            ensure_synthref(self.data_dir, self.synthref)
        else:
            self.check_layout()

    def check_installed(self) -> None:
        """`prepare_data`'s checks without writing anything (``data check``): synthref is never generated here."""
        if self.dataset == "synthref":
            find_synthref(self.data_dir, self.synthref)
        else:
            self.check_layout()

    def check_layout(self) -> None:
        for path in (refs_path(self.data_dir, self.split_by), self.data_dir / "instances.json"):
            if not path.is_file():
                raise MissingFileError(f"{self.dataset} annotation file", path,
                                       layout_hint(self.data_dir, self.split_by, self.dataset))
        if not self.image_dir.is_dir():
            raise MissingFileError(f"{self.dataset} image directory", self.image_dir, self._image_hint())

    def split_texts(self, split: str) -> list[str]:
        """Every expression of a split (or union of splits), as the loader reads them."""
        return [sent.text for ref in self.annotations.in_split(split) for sent in ref.sentences]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": [self.train_split, self.val_split], "validate": [self.val_split],
                  "test": self.test_split_names, "predict": []}.get(stage) if stage else None
        if splits is None:
            splits = [self.train_split, self.val_split, *self.test_split_names]
        for split in splits:
            if split and split not in self.datasets:
                self.datasets[split] = self._build(split, train=split == self.train_split)

    def train_dataloader(self) -> DataLoader:
        data = self._split(self.train_split)
        sampler = TrainSampler(data.groups, seed=self.seed, one_per_ref=self.train_sampling == "one_per_ref")
        return self._loader(data, sampler, self.batch_size, drop_last=len(sampler) >= self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_split:
            return []
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(split) for split in self.test_split_names]

    def split_dataloader(self, split: str) -> DataLoader:
        """Loader of any split in evaluation form (every pair once, original-size masks)."""
        return self._eval_loader(split)

    # ------------------------------------------------------------------------------------- internals
    @property
    def annotations(self) -> ReferAnnotations:
        if self._annotations is None:
            if self.dataset == "synthref":
                ensure_synthref(self.data_dir, self.synthref)  # cheap when present; setup may run alone
            else:
                self.check_layout()
            self._annotations = ReferAnnotations(self.data_dir, self.split_by, self.mask_union)
        return self._annotations

    def _build(self, split: str, train: bool) -> ReferDataset:
        ann = self.annotations
        samples, groups, stats = [], [], {"referents": 0, "expressions": 0, "images": 0, "skipped_images": 0,
                                          "skipped_samples": 0, "empty_expressions": 0, "zero_area_masks": 0,
                                          "skipped_by_kind": {}}
        referents = ann.in_split(split)
        referents, orphans = self._without_orphans(referents, split)
        for ref in orphans:
            self._count_skip(stats, "missing_annotation", len(ref.sentences))
        bad_images = self._bad_images({r.image_id for r in referents}, split)
        limit = self.max_train_samples if train else self.max_eval_samples
        blank, empty_masks = [], []
        for ref in referents:
            if limit is not None and len(samples) >= limit:
                break
            info = ann.image(ref.image_id)
            if ref.image_id in bad_images:
                self._count_skip(stats, bad_images[ref.image_id], len(ref.sentences))
                continue
            rle = ann.mask_rle(ref)
            if int(mask_utils.area(rle)) == 0:
                empty_masks.append(ref.ref_id)
            group = []
            for sent in ref.sentences[: None if limit is None else limit - len(samples)]:
                text = sent.text
                if not text.strip():
                    blank.append((ref.ref_id, sent.sent_id))
                    text = self.blind_placeholder
                group.append(len(samples))
                samples.append(Sample(self.image_dir / info["file_name"], int(info["height"]), int(info["width"]),
                                      rle, text, ref.ref_id, sent.sent_id, ref.image_id))
            groups.append(group)
        if blank:
            warnings.warn(f"{split}: {len(blank)} empty expression(s) replaced by {self.blind_placeholder!r} "
                          f"(first: ref_id {blank[0][0]}, sent_id {blank[0][1]})", stacklevel=2)
        if empty_masks:
            warnings.warn(f"{split}: {len(empty_masks)} referent(s) with an empty (zero-area) mask, kept and "
                          f"counted (first: ref_id {empty_masks[0]}); python -m risbench.data check lists them",
                          stacklevel=2)
        stats.update(referents=len(groups), expressions=len(samples), empty_expressions=len(blank),
                     zero_area_masks=len(empty_masks), images=len({s.image_id for s in samples}),
                     skipped_images=len(bad_images))
        self._split_stats[split] = stats
        return ReferDataset(samples, groups, self.transform, with_orig_mask=not train,
                            skip_corrupt=self.skip_corrupt, split=split)

    @staticmethod
    def _count_skip(stats: dict, kind: str, samples: int) -> None:
        stats["skipped_samples"] += samples
        stats["skipped_by_kind"][kind] = stats["skipped_by_kind"].get(kind, 0) + samples

    def _without_orphans(self, referents: list, split: str) -> tuple[list, list]:
        """Referents whose annotation or image record is missing from instances.json: an error, or with
        skip_corrupt skipped with a warning (and counted)."""
        ann = self.annotations
        orphans = [r for r in referents if r.ann_id not in ann.coco.anns or r.image_id not in ann.coco.imgs]
        if not orphans:
            return referents, []
        first = orphans[0]
        what = (f"{len(orphans)} referent(s) of the {self.dataset} {split} split have no annotation or image "
                f"record in {self.data_dir / 'instances.json'} (first: ref_id {first.ref_id}, ann_id "
                f"{first.ann_id}, image_id {first.image_id})")
        if not self.skip_corrupt:
            raise RisbenchError(f"{what}; the refs file and instances.json do not belong together.\n  how to "
                                "fix: download both from the same refer release, or set data.skip_corrupt=true "
                                "to skip them")
        warnings.warn(f"{what}; skipped (data.skip_corrupt=true)", stacklevel=3)
        orphan_ids = {r.ref_id for r in orphans}
        return [r for r in referents if r.ref_id not in orphan_ids], orphans

    def _bad_images(self, image_ids: set[int], split: str) -> dict[int, str]:
        """image_id -> problem kind for images that are missing (error, or skipped) or, with skip_corrupt,
        unreadable or mis-sized judged from their header."""
        ann, bad, described = self.annotations, {}, {}
        for image_id in sorted(image_ids):
            info = ann.image(image_id)
            path = self.image_dir / info["file_name"]
            problem = ("missing", "missing") if not path.is_file() else None
            if problem is None and self.skip_corrupt:
                problem = _header_problem(path, int(info["width"]), int(info["height"]))
            if problem:
                bad[image_id] = problem[0]
                described[image_id] = f"{path} ({problem[1]})"
        if bad and not self.skip_corrupt:
            listed = "\n    ".join(list(described.values())[:5])
            raise RisbenchError(f"{len(bad)} image(s) of the {self.dataset} {split} split are missing, e.g.\n"
                                f"    {listed}\n  how to fix: {self._image_hint()}; or set data.skip_corrupt=true "
                                "to skip them")
        if bad:
            warnings.warn(f"{split}: skipping {len(bad)} unusable image(s) (data.skip_corrupt=true), e.g. "
                          f"{next(iter(described.values()))}", stacklevel=2)
            self._skipped_files += [v for v in described.values() if v not in self._skipped_files]
        return bad

    def _split(self, split: str) -> ReferDataset:
        if split not in self.datasets:
            self.datasets[split] = self._build(split, train=split == self.train_split)
        return self.datasets[split]

    def _eval_loader(self, split: str) -> DataLoader:
        data = self._split(split)
        if not data.with_orig_mask:  # the train split evaluated: a separate eval-form view
            data = ReferDataset(data.samples, data.groups, self.transform, True, self.skip_corrupt, data.split)
        return self._loader(data, eval_sampler(data), self.eval_batch_size, drop_last=False)

    def _loader(self, data: ReferDataset, sampler, batch_size: int, drop_last: bool) -> DataLoader:
        if self.tokenizer is None:
            raise RisbenchError("the data module has no tokenizer; the harness must call set_tokenizer() "
                                "with the model's tokenizer before building data loaders")
        collate = ReferCollator(self.tokenizer, self.blind_placeholder if self.blind_text else None)
        return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def _image_hint(self) -> str:
        hint = IMAGE_HINTS["refclef" if self.dataset == "refclef" else
                           "synthref" if self.dataset == "synthref" else "coco"] + f" (data.image_dir={self.image_dir})"
        # the other layout's image folder, next to where this one was looked for
        from risbench.config import REFER_LAYOUTS

        kind = "saiapr_images" if self.dataset == "refclef" else "coco_images"
        own, refer = REFER_LAYOUTS[kind]
        for root in self.image_dir.parents:
            for mine, other, key in ((own, refer, "paths.refer_root"), (refer, own, "paths.data_dir")):
                if self.image_dir == root / mine and (root / other).is_dir() and mine != other:
                    return f"{root / other} exists: this looks like the other layout; pass {key}={root}"
        return hint


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack through numpy: one thread, where torch's intra-op threads (shared with training when
    the loader runs in the main process) cost more than they save on a plain copy."""
    return torch.from_numpy(np.stack([t.numpy() for t in tensors]))


def _header_problem(path: Path, width: int, height: int) -> tuple[str, str] | None:
    """(kind, description) of why the image at `path` cannot be used, judged from its header only
    (cheap), or None."""
    try:
        with Image.open(path) as image:
            size = image.size
    except (OSError, SyntaxError, ValueError) as exc:
        return "unreadable", f"unreadable: {type(exc).__name__}"
    if size == (width, height):
        return None
    return "wrong_size", f"size {size[0]}x{size[1]}, annotated {width}x{height}"


def _plain(config):
    """A Hydra DictConfig node as plain Python containers."""
    if config is None or isinstance(config, dict):
        return config
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config, resolve=True)
