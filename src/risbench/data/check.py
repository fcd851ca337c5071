"""``python -m risbench.data check data=<name> [--quick] [overrides]``: validate a dataset install.

Composes the project config with the given overrides, then, without writing anything:

* says which layout it reads (risbench's under ``paths.data_dir``, or the refer toolkit's ``paths.refer_root``);
* counts referents, expressions and images per split of ``data.split_by`` in the dataset's own split order
  and compares them with the published counts; a published split that is missing is an error;
* decodes every image fully (``--quick``: headers only) with a progress bar, and lists, per split, missing,
  unreadable, truncated and mis-sized images, referents whose annotation or image record is missing from
  instances.json, zero-area masks and empty expressions;
* reports the text coverage of the configured tokenizer per split (unknown tokens, expressions cut by
  ``tokenizer.max_length``), with a warning above ``data.text_coverage_warning``.

The exit status is 0 when everything is right, 1 when something is wrong (each problem named), 2 for a
bad command line or config. Zero-area masks, empty expressions and coverage are reported as warnings:
training handles them (kept and counted, replaced by a placeholder, cut).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pycocotools.mask as mask_utils
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from risbench.config import CONFIG_ERRORS, compose_config, config_error_message, instantiate_node
from risbench.data.coverage import coverage_table, coverage_warnings, text_coverage
from risbench.data.datamodule import SPLITS
from risbench.errors import RisbenchError

# (dataset, split_by) -> split -> (referents, expressions, images) as published; None = no published figure.
# Every split scheme risbench reads is listed, its splits in the dataset's own order.
# Sources: referents and images per split of the COCO-based sets: the TensorFlow Datasets catalogue of
# ref_coco (its "Stats for each dataset and split" table, built from the refer toolkit's files);
# expressions: RefCOCO / RefCOCO+ (unc) Yu et al., ECCV 2016; RefCOCOg (google) Mao et al., CVPR 2016;
# RefCOCOg (umd) Nagaraja et al., ECCV 2016 (with the authors' correction of the partition sizes).
# RefCOCO's google split: no published expression count was found. ReferIt (refclef), both the berkeley
# (Hu et al., CVPR 2016) and the unc scheme: no published per-split figures were found (the papers give
# dataset totals only: 19,894 images, 130,525 expressions, 96,654 objects; the refer toolkit's README notes
# that its berkeley split misses 2 training and 1 test image), so only the split names are checked there.
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
    ("refclef", "berkeley"): {"train": (None, None, None), "val": (None, None, None), "test": (None, None, None)},
    ("refclef", "unc"): {split: (None, None, None) for split in ("train", "val", "testA", "testB", "testC")},
}
COLUMNS = ("referents", "expressions", "images")
# per-split problem kinds: the first four fail the check, the last two are warnings
PROBLEMS = ("missing", "unreadable", "truncated", "wrong_size", "missing_annotation", "zero_area_mask",
            "empty_expression")
FAILING = {"missing", "unreadable", "truncated", "wrong_size", "missing_annotation"}
MAX_LISTED = 20


def published_splits(dataset: str, split_by: str) -> dict:
    """split -> published (referents, expressions, images), in the dataset's own order (synthref: none)."""
    if (dataset, split_by) in PUBLISHED:
        return PUBLISHED[(dataset, split_by)]
    return {split: (None, None, None) for split in SPLITS.get(dataset, {}).get(split_by, ())}


def check_data(data_cfg: DictConfig, quick: bool = False, tokenizer_cfg: DictConfig | None = None,
               refer_root: str | None = None) -> tuple[str, bool]:
    """(report, ok) for the dataset a ``data:`` config node describes; nothing is written."""
    datamodule = instantiate_node(data_cfg, _recursive_=False)
    layout = (f"the refer toolkit's data/ folder (paths.refer_root={refer_root})" if refer_root
              else "risbench's (under paths.data_dir)")
    lines = [f"dataset {datamodule.dataset} (split_by={datamodule.split_by}), layout: {layout}",
             f"  annotations: {datamodule.data_dir}", f"  images:      {datamodule.image_dir}"]
    try:
        datamodule.check_installed()
        ann = datamodule.annotations
    except RisbenchError as error:
        return "\n".join(lines + ["", f"FAILED: {error}"]), False
    published = published_splits(datamodule.dataset, datamodule.split_by)
    present = ann.split_names
    order = list(published) + sorted(set(present) - set(published))
    ok = True
    lines += ["", f"  {'split':<8}" + "".join(f"{c:>24}" for c in COLUMNS)]
    for split in order:
        if split not in present:
            ok = False
            lines.append(f"  {split:<8} MISSING from refs({datamodule.split_by}).p (a published split)")
            continue
        refs = ann.in_split(split)
        found = (len(refs), sum(len(r.sentences) for r in refs), len({r.image_id for r in refs}))
        cells = []
        for n, want in zip(found, published.get(split, (None,) * 3)):
            if want is None or n == want:
                cells.append(f"{n}" + ("  ok" if want is not None else "    "))
            else:
                ok = False
                cells.append(f"{n} != {want}  WRONG")
        lines.append(f"  {split:<8}" + "".join(f"{c:>24}" for c in cells))
    if not any(any(v is not None for v in counts) for counts in published.values()):
        lines.append("  (no published counts to compare with for this dataset/split scheme; split names checked)")

    problems = find_problems(ann, datamodule.image_dir, [s for s in order if s in present], quick)
    failing = {split: {k: v for k, v in kinds.items() if k in FAILING} for split, kinds in problems.items()}
    ok = ok and not any(failing.values())
    lines += ["", f"  images {'headers read (--quick)' if quick else 'decoded in full'}; problems per split:",
              f"  {'split':<8}" + "".join(f"{k:>{len(k) + 2}}" for k in PROBLEMS)]
    for split in problems:
        lines.append(f"  {split:<8}" + "".join(f"{len(problems[split].get(k, [])):>{len(k) + 2}}" for k in PROBLEMS))
    listed = [f"{kind}: {item} ({split})" for split, kinds in problems.items() for kind in PROBLEMS
              for item in kinds.get(kind, [])]
    lines += [f"    {item}" for item in listed[:MAX_LISTED]]
    if len(listed) > MAX_LISTED:
        lines.append(f"    ... and {len(listed) - MAX_LISTED} more")

    lines += ["", *coverage_report(datamodule, tokenizer_cfg, [s for s in order if s in present])]
    lines += ["", "OK" if ok else "FAILED: see the lines marked above"]
    return "\n".join(lines), ok


