"""ReferDataModule: the batch contract, splits, samplers, the blind control and bad input."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from risbench.data.datamodule import ReferDataModule
from risbench.data.tokenizers import build_tokenizer
from risbench.errors import MissingFileError, RisbenchError
from tests.fixtures import IMAGES, UNC_COUNTS, file_name, image_dir_of, make_refer, write_image


def _refcoco(root, tokenizer, **kwargs) -> ReferDataModule:
    options = dict(dataset="refcoco", split_by="unc", data_dir=root / "refer/refcoco",
                   image_dir=image_dir_of(root, "refcoco"), img_size=32, batch_size=2, tokenizer=tokenizer)
    return ReferDataModule(**{**options, **kwargs})


def _all(loader) -> list[dict]:
    return [b for b in loader if b is not None]


def test_batch_contract_on_synthref(tiny_synthref_dir):
    dm = ReferDataModule(dataset="synthref", data_dir=tiny_synthref_dir, img_size=48, batch_size=4)
    dm.prepare_data()
    dm.set_tokenizer(build_tokenizer("wordpiece", dm.tokenizer_dir, max_length=12))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["tokens"].shape == batch["attention_mask"].shape == (4, 12)
    assert batch["tokens"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["mask"].shape == (4, 1, 48, 48) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["valid_box"].tolist() == [[0, 0, 48, 48]] * 4 and batch["orig_size"].tolist() == [[32, 32]] * 4
    assert batch["num_words"].dtype == torch.long and len(batch["text"]) == len(batch["ref_id"]) == 4
    assert "orig_masks" not in batch
    val = next(iter(dm.val_dataloader()))
    assert val["orig_masks"][0].shape == (32, 32) and val["orig_masks"][0].dtype == torch.bool
    assert dm.test_split_names == ["val", "testA", "testB"]
    assert len(dm.test_dataloader()) == 3


def test_every_eval_pair_once_and_counts_per_split(refcoco_root, word_tokenizer):
    dm = _refcoco(refcoco_root, word_tokenizer)
    dm.setup()
    for split, (n_refs, n_sents, n_images) in UNC_COUNTS.items():
        assert (dm.stats["splits"][split]["referents"], dm.stats["splits"][split]["expressions"],
                dm.stats["splits"][split]["images"]) == (n_refs, n_sents, n_images)
    batches = _all(dm.split_dataloader("val"))
    assert sum(len(b["text"]) for b in batches) == UNC_COUNTS["val"][1]
    assert [tuple(m.shape) for b in batches for m in b["orig_masks"]] == [(40, 30)] * 3  # (H, W) of image 2


def test_letterbox_box_and_original_masks(refcoco_root, word_tokenizer):
    dm = _refcoco(refcoco_root, word_tokenizer, img_size=32, resize="letterbox")
    batch = _all(dm.split_dataloader("val"))[0]
    assert batch["valid_box"][0].tolist() == [0, 4, 32, 28]  # 30x40 (WxH) image -> 24x32 centred
    assert batch["mask"][0, 0, :, :4].sum() == 0


def test_one_per_ref_train_sampling(refcoco_root, word_tokenizer):
    dm = _refcoco(refcoco_root, word_tokenizer, train_sampling="one_per_ref", batch_size=1)
    assert len(dm.train_dataloader()) == UNC_COUNTS["train"][0]
    dm_all = _refcoco(refcoco_root, word_tokenizer, batch_size=1)
    assert len(dm_all.train_dataloader()) == UNC_COUNTS["train"][1]


def test_trainval_and_default_test_splits(refcoco_root, word_tokenizer):
    dm = _refcoco(refcoco_root, word_tokenizer, train_split="trainval", batch_size=1)
    assert dm.test_split_names == ["testA", "testB"]  # val is trained on
    assert len(dm.train_dataloader()) == UNC_COUNTS["train"][1] + UNC_COUNTS["val"][1]


def test_blind_text_tokenises_the_placeholder_only(refcoco_root, word_tokenizer):
    real = _all(_refcoco(refcoco_root, word_tokenizer).split_dataloader("val"))[0]
    blind = _all(_refcoco(refcoco_root, word_tokenizer, blind_text=True, blind_placeholder="object")
                 .split_dataloader("val"))[0]
    placeholder, _ = word_tokenizer(["object"] * len(blind["text"]))
    assert torch.equal(blind["tokens"], placeholder) and not torch.equal(real["tokens"], placeholder)
    assert blind["text"] == real["text"] and torch.equal(blind["num_words"], real["num_words"])


def test_max_samples_caps(refcoco_root, word_tokenizer):
    dm = _refcoco(refcoco_root, word_tokenizer, max_eval_samples=2, max_train_samples=1, batch_size=1)
    assert sum(len(b["text"]) for b in _all(dm.split_dataloader("val"))) == 2
    assert len(dm.train_dataloader()) == 1


def test_ranks_split_evaluation_exactly(refcoco_root, word_tokenizer, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setattr("risbench.data.samplers.world", lambda rank=rank: (2, rank))
        dm = _refcoco(refcoco_root, word_tokenizer, eval_batch_size=1)
        seen += [s for b in _all(dm.split_dataloader("val")) for s in b["sent_id"]]
    assert sorted(seen) == [3, 4, 5]


def test_empty_expression_becomes_placeholder_and_is_counted(refcoco_root, word_tokenizer):
    path = refcoco_root / "refer/refcoco/refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    refs[2]["sentences"][1]["raw"] = "   "
    path.write_bytes(pickle.dumps(refs))
    dm = _refcoco(refcoco_root, word_tokenizer)
    with pytest.warns(UserWarning, match="empty expression.*sent_id 4"):
        dm.setup("validate")
    texts = [t for b in _all(dm.split_dataloader("val")) for t in b["text"]]
    assert texts[1] == "object" and dm.stats["empty_expressions"] == 1


def test_zero_area_mask_is_kept_and_counted(refcoco_root, word_tokenizer):
    import json

    path = refcoco_root / "refer/refcoco/instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][2]["segmentation"] = []  # ann 3 = the val referent
    path.write_text(json.dumps(instances))
    dm = _refcoco(refcoco_root, word_tokenizer)
    batches = _all(dm.split_dataloader("val"))
    assert dm.stats["zero_area_masks"] == 1
    assert all(b["mask"].sum() == 0 and not any(m.any() for m in b["orig_masks"]) for b in batches)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA"])
def test_grayscale_cmyk_rgba_images_load_as_rgb(refcoco_root, word_tokenizer, mode):
    path = image_dir_of(refcoco_root, "refcoco") / file_name("refcoco", 2)
    fmt = "PNG" if mode == "RGBA" else "JPEG"  # the name stays .jpg: the loader goes by content
    write_image(path, IMAGES[2], mode=mode, fmt=fmt)
    batch = _all(_refcoco(refcoco_root, word_tokenizer).split_dataloader("val"))[0]
    assert batch["image"].shape == (2, 3, 32, 32)


def test_missing_image_fails_setup_naming_it(refcoco_root, word_tokenizer):
    missing = image_dir_of(refcoco_root, "refcoco") / file_name("refcoco", 2)
    missing.unlink()
    with pytest.raises(RisbenchError, match=f"{missing.name}[\\s\\S]*skip_corrupt"):
        _refcoco(refcoco_root, word_tokenizer).setup("validate")


def test_skip_corrupt_skips_and_counts(refcoco_root, word_tokenizer):
    image_dir = image_dir_of(refcoco_root, "refcoco")
    (image_dir / file_name("refcoco", 2)).unlink()  # val
    (image_dir / file_name("refcoco", 3)).write_bytes(b"garbage")  # testA + testB
    dm = _refcoco(refcoco_root, word_tokenizer, skip_corrupt=True)
    with pytest.warns(UserWarning, match="skipping 1 unusable image"):
        dm.setup()
    stats = dm.stats
    assert stats["skipped_images"] == 3 and stats["skipped_samples"] == 3 + 1 + 2
    assert len(stats["skipped_files"]) == 2 and stats["splits"]["train"]["skipped_images"] == 0
    assert _all(dm.split_dataloader("val")) == []


def test_image_that_fails_only_when_decoded(refcoco_root, word_tokenizer):
    path = image_dir_of(refcoco_root, "refcoco") / file_name("refcoco", 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels truncated
    with pytest.raises(RisbenchError, match=path.name):
        _all(_refcoco(refcoco_root, word_tokenizer).split_dataloader("val"))
    dm = _refcoco(refcoco_root, word_tokenizer, skip_corrupt=True, eval_batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (batch,) = list(dm.split_dataloader("val"))  # every sample of the batch dropped: only the record
    assert any(path.name in str(w.message) for w in caught)
    records = list(batch["skipped"])
    assert sorted(batch) == ["skipped"] and dm.on_before_batch_transfer(batch, 0) is None
    assert dm.on_before_batch_transfer({"skipped": records}, 0) is None  # a second epoch: counted once
    stats = dm.stats
    assert stats["skipped_samples"] == 3 and stats["skipped_by_kind"] == {"truncated": 3}
    assert stats["splits"]["val"]["skipped_by_kind"] == {"truncated": 3}
    assert stats["skipped_files"] == [f"{path} (truncated)"]


def test_image_size_disagreeing_with_annotations(refcoco_root, word_tokenizer):
    write_image(image_dir_of(refcoco_root, "refcoco") / file_name("refcoco", 2), (31, 40))
    with pytest.raises(RisbenchError, match="31x40 but the annotations say 30x40"):
        _all(_refcoco(refcoco_root, word_tokenizer).split_dataloader("val"))


def test_missing_annotations_and_image_dir(tmp_path, word_tokenizer):
    dm = _refcoco(tmp_path, word_tokenizer)
    with pytest.raises(MissingFileError, match=r"refer/refcoco/refs\(unc\)\.p[\s\S]*how to fix"):
        dm.prepare_data()
    make_refer(tmp_path, "refcoco")
    dm = _refcoco(tmp_path, word_tokenizer, image_dir=tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="nowhere[\\s\\S]*train2014"):
        dm.prepare_data()


def test_bad_options_and_missing_tokenizer(refcoco_root):
    with pytest.raises(RisbenchError, match="split schemes"):
        ReferDataModule(dataset="refcoco+", split_by="google")
    with pytest.raises(RisbenchError, match="train_sampling"):
        ReferDataModule(train_sampling="some")
    with pytest.raises(RisbenchError, match="set_tokenizer"):
        _refcoco(refcoco_root, None).train_dataloader()


def test_python2_refs_through_the_datamodule(tmp_path, word_tokenizer):
    make_refer(tmp_path, "refclef", "berkeley", py2_pickle=True)
    dm = ReferDataModule(dataset="refclef", split_by="berkeley", data_dir=tmp_path / "refer/refclef",
                         image_dir=image_dir_of(tmp_path, "refclef"), img_size=32, tokenizer=word_tokenizer)
    assert dm.test_split_names == ["val", "test"]
    texts = [t for b in _all(dm.split_dataloader("test")) for t in b["text"]]
    assert "caf\xe9 square" in texts  # the latin-1 sentence survived
