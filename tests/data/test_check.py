"""`python -m risbench.data check` on good and broken installs, and every data config instantiating.

The checks compose a minimal config tree (the project's conf/data and conf/paths, plus a root config
holding ``seed``), so they exercise the data configs without the model configs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from risbench.config import CONF_DIR
from risbench.data.check import PUBLISHED, compose_config, main
from risbench.data.datamodule import ReferDataModule
from tests.fixtures import TINY_SYNTHREF, file_name, image_dir_of, make_refer, make_tiny_synthref

DATA_CONFIGS = ["synthref", "refcoco", "refcoco_plus", "refcocog_umd", "refcocog_google", "referit"]


@pytest.fixture
def tmp_conf(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR / "data", conf / "data")
    shutil.copytree(CONF_DIR / "paths", conf / "paths")
    (conf / "config.yaml").write_text("defaults:\n  - _self_\n  - paths: default\n  - data: synthref\nseed: 1\n")
    return conf


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_instantiates(tmp_conf, tmp_path, name):
    cfg = compose_config([f"data={name}", f"paths.data_dir={tmp_path}"], tmp_conf)
    dm = instantiate(cfg.data, _recursive_=False)
    assert isinstance(dm, ReferDataModule) and str(dm.data_dir).startswith(str(tmp_path))
    assert dm.seed == 1 and dm.tokenizer is None


def test_good_install_passes(tmp_conf, tmp_path, capsys):
    make_refer(tmp_path, "refclef", "berkeley")
    assert main(["data=referit", f"paths.data_dir={tmp_path}"], tmp_conf) == 0
    report = capsys.readouterr().out
    assert "images checked: 3, missing or unreadable: 0" in report and report.rstrip().endswith("OK")


def test_synthref_install_passes(tmp_conf, tmp_path, capsys):
    make_tiny_synthref(tmp_path)
    overrides = [f"data.synthref.{k}={v}" for k, v in TINY_SYNTHREF.items()]
    assert main(["data=synthref", f"paths.data_dir={tmp_path}", *overrides], tmp_conf) == 0
    assert "testA" in capsys.readouterr().out


def test_missing_and_unreadable_images_fail(tmp_conf, tmp_path, capsys):
    make_refer(tmp_path, "refclef", "berkeley")
    image_dir = image_dir_of(tmp_path, "refclef")
    (image_dir / file_name("refclef", 1)).unlink()
    (image_dir / file_name("refclef", 2)).write_bytes(b"garbage")
    assert main(["data=referit", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    report = capsys.readouterr().out
    assert f"missing: {image_dir / file_name('refclef', 1)}" in report
    assert f"unreadable: {image_dir / file_name('refclef', 2)}" in report and "FAILED" in report


def test_counts_compared_with_published(tmp_conf, tmp_path, capsys):
    make_refer(tmp_path, "refcoco", "unc")
    assert main(["data=refcoco", f"paths.data_dir={tmp_path}"], tmp_conf) == 1
    report = capsys.readouterr().out
    assert "2 != 42404  WRONG" in report and "1 != 3811  WRONG" in report
    assert PUBLISHED[("refcocog", "umd")]["test"][0] == 5023


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
