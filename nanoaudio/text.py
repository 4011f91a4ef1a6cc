"""Text normalization and word error rate: one definition, used the same way for training labels and for WER.

normalize_text(s): what the model is asked to write and what WER compares.
    1. Unicode NFKC, then lowercase            "HELLO" == "Hello", full-width forms fold
    2. curly apostrophes -> '                  LibriSpeech writes "DON'T"; users type "don’t"
    3. every other non-letter/digit -> space    punctuation carries no words: "well, ok." -> "well ok"
       apostrophes stay only inside words       "don't" stays; "rock 'n' roll" -> "rock n roll"
    4. collapse runs of spaces
No number verbalization: digits stay digits, words stay words (the tiny preset writes digits as words).

wer(references, hypotheses): corpus-level word error rate, sum of word-level Levenshtein edits (substitutions +
deletions + insertions) over the total number of reference words, as jiwer and the Hugging Face `evaluate` WER
compute it (tests check against jiwer). Inputs are compared as given: normalize first.
"""

import re
import unicodedata

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_WORD = re.compile(r"[^\w']+|_")  # \w is Unicode-aware: accented letters and other scripts stay
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")  # an apostrophe not between two word characters


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    text = _NOT_WORD.sub(" ", text)
    text = _LOOSE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists, one row of the DP table at a time: O(len(hyp)) memory."""
    row = list(range(len(hyp) + 1))  # distance from ref[:0] to every prefix of hyp
    for i, r in enumerate(ref, 1):
        diag, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diag, row[j] = row[j], min(row[j] + 1,  # delete r
                                        row[j - 1] + 1,  # insert h
                                        diag + (r != h))  # substitute (free if equal)
    return row[-1]


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: total word edits / total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError(f"wer: {len(references)} references but {len(hypotheses)} hypotheses")
    edits = sum(edit_distance(r.split(), h.split()) for r, h in zip(references, hypotheses))
    words = sum(len(r.split()) for r in references)
    if words == 0:
        raise ValueError("wer: the references hold no words")
    return edits / words
