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
