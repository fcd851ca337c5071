"""`python -m risbench.data check` on good and broken installs, both layouts, and every data config instantiating.

Most checks compose a minimal config tree (the project's conf/data and conf/paths, plus a root config
holding ``seed``), so they exercise the data configs without the model configs.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from risbench.config import CONF_DIR
from risbench.data.check import PUBLISHED, compose_config, main
from risbench.data.datamodule import SPLITS, ReferDataModule
from risbench.data.synthref import synthref_dir
from tests.fixtures import (TINY_SYNTHREF, ann_dir_of, file_name, image_dir_of, make_refer, make_tiny_synthref,
                            write_words)

DATA_CONFIGS = ["synthref", "refcoco", "refcoco_plus", "refcocog_umd", "refcocog_google", "referit"]


@pytest.fixture
def tmp_conf(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR / "data", conf / "data")
    shutil.copytree(CONF_DIR / "paths", conf / "paths")
    (conf / "config.yaml").write_text("defaults:\n  - _self_\n  - paths: default\n  - data: synthref\nseed: 1\n")
    return conf


def _digest(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_instantiates(tmp_conf, tmp_path, name):
    cfg = compose_config([f"data={name}", f"paths.data_dir={tmp_path}"], tmp_conf)
    dm = instantiate(cfg.data, _recursive_=False)
    assert isinstance(dm, ReferDataModule) and str(dm.data_dir).startswith(str(tmp_path))
    assert dm.seed == 1 and dm.tokenizer is None


@pytest.mark.parametrize("name, dataset, images", [("refcoco", "refcoco", "images/mscoco/images/train2014"),
                                                   ("referit", "refclef", "images/saiapr_tc-12")])
def test_refer_root_reads_the_refer_toolkit_layout(tmp_conf, tmp_path, name, dataset, images):
    cfg = compose_config([f"data={name}", f"paths.data_dir={tmp_path}/own", f"paths.refer_root={tmp_path}/refer"],
                         tmp_conf)
    assert (cfg.data.data_dir, cfg.data.image_dir) == (f"{tmp_path}/refer/{dataset}", f"{tmp_path}/refer/{images}")
    own = compose_config([f"data={name}", f"paths.data_dir={tmp_path}/own"], tmp_conf)
    assert own.data.data_dir == f"{tmp_path}/own/refer/{dataset}"


def test_synthref_folder_and_tiny_tokenizer_follow_the_parameters(tmp_path):
    from risbench.data.synthref import SynthRefParams
    from tests.helpers import compose_config as compose_project

    default = compose_project(["data=synthref", f"paths.data_dir={tmp_path}"])
    assert default.data.data_dir == str(tmp_path / "synthref")
    assert default.tokenizer.path == str(tmp_path / "synthref" / "tokenizer")
    other = compose_project(["data=synthref", f"paths.data_dir={tmp_path}", "data.synthref.seed=3"])
    fingerprint = SynthRefParams.from_config({**default.data.synthref, "seed": 3}).fingerprint()
    assert other.data.data_dir == str(tmp_path / f"synthref-{fingerprint}") == other.paths.synthref_dir
    assert other.data.image_dir == f"{other.data.data_dir}/images"
    assert other.tokenizer.path == f"{other.data.data_dir}/tokenizer"
    restr = compose_project(["model=restr", "data=synthref", f"paths.data_dir={tmp_path}", "data.synthref.seed=3"])
    assert restr.tokenizer.path == f"{other.data.data_dir}/tokenizer/words.txt"
    real = compose_project(["data=refcoco", f"paths.data_dir={tmp_path}"])  # a real dataset at tiny scale
    assert real.tokenizer.path == str(tmp_path / "synthref" / "tokenizer")


def test_published_counts_cover_every_split_scheme():
    real = {(d, s): splits for d, schemes in SPLITS.items() if d != "synthref" for s, splits in schemes.items()}
    assert set(PUBLISHED) == set(real)
    for key, splits in real.items():
        assert tuple(PUBLISHED[key]) == splits, key  # the dataset's own split order
    assert PUBLISHED[("refcocog", "umd")]["test"] == (5023, 9602, 2600)


def test_good_install_passes(tmp_conf, tmp_path, capsys):
    make_refer(tmp_path, "refclef", "berkeley")
    assert main(["data=referit", f"paths.data_dir={tmp_path}"], tmp_conf) == 0
    report = capsys.readouterr().out
    assert "layout: risbench's" in report and "images decoded in full" in report
    assert report.rstrip().endswith("OK")


def test_refer_toolkit_folder_passes_as_it_is(tmp_conf, tmp_path, capsys):
    root = tmp_path / "data"
    make_refer(root, "refcoco", "unc", layout="refer")
    before = _digest(root)
    main(["data=refcoco", f"paths.refer_root={root}"], tmp_conf)
    report = capsys.readouterr().out
    assert f"layout: the refer toolkit's data/ folder (paths.refer_root={root})" in report
    assert "missing: " not in report and "train          2  WRONG" not in report
    assert _digest(root) == before  # nothing moved or written


def test_a_refer_folder_given_as_data_dir_says_how_to_read_it(tmp_conf, tmp_path, capsys):
    make_refer(tmp_path, "refcoco", "unc", layout="refer")
    assert main(["data=refcoco", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    assert f"pass paths.refer_root={tmp_path}" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_a_truncated_image_fails_naming_the_file(tmp_conf, tmp_path, capsys, fmt):
    make_refer(tmp_path, "refclef", "berkeley")
    path = image_dir_of(tmp_path, "refclef") / file_name("refclef", 2)
    if fmt == "png":
        from PIL import Image

        Image.open(path).save(path, format="PNG")  # the name stays .jpg: readers go by content
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is intact: only a full decode sees it
    assert main(["data=referit", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    report = capsys.readouterr().out
    assert f"truncated: {path}" in report and "(val)" in report and "FAILED" in report
    assert main(["data=referit", f"paths.data_dir={tmp_path}", "--quick"], tmp_conf) == 0  # headers only


def test_missing_and_unreadable_images_fail(tmp_conf, tmp_path, capsys):
    make_refer(tmp_path, "refclef", "berkeley")
    image_dir = image_dir_of(tmp_path, "refclef")
    (image_dir / file_name("refclef", 1)).unlink()
    (image_dir / file_name("refclef", 2)).write_bytes(b"garbage")
    assert main(["data=referit", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    report = capsys.readouterr().out
    assert f"missing: {image_dir / file_name('refclef', 1)} (train)" in report
    assert f"unreadable: {image_dir / file_name('refclef', 2)}" in report and "FAILED" in report


def test_annotation_problems_are_listed_per_split(tmp_conf, tmp_path, capsys):
    ann_dir = make_refer(tmp_path, "refcoco", "unc")
    instances = json.loads((ann_dir / "instances.json").read_text())
    instances["annotations"][2]["segmentation"] = []  # ann 3: the val referent, zero area
    instances["annotations"] = [a for a in instances["annotations"] if a["id"] != 4]  # testA's referent
    (ann_dir / "instances.json").write_text(json.dumps(instances))
    refs = pickle.loads((ann_dir / "refs(unc).p").read_bytes())
    refs[4]["sentences"][0]["raw"] = "  "  # testB
    (ann_dir / "refs(unc).p").write_bytes(pickle.dumps(refs))
    assert main(["data=refcoco", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    report = capsys.readouterr().out
    assert "zero_area_mask: ref_id 2 (ann_id 3) (val)" in report
    assert "missing_annotation: ref_id 3 (ann_id 4, image_id 3 not in instances.json) (testA)" in report
    assert "empty_expression: ref_id 4, sent_id 7 (testB)" in report


def test_counts_compared_with_published(tmp_conf, tmp_path, capsys):
    make_refer(tmp_path, "refcoco", "unc")
    assert main(["data=refcoco", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    report = capsys.readouterr().out
    assert "2 != 42404  WRONG" in report and "1 != 3811  WRONG" in report


def test_referit_without_its_train_split_fails(tmp_conf, tmp_path, capsys):
    ann_dir = make_refer(tmp_path, "refclef", "berkeley")
    refs = [r for r in pickle.loads((ann_dir / "refs(berkeley).p").read_bytes()) if r["split"] != "train"]
    (ann_dir / "refs(berkeley).p").write_bytes(pickle.dumps(refs))
    assert main(["data=referit", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    report = capsys.readouterr().out
    assert "train    MISSING from refs(berkeley).p (a published split)" in report


def test_missing_splits_are_listed_in_the_dataset_order(tmp_conf, tmp_path, capsys):
    ann_dir = make_refer(tmp_path, "refclef", "unc")  # writes train, val, testA, testB; unc also has testC
    refs = [r for r in pickle.loads((ann_dir / "refs(unc).p").read_bytes()) if r["split"] != "val"]
    (ann_dir / "refs(unc).p").write_bytes(pickle.dumps(refs))
    assert main(["data=referit", "data.split_by=unc", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line.startswith("  ") and line.split() and line.split()[0] in SPLITS["refclef"]["unc"]][:5]
    assert rows == ["train", "val", "testA", "testB", "testC"]


def test_text_coverage_of_the_configured_tokenizer(tmp_path, capsys):
    make_refer(tmp_path, "refcoco", "unc")
    words = write_words(tmp_path / "words.txt")  # knows "the", "box", "left", ... not "tall", "middle"
    main(["data=refcoco", f"paths.data_dir={tmp_path}", "tokenizer.kind=glove", f"tokenizer.path={words}",
          "tokenizer.max_length=3", "tokenizer.vocab_size=null"])
    report = capsys.readouterr().out
    # val: "tall box", "the box", "box in the middle": 8 tokens, 3 unknown; one expression over 3 words
    assert "val                  3         8        3 ( 37.5%)            1 ( 33.3%)" in report
    assert "WARNING: val: 37.5% of the tokens are unknown" in report
    assert "WARNING: val: 33.3% of the expressions (1 of 3) are longer than tokenizer.max_length=3" in report


def test_synthref_install_passes_and_check_never_writes(tmp_conf, tmp_path, capsys):
    overrides = [f"data.synthref.{k}={v}" for k, v in TINY_SYNTHREF.items()]
    assert main(["data=synthref", f"paths.data_dir={tmp_path}", *overrides], tmp_conf) == 1  # not generated yet
    assert "only reads" in capsys.readouterr().out and list(tmp_path.iterdir()) == [tmp_path / "conf"]
    root = make_tiny_synthref(tmp_path)
    assert root == synthref_dir(tmp_path, TINY_SYNTHREF)
    before = _digest(tmp_path)
    assert main(["data=synthref", f"paths.data_dir={tmp_path}", *overrides], tmp_conf) == 0
    assert "testA" in capsys.readouterr().out
    # other parameters pointed at this very folder: refused, nothing deleted or written
    assert main(["data=synthref", f"paths.synthref_dir={root}", *overrides, "data.synthref.seed=5"], tmp_conf) == 1
    assert "other parameters" in capsys.readouterr().out
    assert _digest(tmp_path) == before


def test_missing_annotations_report_the_layout(tmp_conf, tmp_path, capsys):
    assert main(["data=refcocog_umd", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    report = capsys.readouterr().out
    assert f"{tmp_path}/refer/refcocog/refs(umd).p" in report and "how to fix" in report


def test_bad_override_is_a_usage_error(tmp_conf, capsys):
    assert main(["data=nonexistent"], tmp_conf) == 2
    assert "bad config" in capsys.readouterr().err


def test_module_entry_point_usage():
    result = subprocess.run([sys.executable, "-m", "risbench.data"], capture_output=True, text=True)
    assert result.returncode == 2 and "<check|vocab> data=" in result.stderr


def test_fixture_layouts(tmp_path):
    assert ann_dir_of(tmp_path, "refcoco", "refer") == tmp_path / "refcoco"
    assert image_dir_of(tmp_path, "refcoco", "refer") == tmp_path / "images/mscoco/images/train2014"
