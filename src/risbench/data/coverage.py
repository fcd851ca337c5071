"""How well a tokenizer covers a dataset's text: the share of unknown tokens and of cut expressions.

A model trained with one vocabulary and run on another dataset's text (synthref's tokenizer on RefCOCO,
say) may see most words as ``<unk>``, and expressions longer than ``tokenizer.max_length`` lose their end:
neither fails, so both are measured and reported, per split, at the start of training and evaluation, in
``python -m risbench.data check`` and in ``results.json`` (``text_coverage``).
"""

from __future__ import annotations


def text_coverage(datamodule, tokenizer, splits) -> dict[str, dict]:
    """split -> `Tokenizer.coverage` of its expressions (each split once, in the given order)."""
    return {split: tokenizer.coverage(datamodule.split_texts(split)) for split in dict.fromkeys(splits) if split}


def coverage_warnings(coverage: dict[str, dict], threshold: float) -> list[str]:
    """One line per split whose unknown-token or cut-expression share is above ``threshold``."""
    lines = []
    for split, c in coverage.items():
        if c["unknown_share"] > threshold:
            lines.append(f"{split}: {100 * c['unknown_share']:.1f}% of the tokens are unknown to the tokenizer "
                         f"({c['unknown_tokens']} of {c['tokens']}): the vocabulary does not fit this text "
                         "(a tokenizer trained on other data?)")
        if c["truncated_share"] > threshold:
            lines.append(f"{split}: {100 * c['truncated_share']:.1f}% of the expressions ({c['truncated']} of "
                         f"{c['expressions']}) are longer than tokenizer.max_length={c['max_length']} and are cut")
    return lines


def coverage_table(coverage: dict[str, dict]) -> list[str]:
    lines = [f"  {'split':<10}{'expressions':>12}{'tokens':>10}{'unknown':>18}{'cut by max_length':>22}"]
    for split, c in coverage.items():
        lines.append(f"  {split:<10}{c['expressions']:>12}{c['tokens']:>10}"
                     f"{c['unknown_tokens']:>9} ({100 * c['unknown_share']:5.1f}%)"
                     f"{c['truncated']:>13} ({100 * c['truncated_share']:5.1f}%)")
    return lines
