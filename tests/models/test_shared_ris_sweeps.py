"""Every Shared-RIS table as a Hydra sweep: the jobs are the paper's rows, and each sweep runs end to end at
``scale=tiny data=synthref debug=fast`` (one batch per loop) with a SentencePiece tokenizer trained here on
synthref's words (BEiT-3's fairseq ids: <s> 0, <pad> 1, </s> 2, <unk> 3)."""

from __future__ import annotations

import json
import random

import pytest

from risbench.data.synthref import ensure_synthref
from tests.fixtures import TINY_SYNTHREF
from tests.helpers import compose_config, run_on_synthref, sweep_jobs, sweep_results

# sweep -> (jobs at paper size, jobs at scale=tiny data=synthref: a dataset sweep collapses to synthref)
SWEEPS = {"shared_ris_table1": (4, 1), "shared_ris_table3": (4, 4), "shared_ris_table5": (4, 4),
          "shared_ris_table5_profile": (4, 4), "shared_ris_table7a": (4, 4), "shared_ris_table7b": (4, 4),
          "shared_ris_table8a": (3, 3), "shared_ris_table8b": (3, 3), "shared_ris_table9": (8, 2)}


def jobs_of(sweep: str) -> list:
    return [compose_config([f"experiment=ablation/{sweep}", *job]) for job in sweep_jobs(f"ablation/{sweep}")]


def test_sweep_grids_are_the_papers_rows():
    for sweep, (count, _) in SWEEPS.items():
        assert len(sweep_jobs(f"ablation/{sweep}")) == count, sweep
    rows = lambda sweep, pick: [pick(cfg) for cfg in jobs_of(sweep)]  # noqa: E731
    assert rows("shared_ris_table3", lambda c: (list(c.model.fpn.stages), c.model.decoder.num_layers)) == \
        [([], 0), ([3, 6, 9, 12], 0), ([], 1), ([3, 6, 9, 12], 1)]
    assert rows("shared_ris_table5", lambda c: c.model.decoder.type) == ["none", "cgformer", "dmmi", "shared"]
    assert rows("shared_ris_table7a", lambda c: list(c.model.fpn.stages)) == \
        [[], [6, 12], [4, 8, 12], [3, 6, 9, 12]]
    assert rows("shared_ris_table7b", lambda c: c.model.fpn.fusion) == ["none", "cross", "bidirectional", "self"]
    assert rows("shared_ris_table8a", lambda c: c.model.decoder.num_layers) == [1, 2, 3]
    assert rows("shared_ris_table8b", lambda c: c.model.decoder.fusion) == ["cross", "bidirectional", "self"]
    assert rows("shared_ris_table1", lambda c: c.data.dataset) == ["refcoco", "refcoco+", "refcocog", "refcocog"]
    assert {(c.model.encoder.size, c.data.dataset, c.data.split_by) for c in jobs_of("shared_ris_table9")} == \
        {(size, d, s) for size in ("base", "large") for d, s in
         (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"), ("refcocog", "google"))}
    # every ablation runs on RefCOCO+ with the paper's recipe
    for sweep in ("shared_ris_table3", "shared_ris_table5", "shared_ris_table7a", "shared_ris_table8b"):
        cfg = jobs_of(sweep)[0]
        assert (cfg.data.dataset, cfg.data.img_size, cfg.optim.optimizer.lr, cfg.trainer.gradient_clip_val) == \
            ("refcoco+", 480, 1e-4, 1.0)
    assert compose_config(["experiment=ablation/shared_ris_table5_profile"]).mode == "profile"


# the tests' small synthref at the 64 px of scale=tiny
SYNTHREF = {**TINY_SYNTHREF, "image_size": 64}


@pytest.fixture(scope="module")
def synthref_64(tmp_path_factory):
    return ensure_synthref(tmp_path_factory.mktemp("shared_ris_data") / "synthref", SYNTHREF)


@pytest.fixture(scope="module")
def synthref_spm(synthref_64):
    """A SentencePiece word model over synthref's vocabulary, standing in for beit3.spm."""
    import sentencepiece

    words = [w for w in (synthref_64 / "tokenizer" / "words.txt").read_text().split() if not w.startswith("<")]
    rng = random.Random(0)
    corpus = synthref_64.parent / "spm_corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=6)) for _ in range(400)) + "\n")
    prefix = synthref_64.parent / "synthref_spm"
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), model_type="word",
                                             vocab_size=len(words) + 3, hard_vocab_limit=False, minloglevel=2)
    return prefix.with_suffix(".model")


@pytest.mark.slow
@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_sweep_runs_at_tiny_scale(sweep, synthref_64, synthref_spm, tmp_path):
    profile = sweep.endswith("_profile")  # needs no tokenizer file (the paper's 64,010 ids)
    tokenizer = [] if profile else ["tokenizer.kind=sentencepiece", f"tokenizer.path={synthref_spm}"]
    run_on_synthref(["-m", f"experiment=ablation/{sweep}", "debug=fast", *tokenizer], synthref_64, SYNTHREF,
                    tmp_path, timeout=1200)
    results = sweep_results(tmp_path, sweep)
    assert len(results) == SWEEPS[sweep][1]
    for path in results:
        result = json.loads(path.read_text())
        assert result["experiment"] == sweep
        if profile:
            assert (path.parent / "profile.json").is_file()
        else:
            assert set(result["metrics"]) == {"val", "testA", "testB"}
            assert "paper/oIoU" in result["metrics"]["val"]
            config = (path.parent / ".hydra" / "config.yaml").read_text()
            assert "kind: sentencepiece" in config
