"""Prompt banks: the shipped bank parses, the format's rules hold, and every mistake names the line and the fix."""
from __future__ import annotations

import pytest

from stylemamba.prompt_bank import SHIPPED_BANK, PromptBankError, load_prompt_bank, parse_prompt_bank


def test_the_shipped_bank_has_a_few_hundred_distinct_prompts_in_sections():
    bank = load_prompt_bank()
    assert 250 <= len(bank) <= 600
    assert {"medium", "movement", "technique", "mood", "colour", "texture"} <= set(bank.tags)
    assert all(p.tags for p in bank.prompts)  # every shipped prompt sits in a section
    assert len({t.lower() for t in bank.texts}) == len(bank)
    assert all(3 <= len(t) <= 120 for t in bank.texts)


def test_format_sections_weights_tags_comments():
    bank = parse_prompt_bank("""
        # comment
        [ink]
        a sumi-e   painting
        a pen drawing | weight=2.5 | tags=line,quick
        [  ]
        a photo with a #hashtag | tags=x
    """, "mine.txt")
    assert bank.texts == ["a sumi-e painting", "a pen drawing", "a photo with a #hashtag"]
    assert bank.weights == [1.0, 2.5, 1.0]
    assert [p.tags for p in bank.prompts] == [("ink",), ("ink", "line", "quick"), ("x",)]
    assert [p.line for p in bank.prompts] == [4, 5, 7]
    assert bank.with_tags(["quick"]).texts == ["a pen drawing"]
    assert bank.without(["A SUMI-E painting"]).texts == ["a pen drawing", "a photo with a #hashtag"]
    with pytest.raises(PromptBankError, match="leaves none of the bank's 3 to train on; hold out fewer"):
        bank.without(bank.texts)
    again = parse_prompt_bank(bank.to_text())
    assert [(p.text, p.weight, p.tags) for p in again.prompts] == [(p.text, p.weight, p.tags) for p in bank.prompts]


@pytest.mark.parametrize("text, message", [
    ("", "has no prompts"),
    ("# only a comment\n\n", "has no prompts"),
    ("a\nb\nA \n", "line 3: prompt 'A' repeats line 1"),
    ("a | weight=two", "line 1: weight='two' is not a number"),
    ("a | weight=0", "must be a finite number > 0"),
    ("a | weight=nan", "must be a finite number > 0"),
    ("a | colour=red", "unknown field 'colour=red'"),
    ("a | weight=1 | weight=2", "weight= is given twice"),
    ("a | tags=good tag", "tags are comma-separated names"),
    ("[two words]\na", "tags are comma-separated"),
    ("a|weight=2", "separated by ' | '"),
    (" | weight=2", "no prompt before"),
])
def test_mistakes_name_the_line_and_the_fix(text, message):
    with pytest.raises(PromptBankError, match=message) as info:
        parse_prompt_bank(text, "bank.txt")
    assert str(info.value).startswith("bank.txt")


def test_files_missing_folders_non_utf8_and_unknown_tags(tmp_path):
    with pytest.raises(FileNotFoundError, match="shipped bank of"):
        load_prompt_bank(tmp_path / "nope.txt")
    with pytest.raises(PromptBankError, match="is a folder"):
        load_prompt_bank(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("une aquarelle très douce\n".encode("latin-1"))
    with pytest.raises(PromptBankError, match="not UTF-8"):
        load_prompt_bank(bad)
    good = tmp_path / "bank.txt"
    good.write_text("\ufeff[ink]\na pen drawing\n", encoding="utf-8")  # a BOM (Windows editors) is fine
    assert load_prompt_bank(good).texts == ["a pen drawing"]
    with pytest.raises(PromptBankError, match="tags in this bank: ink"):
        load_prompt_bank(good, tags=["oil"])
    assert SHIPPED_BANK.is_file()


def test_holding_out_a_prompt_outside_the_tag_selection_says_so():
    """The prompt is in the bank file but not among the --tags chosen: 'not in the bank' (lowercased) misled."""
    bank = parse_prompt_bank("[ink]\na Pen drawing\n[oil]\nan oil painting\n", "bank.txt").with_tags(["oil"])
    with pytest.raises(PromptBankError, match=r"bank.txt \(tags oil\): cannot hold out \['a Pen drawing'\]: not "
                                              r"among its prompts"):
        bank.without(["a Pen drawing"])


def test_tags_given_as_one_string_are_read_as_comma_separated_names():
    """load_prompt_bank(tags='medium') looked for the tags 'm', 'e', 'd', 'i', 'u' (a string is a sequence of
    letters)."""
    medium = load_prompt_bank(tags=["medium"])
    assert load_prompt_bank(tags="medium").texts == medium.texts
    assert len(load_prompt_bank(tags="medium, mood")) == len(load_prompt_bank(tags=["medium", "mood"]))


def test_one_prompt_held_out_as_a_string():
    """bank.without('watercolor') tried to hold out the prompts 'w', 'a', 't' ... (a string read as its letters)."""
    bank = parse_prompt_bank("oil painting\nwatercolor\n", "bank.txt")
    assert bank.without("watercolor").texts == ["oil painting"]
