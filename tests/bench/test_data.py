"""`python -m risbench.bench data`: bad batch sizes are one message; the header names the batches timed."""

from __future__ import annotations

import re

import pytest

from risbench.bench.data import main
from tests.fixtures import TINY_SYNTHREF


def tiny(data_root) -> list[str]:
    return [f"paths.data_dir={data_root}", *[f"data.synthref.{k}={v}" for k, v in TINY_SYNTHREF.items()],
            "data.img_size=32"]


@pytest.mark.parametrize("batch_size, message", [
    ("0", "data.batch_size must be a whole number >= 1, got 0"),
    ("1000", "nothing left to time after the first"),  # more than the split: 0.0 samples/s before
])
def test_a_batch_size_with_nothing_to_time_is_one_message(tiny_synthref_dir, capsys, batch_size, message):
    assert main([*tiny(tiny_synthref_dir.parent), f"data.batch_size={batch_size}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_the_header_names_the_batches_actually_timed(tiny_synthref_dir, capsys):
    assert main([*tiny(tiny_synthref_dir.parent), "data.batch_size=8"]) == 0
    out = capsys.readouterr().out
    timed = re.search(r"batch 8, (\d+) batches timed after the first", out)
    assert timed and 1 <= int(timed[1]) < 20 and out.count("samples/s") == 3, out  # the split has < 21 batches