def find_problems(ann, image_dir: Path, splits: list[str], quick: bool) -> dict[str, dict[str, list[str]]]:
    """split -> problem kind -> the files / referents concerned (images decoded once, in threads)."""
    problems: dict[str, dict[str, list[str]]] = {split: defaultdict(list) for split in splits}
    images_of: dict[int, list[str]] = defaultdict(list)  # image_id -> splits using it
    for split in splits:
        for ref in ann.in_split(split):
            if ref.ann_id not in ann.coco.anns or ref.image_id not in ann.coco.imgs:
                problems[split]["missing_annotation"].append(
                    f"ref_id {ref.ref_id} (ann_id {ref.ann_id}, image_id {ref.image_id} not in instances.json)")
                continue
            if split not in images_of[ref.image_id]:
                images_of[ref.image_id].append(split)
            if mask_utils.area(ann.mask_rle(ref)) == 0:
                problems[split]["zero_area_mask"].append(f"ref_id {ref.ref_id} (ann_id {ref.ann_id})")
            for sent in ref.sentences:
                if not sent.text.strip():
                    problems[split]["empty_expression"].append(f"ref_id {ref.ref_id}, sent_id {sent.sent_id}")
    jobs = [(image_id, image_dir / ann.image(image_id)["file_name"], ann.image(image_id)) for image_id in images_of]
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes outside the GIL
        results = pool.map(lambda job: image_problem(job[1], job[2], quick), jobs)
        for (image_id, path, _), problem in _progress(zip(jobs, results), len(jobs), "checking images"):
            if problem:
                kind, detail = problem
                for split in images_of[image_id]:
                    problems[split][kind].append(f"{path}" + (f" [{detail}]" if detail else ""))
    return {split: dict(kinds) for split, kinds in problems.items()}


def image_problem(path: Path, info: dict, quick: bool = False) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with one image file, or None; ``quick`` reads only its header."""
    from risbench.data.transforms import UnreadableImageError, load_rgb

    if not path.is_file():
        return "missing", ""
    try:
        if quick:
            with Image.open(path) as image:
                size = image.size
        else:
            size = load_rgb(path).size
    except UnreadableImageError as exc:
        return exc.kind, exc.detail
    except (OSError, SyntaxError, ValueError) as exc:
        return "unreadable", f"{type(exc).__name__}: {exc}"
    if size != (int(info["width"]), int(info["height"])):
        return "wrong_size", f"{size[0]}x{size[1]}, annotated {info['width']}x{info['height']}"
    return None


def coverage_report(datamodule, tokenizer_cfg: DictConfig | None, splits: list[str]) -> list[str]:
    if tokenizer_cfg is None:
        return ["  text coverage: no tokenizer configured"]
    from risbench.data.tokenizers import build_tokenizer

    kwargs = {k: v for k, v in OmegaConf.to_container(tokenizer_cfg, resolve=True).items() if v is not None}
    try:
        tokenizer = build_tokenizer(**kwargs)
    except RisbenchError as error:
        return [f"  text coverage: not measured, the configured tokenizer is not available ({error})".split("\n")[0]]
    coverage = text_coverage(datamodule, tokenizer, splits)
    lines = [f"  text coverage of the configured tokenizer ({kwargs['kind']}, {kwargs.get('path')}):",
             *coverage_table(coverage)]
    lines += [f"  WARNING: {line}" for line in coverage_warnings(coverage, datamodule.text_coverage_warning)]
    return lines


def _progress(items, total: int, what: str):
    """`items` with a progress bar on stderr (shown on a terminal only)."""
    from rich.console import Console
    from rich.progress import track

    return track(items, description=what, total=total, console=Console(stderr=True), transient=True)


def main(argv: list[str], config_dir: str | Path | None = None) -> int:
    """Entry point of ``python -m risbench.data check``; returns the exit status."""
    quick = "--quick" in argv
    overrides = [arg for arg in argv if arg != "--quick"]
    try:
        cfg = compose_config(overrides, config_dir)
        report, ok = check_data(cfg.data, quick=quick, tokenizer_cfg=cfg.get("tokenizer"),
                                refer_root=cfg.get("paths", {}).get("refer_root"))
    except RisbenchError as error:
        print(f"risbench data check: {error}", file=sys.stderr)
        return 2
    except CONFIG_ERRORS as error:  # an interpolation that does not resolve
        print(f"risbench data check: {config_error_message(error)}", file=sys.stderr)
        return 2
    print(report)
    return 0 if ok else 1
