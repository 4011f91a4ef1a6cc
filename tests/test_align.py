"""The CTC forced aligner (nanoaudio/align.py) against brute force on cases small enough to enumerate.

    python -m pytest -q tests/test_align.py
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nanoaudio.align import BOUNDARY, CTC_LAG_SECONDS, no_speech_prob, viterbi, word_times
from nanoaudio.model import CTC_VOCAB, ctc_targets


def collapse(path, blank=0):
    """A frame-level labeling -> the labels it stands for: merge repeats, drop blanks."""
    return [k for i, k in enumerate(path) if k != blank and (i == 0 or path[i - 1] != k)]


def brute_force(log_probs, target):
    """max over every labeling of the F frames (V ** F of them) that collapses to target -> (score, labeling)."""
    F_, V = log_probs.shape
    best = (-math.inf, None)
    for path in itertools.product(range(V), repeat=F_):
        if collapse(list(path)) == target:
            score = sum(log_probs[f, k].item() for f, k in enumerate(path))
            best = max(best, (score, path), key=lambda b: b[0])
    return best


CASES = [  # (frames, vocabulary incl. blank 0, target): repeats, a length-1 target, a tight fit
    (5, 3, [1, 2]), (6, 3, [1, 1]), (4, 3, [2]), (6, 4, [1, 2, 1]), (3, 3, [1, 1]), (7, 3, [2, 2, 1]),
    (5, 4, [3, 3, 3]), (1, 3, [2]),
]


@pytest.mark.parametrize("frames,vocab,target", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_viterbi_equals_the_best_labeling_found_by_brute_force(frames, vocab, target, seed):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(frames, vocab, generator=g).mul(2).log_softmax(-1)  # peaky, like a trained head
    best, labeling = brute_force(log_probs, target)
    states, score = viterbi(log_probs, target)
    assert score == pytest.approx(best, abs=1e-5)
    # the path is a labeling: state s holds blank (even s) or target[(s - 1) // 2]
    path = [0 if s % 2 == 0 else target[(s - 1) // 2] for s in states.tolist()]
    assert collapse(path) == target
    assert sum(log_probs[f, k].item() for f, k in enumerate(path)) == pytest.approx(score, abs=1e-5)
    # one path is never more probable than all of them: -ctc_loss sums over every path
    nll = F.ctc_loss(log_probs[:, None], torch.tensor([target]), [frames], [len(target)], blank=0,
                     reduction="sum")
    assert score <= -nll.item() + 1e-5


@pytest.mark.parametrize("frames,target", [(2, [1, 1]), (1, [1, 2]), (3, [1, 1, 1]), (0, [1])])
def test_no_path_when_the_frames_are_too_few(frames, target):
    # "1 1" needs a blank between its two labels: 3 frames; "1 2" needs 2
    assert viterbi(torch.zeros(frames, 3).log_softmax(-1), target) is None


def peaks(labels, frames, hit=0.9):
    """Log-probabilities where frame f emits labels[f] (a CTC_VOCAB character, or "-" for blank) with prob. hit."""
    V = len(CTC_VOCAB)
    p = torch.full((frames, V), (1 - hit) / (V - 1))
    for f, c in enumerate(labels):
        p[f, 0 if c == "-" else CTC_VOCAB.index(c)] = hit
    for f in range(len(labels), frames):
        p[f, 0] = hit
    return p.log()


def test_word_times_come_from_the_frames_of_each_word():
    # frames: 0-1 blank, "ONE" on 2-4, "|" on 6, "TWO" on 10-12 (TT: a repeat held two frames), blanks after
    lp = peaks("--ONE-|---TTWO-----", 20)
    words = word_times(lp, "one Two", offset=1.0)
    assert [w for w, *_ in words] == ["one", "Two"]  # the transcript's own words, not the normalized ones
    (_, s1, e1, p1), (_, s2, e2, p2) = words
    t = lambda frame: 1.0 + frame * 0.02 - CTC_LAG_SECONDS  # noqa: E731  (the window starts at 1 s)
    assert (s1, e1, s2, e2) == pytest.approx((t(2), t(5), t(10), t(14)))
    assert p1 == pytest.approx(0.9) and p2 == pytest.approx(0.9)
    assert ctc_targets("one two")[3] == BOUNDARY


def test_word_times_edge_cases():
    lp = peaks("-ONE-", 6)
    assert word_times(lp, "") == []
    assert word_times(lp, "one two three four") is None  # 17 labels in 6 frames: no path
    (w, s, e, p), (w2, s2, e2, p2) = word_times(lp, "one -")  # "-" normalizes to nothing: zero length, no score
    assert w2 == "-" and s2 == e2 == e and p2 == 0.0
    assert s >= 0.0  # the lag correction never moves a word before its window's start


def test_no_speech_prob_is_the_mean_blank_probability():
    assert no_speech_prob(peaks("------", 6)) == pytest.approx(0.9)
    assert no_speech_prob(peaks("ONE---", 6)) == pytest.approx(0.9 * 3 / 6 + 0.1 / 31 * 3 / 6)
