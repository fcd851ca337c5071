import pytest

from risbench.data.tokenizers import build_tokenizer
from risbench.data.vocab import main


def test_vocab_from_training_expressions_feeds_the_glove_tokenizer(tiny_synthref_dir, tmp_path, capsys):
    out = tmp_path / "words.txt"
    args = ["data=synthref", f"paths.synthref_dir={tiny_synthref_dir}", "data.synthref=null", f"out={out}"]
    assert main(args) == 0
    words = out.read_text().splitlines()
    assert words[:2] == ["<pad>", "<unk>"] and len(words) == len(set(words)) > 10
    tokenizer = build_tokenizer("glove", out, max_length=8)
    ids, mask = tokenizer(["the left circle", "zzzunseen"])
    assert ids[1, 0].item() == words.index("<unk>") and mask.sum().item() == 4
    assert main(args) == 2  # an existing vocabulary is never overwritten
    assert "exists already" in capsys.readouterr().err


@pytest.mark.parametrize("min_count", ["abc", "0", "-1", "1.5"])
def test_a_min_count_that_is_not_a_positive_whole_number_is_refused(min_count, tiny_synthref_dir, tmp_path, capsys):
    out = tmp_path / "words.txt"
    args = ["data=synthref", f"paths.synthref_dir={tiny_synthref_dir}", "data.synthref=null", f"out={out}"]
    assert main([*args, f"min_count={min_count}"]) == 2
    assert f"min_count='{min_count}' is not a whole number of at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_a_min_count_that_keeps_no_word_is_refused(tiny_synthref_dir, tmp_path, capsys):
    out = tmp_path / "words.txt"
    args = ["data=synthref", f"paths.synthref_dir={tiny_synthref_dir}", "data.synthref=null", f"out={out}"]
    assert main([*args, "min_count=1000000"]) == 2
    assert "lower min_count" in capsys.readouterr().err and not out.exists()


def test_an_out_path_that_cannot_be_written_is_one_message(tiny_synthref_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    out = blocker / "words.txt"
    args = ["data=synthref", f"paths.synthref_dir={tiny_synthref_dir}", "data.synthref=null", f"out={out}"]
    assert main(args) == 2
    assert f"out={out} cannot be written: {blocker} is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder\n"
