"""Text normalization and WER (checked against jiwer, a test-only reference)."""

import random

import pytest

from nanoaudio.text import edit_distance, normalize_text, wer

jiwer = pytest.importorskip("jiwer")


@pytest.mark.parametrize("raw, expected", [
    ("HELLO, World!", "hello world"),
    ("DON'T stop", "don't stop"),  # LibriSpeech's apostrophes stay
    ("don\u2019t", "don't"),  # curly apostrophe folds to '
    ("rock 'n' roll", "rock n roll"),  # quotes are not apostrophes
    ("  well...   ok  ", "well ok"),
    ("caf\u00e9 \uff21\uff22", "caf\u00e9 ab"),  # accents stay, full-width folds (NFKC)
    ("a_b-c 3.5", "a b c 3 5"),
    ("", ""),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalization_is_idempotent():
    for s in ["It's 5 o'clock, MR. SMITH!", "'quoted' -- text"]:
        assert normalize_text(normalize_text(s)) == normalize_text(s)


def test_wer_matches_jiwer_on_random_strings():
    rng = random.Random(0)
    words = "a b c d e f".split()
    for _ in range(200):
        n = rng.randint(1, 4)
        refs = [" ".join(rng.choices(words, k=rng.randint(1, 9))) for _ in range(n)]
        hyps = [" ".join(rng.choices(words, k=rng.randint(0, 9))) for _ in range(n)]
        assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)


def test_edit_distance_cases():
    assert edit_distance([], []) == 0
    assert edit_distance("a b c".split(), []) == 3
    assert edit_distance([], "a b".split()) == 2
    assert edit_distance("a b c".split(), "a x c d".split()) == 2


def test_wer_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no words"):
        wer([""], ["a"])
