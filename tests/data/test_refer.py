"""The refer-format reader: pickles (Python 2 included), polygon and RLE masks, split selection."""

from __future__ import annotations

import re

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from risbench.data.refer import ReferAnnotations, combine_parts, load_refs
from risbench.errors import MissingFileError, RisbenchError
from tests.fixtures import ANNOTATIONS, REFS, UNC_COUNTS, make_refer, polygon_masks


def _masks_by_ann(ann: ReferAnnotations) -> dict[int, np.ndarray]:
    return {r.ann_id: ann.mask(r) for r in ann.referents}


def test_polygon_masks_match_pycocotools(tmp_path):
    ann = ReferAnnotations(make_refer(tmp_path, "refcoco"), "unc")
    for ann_id, mask in _masks_by_ann(ann).items():
        expected = ann.coco.annToMask(ann.coco.anns[ann_id]).astype(bool)  # pycocotools' own union
        assert mask.dtype == bool and np.array_equal(mask, expected)
    image_id = ANNOTATIONS[1][0]
    assert ann.mask(ann.referents[0]).shape == (ann.image(image_id)["height"], ann.image(image_id)["width"])


def test_refclef_rle_masks_and_lavt_union(tmp_path):
    ann_dir = make_refer(tmp_path, "refclef", "berkeley")
    union = _masks_by_ann(ReferAnnotations(ann_dir, "berkeley"))
    lavt = _masks_by_ann(ReferAnnotations(ann_dir, "berkeley", mask_union="lavt"))
    for ann_id in ANNOTATIONS:
        parts = np.stack(polygon_masks(ann_id))
        assert np.array_equal(union[ann_id], parts.sum(0) > 0)
        assert np.array_equal(lavt[ann_id], parts.sum(0) == 1)
    assert lavt[1].sum() < union[1].sum()  # ann 1's two parts overlap: LAVT drops the overlap


def test_combine_parts_of_no_segmentation_is_empty():
    rle = combine_parts([], 5, 7)
    assert mask_utils.decode(rle).shape == (5, 7) and mask_utils.area(rle) == 0


def test_python2_pickle_with_latin1_bytes(tmp_path):
    ann_dir = make_refer(tmp_path, "refcoco", "unc", py2_pickle=True)
    with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load does with it
        import pickle

        pickle.loads((ann_dir / "refs(unc).p").read_bytes())
    refs = load_refs(ann_dir / "refs(unc).p")
    assert refs[4]["sentences"][1]["raw"] == "caf\xe9 square"
    texts = [s.text for r in ReferAnnotations(ann_dir, "unc").referents for s in r.sentences]
    assert texts == [t for _, _, sents in REFS for t in sents]


def test_split_counts_and_trainval(tmp_path):
    ann = ReferAnnotations(make_refer(tmp_path, "refcoco"), "unc")
    assert ann.split_names == sorted(UNC_COUNTS)
    for split, (n_refs, n_sents, n_images) in UNC_COUNTS.items():
        refs = ann.in_split(split)
        assert (len(refs), sum(len(r.sentences) for r in refs), len({r.image_id for r in refs})) == \
               (n_refs, n_sents, n_images)
    assert len(ann.in_split("trainval")) == UNC_COUNTS["train"][0] + UNC_COUNTS["val"][0]
    with pytest.raises(RisbenchError, match="testC"):
        ann.in_split("testC")


def test_missing_files_name_path_and_layout(tmp_path):
    ann_dir = make_refer(tmp_path, "refcoco")
    with pytest.raises(MissingFileError, match=r"refs\(google\)\.p[\s\S]*refs\(unc\)\.p"):
        ReferAnnotations(ann_dir, "google")
    with pytest.raises(MissingFileError, match="refer/refcocog"):
        ReferAnnotations(tmp_path / "refer" / "refcocog", "umd")
    (ann_dir / "instances.json").unlink()
    with pytest.raises(MissingFileError, match="instances.json"):
        ReferAnnotations(ann_dir, "unc")


def test_bad_refs_file(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"not a pickle")
    with pytest.raises(RisbenchError, match="cannot read"):
        load_refs(path)


class _TouchesMarker:
    """What a malicious refs file holds: unpickling it calls a function of its author's choosing."""

    def __init__(self, marker, shell: bool):
        self.marker, self.shell = marker, shell

    def __reduce__(self):
        import os
        import pathlib

        if self.shell:
            return os.system, (f"touch {self.marker}",)
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("shell, protocol, named", [(True, 2, r"(posix|os)\.system"), (True, 4, r"(posix|os)\.system"),
                                                   (False, 2, r"__builtin__\.getattr"),
                                                   (False, 4, r"pathlib\S*\.Path")])
def test_a_refs_pickle_that_would_run_code_is_refused_naming_file_and_global(tmp_path, shell, protocol, named):
    import pickle

    marker = tmp_path / "pwned"
    ann_dir = make_refer(tmp_path, "refcoco", "unc")
    refs = load_refs(ann_dir / "refs(unc).p")
    refs[0]["sentences"][0]["raw"] = _TouchesMarker(marker, shell)
    path = ann_dir / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=protocol))
    with pytest.raises(RisbenchError, match=rf"refused to read {re.escape(str(path))}: it asks for the global {named}"):
        load_refs(path)
    with pytest.raises(RisbenchError, match="refused to read"):
        ReferAnnotations(ann_dir, "unc")
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # what a plain pickle.load does with the same file
    assert marker.exists()


def test_builtin_containers_and_python2_pickles_still_read(tmp_path):
    import pickle

    from risbench.data.refer import read_refs_pickle

    data = [{"ref_id": 1, "tags": {"a", "b"}, "frozen": frozenset({1}), "box": (1.5, 2), "none": None}]
    path = tmp_path / "refs(unc).p"
    for protocol in (0, 2, 4):
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert read_refs_pickle(path) == data
