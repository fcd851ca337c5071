import pytest

from risbench.bench.model import main, run_variant

TINY_RESTR = ["model=restr", "scale=tiny", "data=synthref", "tokenizer.vocab_size=64"]


@pytest.mark.parametrize("variant", ["reference", "risbench", "fp32"])
def test_each_variant_times_forward_and_train_step(variant):
    row = run_variant(variant, TINY_RESTR, batch_size=4, repeats=1, expressions_per_image=2)
    assert row["variant"] == variant and row["batch_size"] == 4 and row["img_size"] == 48
    assert set(row) >= {"forward_ms", "train_step_ms", "peak_memory_mib", "memory_kind"}


@pytest.mark.parametrize("option", ["bench.expressions_per_image=0", "bench.batch_size=two"])
def test_bad_bench_option_is_one_line_error(option):
    with pytest.raises(SystemExit, match=f"{option} must be a whole number >= 1"):
        main([option])


def test_unknown_variant_is_one_line_error():
    with pytest.raises(SystemExit, match="bench.variants=fp16 must be a comma list of"):
        main(["bench.variants=fp16"])
