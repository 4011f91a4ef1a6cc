"""Word timestamps by CTC forced alignment: which encoder frames hold which word of a transcript.

The encoder's CTC head gives, for each 20 ms frame, a distribution over 32 characters plus blank. A transcript
("three one" -> T H R E E | O N E) can be laid over the frames in many ways: each frame emits a character or a
blank, repeats merge, blanks vanish ("TT-HH-R-EE-E..." collapses to "THREE"). `viterbi` finds the single most
probable such path, with the standard trick of the blank-extended label sequence:

    labels  T  H  R  E  E  |  O  N  E          (L = 9)
    states  - T - H - R - E - E - | - O - N - E -    (2L + 1: a blank before, between and after every label)

A path starts in state 0 or 1, ends in state 2L or 2L - 1, and moves each frame by 0 (stay), 1 (next state) or 2
(skip a blank, allowed only between two *different* labels: "E E" needs a blank between them, or it collapses to
one E). The dynamic program is vectorized over the 2L + 1 states and loops over the F frames: O(F L) time.

Then `word_times`: a word's frames run from its first character's first frame to its last character's last;
"|" frames belong to no word; times are frame x hop / 16000 plus the window's offset, moved earlier by
CTC_LAG_SECONDS (the head fires a little after the sound starts: measured below). A word's probability is the
mean, over the frames where the path emits its characters, of their probability: near 0 for a word the decoder
invented where the head hears nothing. No path (fewer frames than the transcript needs) -> None, and
decoding.py falls back to the window's times.
References: Graves et al. 2006 (CTC); torchaudio's forced_align (the same recursion, in C++/CUDA).
Legend: F frames, V CTC vocabulary (32), L transcript labels, N = 2L + 1 states.
"""

import torch

from nanoaudio.audio import SAMPLE_RATE
from nanoaudio.model import CTC_VOCAB, ctc_targets
from nanoaudio.text import normalize_text

BLANK = 0  # <pad> in CTC_VOCAB: HuBERT's *-ls960-ft checkpoints use it as the CTC blank
BOUNDARY = CTC_VOCAB.index("|")  # the word boundary label
# The CTC head emits a character a little after its sound begins. Measured on dev sentences (seeds 500-529, never
# the tests' or the held-out report's; `python tests/bench/measure_words.py timestamps --seeds 500 30 --no-lag`),
# bundled model, 8 beams, espeak-ng's word events as the truth: start error median +29 ms, mean +28 ms (185 words
# it got right; the long file of the same sentences: +29 / +30 ms). So every time moves 29 ms earlier. The model
# bundled since, trained with non-speech too, measured the same: +29 / +27 ms (205 words; long file +29 / +28).
CTC_LAG_SECONDS = 0.029


def viterbi(log_probs: torch.Tensor, target: list[int], blank: int = BLANK):
    """log_probs (F, V), target L label ids (no blanks) -> (states (F,) long, score float): the most probable
    frame-level path that collapses to `target`, as indices into the blank-extended sequence (state s holds
    label target[(s - 1) // 2] when s is odd, blank when even), and its log-probability. None if no path exists."""
    F_, L = len(log_probs), len(target)
    N = 2 * L + 1
    ext = torch.full((N,), blank, dtype=torch.long)
    ext[1::2] = torch.tensor(target, dtype=torch.long)
    # a skip (s-2 -> s) is allowed into a label state whose label differs from the label two states back
    can_skip = torch.zeros(N, dtype=torch.bool)
    can_skip[3::2] = ext[3::2] != ext[1:-2:2]
    emit = log_probs.float()[:, ext]  # (F, N) log-probability of each state's symbol at each frame
    neg = torch.tensor(float("-inf"))
    score = torch.full((N,), float("-inf"))
    score[:2] = emit[0, :2] if F_ else neg  # start in the leading blank or on the first label
    back = torch.zeros(F_, N, dtype=torch.long)  # back[f, s]: how many states the path moved into s at frame f
    for f in range(1, F_):
        stay = score
        step = torch.cat([neg[None], score[:-1]])  # (N,) from s - 1
        skip = torch.where(can_skip, torch.cat([neg.expand(2), score[:-2]]), neg)  # (N,) from s - 2
        best, move = torch.stack([stay, step, skip]).max(0)  # (N,), (N,) 0 / 1 / 2
        score, back[f] = best + emit[f], move
    ends = [N - 1] + ([N - 2] if L else [])
    end = max(ends, key=lambda s: score[s].item()) if F_ else None
    if end is None or score[end] == float("-inf"):
        return None
    states = torch.empty(F_, dtype=torch.long)
    s = end
    for f in range(F_ - 1, -1, -1):  # walk the moves back from the end
        states[f] = s
        s -= int(back[f, s])
    return states, score[end].item()


def word_times(log_probs: torch.Tensor, text: str, offset: float = 0.0, hop: int = 320):
    """log_probs (F, V) of one window, its transcript `text` -> [(word, start, end, probability)] in seconds from
    the file's start (offset: the window's start), one per whitespace word of `text`; None if no path exists.

    Each word is aligned through normalize_text, as the CTC head was trained ("Hello," -> HELLO); a word that
    normalizes to nothing (a lone "-") gets a zero-length time where the previous one ended."""
    frame_s = hop / SAMPLE_RATE
    words = text.split()
    chars = [ctc_targets(normalize_text(w).replace(" ", "|")) for w in words]  # per word, its label ids
    target, spans = [], []  # spans: per word, [first, last) index of its labels in target
    for c in chars:
        if c and target:
            target.append(BOUNDARY)
        spans.append((len(target), len(target) + len(c)))
        target += c
    if not target:
        return [] if not words else None
    path = viterbi(log_probs, target)
    if path is None:
        return None
    states, _ = path
    label = torch.where(states % 2 == 1, (states - 1) // 2, -1)  # (F,) index into target, -1 on blank frames
    chosen = log_probs.float().gather(1, torch.where(states % 2 == 1, torch.tensor(target)[label.clamp(min=0)],
                                                     BLANK)[:, None])[:, 0].exp()  # (F,) path's probability
    out, prev_end = [], offset
    for w, (a, b) in zip(words, spans):
        frames = ((label >= a) & (label < b)).nonzero()[:, 0]
        if b == a or not len(frames):
            out.append((w, prev_end, prev_end, 0.0))
            continue
        f0, f1 = int(frames[0]), int(frames[-1]) + 1
        start = max(offset, offset + f0 * frame_s - CTC_LAG_SECONDS)
        end = max(start, offset + f1 * frame_s - CTC_LAG_SECONDS)
        # the probability of its characters where the path emits them: blank frames inside a word say nothing
        # about it (a word the decoder invented in silence is all blanks and a few unlikely characters)
        out.append((w, round(start, 3), round(end, 3), round(chosen[frames].mean().item(), 4)))
        prev_end = out[-1][2]
    return out


def no_speech_prob(log_probs: torch.Tensor) -> float:
    """log_probs (F, V) of one window -> the mean probability of blank over its frames: near 1 where the CTC head
    hears no character at all (silence, noise, music), lower where it hears speech (see decoding.py's
    NO_SPEECH_THRESHOLD for how it separates the two)."""
    return log_probs[:, BLANK].float().exp().mean().item() if len(log_probs) else 1.0
