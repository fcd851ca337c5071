"""``python -m risbench.data check data=<name> [overrides]``: validate a dataset install.

Composes the project config with the given overrides, then counts referents, expressions and images
per split of ``data.split_by``, compares them with the published counts, and lists missing or
unreadable images. Prints a readable report; the exit status is 0 only when everything is right.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from risbench.config import CONF_DIR
from risbench.errors import RisbenchError

# (dataset, split_by) -> split -> (referents, expressions, images) as published; None = not checked
PUBLISHED = {
    ("refcoco", "unc"): {"train": (42404, 120624, 16994), "val": (3811, 10834, 1500),
                         "testA": (1975, 5657, 750), "testB": (1810, 5095, 750)},
    ("refcoco", "google"): {"train": (40000, None, 19213), "val": (5000, None, 4559),
                            "test": (5000, None, 4527)},
    ("refcoco+", "unc"): {"train": (42278, 120191, 16992), "val": (3805, 10758, 1500),
                          "testA": (1975, 5726, 750), "testB": (1798, 4889, 750)},
    ("refcocog", "umd"): {"train": (42226, 80512, 21899), "val": (2573, 4896, 1300),
                          "test": (5023, 9602, 2600)},
    ("refcocog", "google"): {"train": (44822, 85474, 24698), "val": (5000, 9536, 4650)},
}
COLUMNS = ("referents", "expressions", "images")
MAX_LISTED = 20


def compose_config(overrides: list[str], config_dir: str | Path | None = None) -> DictConfig:
    """The project's Hydra config with command-line style overrides."""
    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def check_data(data_cfg: DictConfig) -> tuple[str, bool]:
    """(report, ok) for the dataset a ``data:`` config node describes."""
    datamodule = instantiate(data_cfg, _recursive_=False)
    lines = [f"dataset {datamodule.dataset} (split_by={datamodule.split_by})",
             f"  annotations: {datamodule.data_dir}", f"  images:      {datamodule.image_dir}"]
    try:
        datamodule.prepare_data()
        ann = datamodule.annotations
    except RisbenchError as error:
        return "\n".join(lines + ["", f"FAILED: {error}"]), False
    published = PUBLISHED.get((datamodule.dataset, datamodule.split_by), {})
    ok = True
    lines += ["", f"  {'split':<8}" + "".join(f"{c:>24}" for c in COLUMNS)]
    image_ids: set[int] = set()
    for split in sorted(ann.split_names, key=_split_order):
        refs = ann.in_split(split)
        ids = {r.image_id for r in refs}
        image_ids |= ids
        found = (len(refs), sum(len(r.sentences) for r in refs), len(ids))
        expected = published.get(split, (None,) * 3)
        cells = []
        for n, want in zip(found, expected):
            if want is None or n == want:
                cells.append(f"{n}" + ("  ok" if want is not None else "    "))
            else:
                ok = False
                cells.append(f"{n} != {want}  WRONG")
        lines.append(f"  {split:<8}" + "".join(f"{c:>24}" for c in cells))
    for split in sorted(set(published) - set(ann.split_names)):
        ok = False
        lines.append(f"  {split:<8} missing from refs({datamodule.split_by}).p (published split)")
    if not published:
        lines.append("  (no published counts to compare with for this dataset/split scheme)")
    bad = _bad_images(ann, datamodule.image_dir, image_ids)
    lines += ["", f"  images checked: {len(image_ids)}, missing or unreadable: {len(bad)}"]
    lines += [f"    {problem}" for problem in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"    ... and {len(bad) - MAX_LISTED} more")
    ok = ok and not bad
    lines += ["", "OK" if ok else "FAILED: see the lines marked above"]
    return "\n".join(lines), ok


def _split_order(split: str) -> tuple:
    known = ("train", "val", "test", "testA", "testB", "testC")
    return (known.index(split) if split in known else len(known), split)


def _bad_images(ann, image_dir: Path, image_ids: set[int]) -> list[str]:
    """Every missing image, or one whose header cannot be read or disagrees with instances.json."""
    bad = []
    for image_id in sorted(image_ids):
        info = ann.image(image_id)
        path = image_dir / info["file_name"]
        if not path.is_file():
            bad.append(f"missing: {path}")
            continue
        try:
            with Image.open(path) as image:
                size = image.size
        except (OSError, SyntaxError, ValueError) as exc:
            bad.append(f"unreadable: {path} ({type(exc).__name__})")
            continue
        if size != (int(info["width"]), int(info["height"])):
            bad.append(f"wrong size: {path} is {size[0]}x{size[1]}, annotated {info['width']}x{info['height']}")
    return bad


def main(argv: list[str], config_dir: str | Path | None = None) -> int:
    """Entry point of ``python -m risbench.data check``; returns the exit status."""
    try:
        cfg = compose_config(argv, config_dir)
        report, ok = check_data(cfg.data)
    except (HydraException, OmegaConfBaseException) as error:
        print(f"risbench data check: bad config or overrides: {error}", file=sys.stderr)
        return 2
    except RisbenchError as error:
        print(f"risbench data check: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0 if ok else 1

