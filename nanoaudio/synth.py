"""Synthetic speech, offline: espeak-ng (the `espeakng-loader` wheel ships the library and its voices) via ctypes.

The tiny preset trains on it and the tests transcribe it, so it must be varied and reproducible:
    voices   every English accent below x every voice variant espeak-ng ships (~100: m1..m8, f1..f5, klatt, croak,
             whisper-ish robots...), drawn at random per utterance
    prosody  random speaking rate (words per minute) and pitch; optional white noise at a random SNR
    texts    digit strings ("three one four") and random word sequences from nanoaudio/assets/tiny_vocab.txt
    seed     the same seed gives the same texts, voices, rates, pitches and noise levels. The waveforms match
             only up to espeak-ng's own jitter: its wave generator keeps state between utterances (pitch
             flutter) and some voices draw noise internally, so two runs differ by a few samples, not in content

    python -m nanoaudio.synth "three one four" -o three.wav        # one utterance (16 kHz wav)
    python -m nanoaudio.synth --dataset data/digits -n 100 --kind digits --seed 1
    python -m nanoaudio.synth --dataset data/paused -n 100 --pauses 0.5     # half of them with pauses
    python -m nanoaudio.synth --dataset data/noisy -n 100 --non-speech 0.1 --surround 0.1   # what to leave empty

`make_dataset` writes FLAC files plus a JSONL manifest ({"audio", "text", "seconds"}), the format nanoaudio.data
reads, so training on synthetic speech runs through the same loader as training on LibriSpeech.
The espeak-ng C API used here: espeak_Initialize / SetSynthCallback / SetVoiceByName / SetParameter / Synth /
Synchronize, from speak_lib.h (https://github.com/espeak-ng/espeak-ng/blob/master/src/include/espeak-ng/speak_lib.h).
"""

import argparse
import ctypes
import json
import math
import random
from pathlib import Path

import numpy as np
import torch

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE, resample
from nanoaudio.cli import fraction, int_in, non_negative_int, output_file, positive_int
from nanoaudio.load import atomic_dir

ACCENTS = ["en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029"]  # espeak-ng's English voices
RATE_WPM = (120, 230)  # espeak-ng's default is 175 words per minute
RATE_LIMITS = (80, 450)  # what espeak-ng accepts (espeakRATE_MINIMUM, espeakRATE_MAXIMUM in speak_lib.h)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")  # the formats soundfile picks from a file name
PITCH = (20, 80)  # 0..100, default 50
NOISE_SNR_DB = (10.0, 40.0)
PAUSE_SECONDS = (0.15, 0.8)  # silences cut into an utterance between its words (make_dataset's `pauses`)
EDGE_SECONDS = (0.0, 0.4)  # ... and added before and after it
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_LENGTHS = (3, 8)  # digits per string
SENTENCE_LENGTHS = (4, 10)  # words per random sentence
VOCAB_FILE = Path(__file__).resolve().parent / "assets" / "tiny_vocab.txt"

# speak_lib.h enums
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_RATE, _PITCH = 1, 3
_EVENT_WORD = 1  # espeak_EVENT_TYPE: espeakEVENT_LIST_TERMINATED = 0, espeakEVENT_WORD = 1, ...


class _Event(ctypes.Structure):
    """speak_lib.h's espeak_EVENT (API revision 12): 40 bytes on 64-bit. The callback gets an array of them
    ending in one of type 0; a WORD event's text_position (1-based, in characters) names the word, and its
    sample where the word's audio starts, counted in samples from the start of the text."""
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Espeak:
    """The process-wide espeak-ng instance (the C library keeps global state: one voice, one callback)."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise NanoaudioError("synthetic speech needs espeak-ng: pip install 'nanoaudio[speech]'") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.data = Path(espeakng_loader.get_data_path())
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data).encode(),
                                               _INITIALIZE_DONT_EXIT)
        if self.rate <= 0:
            raise NanoaudioError(f"espeak-ng failed to initialize from {self.data}")
        self.chunks, self.words = [], []
        self.callback = _CALLBACK(self._collect)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, n, events):
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events and events[i].type != 0:  # the array ends at espeakEVENT_LIST_TERMINATED
            if events[i].type == _EVENT_WORD:
                self.words.append((events[i].text_position, events[i].sample))
            i += 1
        return 0  # 0 = keep going

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise NanoaudioError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self.chunks, self.words = [], []  # words: (text_position, sample) of each WORD event
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)  # int16 at self.rate


_ENGINE = None


def engine() -> _Espeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def variants() -> list[str]:
    """Every voice variant espeak-ng ships (the files in espeak-ng-data/voices/!v), sorted."""
    return sorted(p.name for p in (engine().data / "voices" / "!v").iterdir() if p.is_file())


def voices() -> list[str]:
    """Every accent x variant combination, e.g. 'en-us+f3' (~500 voices)."""
    return [f"{accent}+{v}" for accent in ACCENTS for v in variants()]


def speak(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> torch.Tensor:
    """Text -> float32 waveform (S,) at 16 kHz."""
    wav = engine().speak(text, voice, rate, pitch)
    x = torch.from_numpy(wav.astype(np.float32) / 32768.0)
    return resample(x, engine().rate, SAMPLE_RATE)


def speak_words(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50):
    """Text -> (float32 waveform (S,) at 16 kHz, [(word, start seconds)]): speak() plus where espeak-ng itself
    says each word starts (its WORD events), the ground truth the timestamp tests measure against. Matched to the
    text's words by character position; a word without its own event (espeak-ng gives "of the" one) is left out.
    The text must be plain ASCII words (positions are counted in characters)."""
    wav = engine().speak(text, voice, rate, pitch)
    starts, pos = {}, 0
    for w in text.split():
        pos = text.index(w, pos)
        starts[pos + 1] = w  # text_position is 1-based
        pos += len(w)
    times = [(starts[p], sample / engine().rate) for p, sample in engine().words if p in starts]
    x = torch.from_numpy(wav.astype(np.float32) / 32768.0)
    return resample(x, engine().rate, SAMPLE_RATE), times


# -----------------------------------------------------------------------------
# non-speech: what a recognizer must leave empty (training data with the empty transcript, and its tests)

NON_SPEECH_KINDS = ["white", "pink", "brown", "tone", "chord", "hum", "clicks", "notes", "scrambled"]
LEVEL_DB = (-45.0, -15.0)  # RMS level of a non-speech clip, dB below full scale (speech here is about -20 dB)
# make_dataset's non-speech clips and the beds around its surrounded speech. A window sample.py cuts is at most
# 4 s (tiny.WINDOW_SECONDS), so the clips are about a window long, and the bed around speech is short enough
# that the whole stays under the tiny preset's 8 s limit; tests/bench/measure_words.py holds its clips out with
# other seeds, lengths, levels and two kinds summed.
TRAIN_NON_SPEECH_SECONDS = (0.5, 4.5)
TRAIN_AROUND_SECONDS = (0.2, 1.5)
TRAIN_BED_DB = (-45.0, -20.0)
NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f^exponent


def _at_level(x: torch.Tensor, db: float) -> torch.Tensor:
    return x * (10 ** (db / 20) / x.pow(2).mean().sqrt().clamp_min(1e-10))


def _note(freq: float, n: int, g: torch.Generator) -> torch.Tensor:
    """n samples of an instrument-like note: harmonics falling off as 1/k, a quick attack and an exponential decay."""
    t = torch.arange(n) / SAMPLE_RATE
    x = sum(torch.sin(2 * torch.pi * k * freq * t + torch.rand((), generator=g) * 6.28) / k
            for k in range(1, 6) if k * freq < SAMPLE_RATE / 2)
    return x * (1 - torch.exp(-t / 0.01)) * torch.exp(-t / (0.3 * n / SAMPLE_RATE))


def non_speech(kind: str, seconds: float, seed: int, level_db: float = -25.0) -> torch.Tensor:
    """A clip of something that is not speech, (S,) at 16 kHz, RMS at level_db; the same seed gives the same clip.

    white/pink/brown  noise with a 1/f^0, 1/f, 1/f^2 power spectrum (shaped in the frequency domain)
    tone              a sine of 80-4000 Hz;  chord: 3-4 equal-tempered notes held together
    hum               50 or 60 Hz mains hum with its harmonics
    clicks            2-12 short decaying impulses a second, at random times
    notes             a melody: 4-10 notes per second, each with harmonics and an envelope (music-like)
    scrambled         a spoken sentence with its Fourier phases randomized: speech's spectrum, no speech in it
    """
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n) / SAMPLE_RATE
    if kind in NOISE_EXPONENT:
        spectrum = torch.fft.rfft(torch.randn(n, generator=g))
        f = torch.fft.rfftfreq(n, 1 / SAMPLE_RATE).clamp_min(20.0)  # no infinite power at 0 Hz
        x = torch.fft.irfft(spectrum / f ** (NOISE_EXPONENT[kind] / 2), n)
    elif kind == "tone":
        x = torch.sin(2 * torch.pi * math.exp(rng.uniform(math.log(80), math.log(4000))) * t)
    elif kind == "chord":
        root = rng.randint(40, 70)  # MIDI note numbers: 82 Hz to 466 Hz
        notes = [0, *rng.sample([3, 4, 7, 10, 12, 16], rng.randint(2, 3))]  # a root and 2-3 intervals above it
        x = sum(torch.sin(2 * torch.pi * 440 * 2 ** ((root + k - 69) / 12) * t) for k in notes)
    elif kind == "hum":
        base = rng.choice([50, 60])
        x = sum(torch.sin(2 * torch.pi * k * base * t + rng.uniform(0, 6.28)) / k for k in range(1, 8))
    elif kind == "clicks":
        x = torch.zeros(n)
        decay = torch.exp(-torch.arange(160) / 20.0) * torch.randn(160, generator=g)  # a 10 ms click
        for _ in range(int(seconds * rng.uniform(2, 12))):
            at = rng.randrange(max(1, n - 160))
            x[at:at + 160] += decay[:len(x[at:at + 160])] * rng.uniform(0.3, 1.0)
    elif kind == "notes":
        x, at = torch.zeros(n), 0
        while at < n:
            d = int(SAMPLE_RATE / rng.uniform(4, 10))
            x[at:at + d] += _note(440 * 2 ** ((rng.randint(48, 84) - 69) / 12), d, g)[:len(x[at:at + d])]
            at += d
    elif kind == "scrambled":
        text = random_text(rng, "sentences", vocabulary())
        speech = speak(text, rng.choice(voices()), rng.randint(*RATE_WPM), rng.randint(*PITCH))
        speech = speech.repeat(n // max(1, len(speech)) + 1)[:n]
        spectrum = torch.fft.rfft(speech)
        phase = torch.rand(len(spectrum), generator=g) * 2 * torch.pi
        x = torch.fft.irfft(spectrum.abs() * torch.exp(1j * phase), n)
    else:
        raise NanoaudioError(f"unknown non-speech kind {kind!r} ({', '.join(NON_SPEECH_KINDS)})")
    return _at_level(x.float(), level_db).clamp(-1, 1)  # sparse clicks at a high RMS would peak above 1


def random_non_speech(seed: int, seconds=(2.0, 6.0), kinds=NON_SPEECH_KINDS, levels=LEVEL_DB, mix: int = 1):
    """A random non-speech clip: `mix` kinds (drawn from `kinds`) summed, each at a random level in `levels` dB
    -> (waveform (S,), {"kinds", "levels_db", "seconds"}). Training data with the empty transcript; the tests
    and tests/bench/measure_words.py draw theirs with other seeds, levels and mixes."""
    rng = random.Random(seed)
    secs = rng.uniform(*seconds)
    picked = rng.sample(list(kinds), mix)
    dbs = [round(rng.uniform(*levels), 1) for _ in picked]
    x = sum(non_speech(k, secs, rng.getrandbits(31), db) for k, db in zip(picked, dbs))
    return x.clamp(-1, 1), {"kinds": picked, "levels_db": dbs, "seconds": round(secs, 3)}


def surrounded(speech: torch.Tensor, seed: int, kinds=NON_SPEECH_KINDS, around=(2.0, 4.0), levels=(-40.0, -25.0)):
    """Speech with 2-4 s of noise or music before and after it, and the same noise under it -> (waveform, how)."""
    rng = random.Random(seed)
    before, after = rng.uniform(*around), rng.uniform(*around)
    n = int((before + after) * SAMPLE_RATE) + len(speech)
    kind, db = rng.choice(list(kinds)), round(rng.uniform(*levels), 1)
    bed = non_speech(kind, n / SAMPLE_RATE, rng.getrandbits(31), db)[:n]
    at = int(before * SAMPLE_RATE)
    bed[at:at + len(speech)] += speech
    return bed.clamp(-1, 1), {"kind": kind, "level_db": db, "before_s": round(before, 3), "after_s": round(after, 3)}


def vocabulary() -> list[str]:
    return [w.strip() for w in VOCAB_FILE.read_text().splitlines() if w.strip()]


def random_text(rng: random.Random, kind: str, words: list[str], sentences: float = 0.5) -> str:
    """A digit string, a random sentence from `words`, or (kind "mixed") a sentence with probability `sentences`."""
    if kind == "mixed":
        kind = "sentences" if rng.random() < sentences else "digits"
    if kind == "digits":
        return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(*DIGIT_LENGTHS)))
    if kind == "sentences":
        return " ".join(rng.choice(words) for _ in range(rng.randint(*SENTENCE_LENGTHS)))
    raise NanoaudioError(f"unknown utterance kind {kind!r} (digits, sentences, mixed)")


def random_utterance(rng: random.Random, text: str, all_voices: list[str], noise: float, pauses: float = 0.0):
    """Speak `text` with a random voice, rate and pitch; with probability `noise`, add white noise at a random SNR.

    With probability `pauses`, the text is spoken as 2-3 phrases with silences between them (PAUSE_SECONDS) and
    around them (EDGE_SECONDS): a model that only ever heard one unbroken phrase per utterance drops or invents
    words at a pause, and the windows sample.py cuts from a long file are full of them.
    -> (waveform (S,) at 16 kHz, {"voice", "rate", "pitch", "pauses_s", "snr_db"}), the draws for the manifest.
    """
    how = {"voice": rng.choice(all_voices), "rate": rng.randint(*RATE_WPM), "pitch": rng.randint(*PITCH)}
    words = text.split()
    if pauses and len(words) > 1 and rng.random() < pauses:
        cuts = sorted(rng.sample(range(1, len(words)), min(rng.randint(1, 2), len(words) - 1)))
        phrases = [" ".join(words[a:b]) for a, b in zip([0, *cuts], [*cuts, len(words)])]
        gaps = [rng.uniform(*EDGE_SECONDS), *(rng.uniform(*PAUSE_SECONDS) for _ in cuts), rng.uniform(*EDGE_SECONDS)]
        how["pauses_s"] = [round(g, 3) for g in gaps]
        silence = [torch.zeros(int(g * SAMPLE_RATE)) for g in how["pauses_s"]]
        pieces = [silence[0]]
        for phrase, after in zip(phrases, silence[1:]):
            pieces += [speak(phrase, how["voice"], how["rate"], how["pitch"]), after]
        wave = torch.cat(pieces)
    else:
        wave = speak(text, how["voice"], how["rate"], how["pitch"])
    if rng.random() < noise:
        how["snr_db"] = round(rng.uniform(*NOISE_SNR_DB), 1)
        power = wave.pow(2).mean().clamp_min(1e-10)
        g = torch.Generator().manual_seed(rng.getrandbits(63))
        wave = wave + torch.randn(wave.shape, generator=g) * (power / 10 ** (how["snr_db"] / 10)).sqrt()
    return wave, how


def make_dataset(folder, n: int, kind: str = "mixed", seed: int = 0, exclude=None, noise: float = 0.3,
                 pauses: float = 0.0, sentences: float = 0.5, non_speech: float = 0.0, surround: float = 0.0) -> Path:
    """Write n utterances as FLAC + manifest.jsonl into `folder` -> the manifest's path.

    `noise`, `pauses`: the share of utterances with added noise, with silences between phrases (random_utterance).
    `sentences`: kind "mixed", the share of random sentences (the rest are digit strings).
    `non_speech`: the share of clips with nobody speaking (random_non_speech, one kind): the empty transcript,
    and `"no_speech": true` in the manifest, which nanoaudio.data needs to keep a row whose text is empty.
    `surround`: the share of the spoken utterances with noise or music before, under and after them (surrounded).
    A model that never heard either writes words on anything it is given (issue 27: 204 invented words on 24
    clips of noise and music).
    Idempotent: a folder already holding a dataset made with the same recipe (every argument but `exclude`) is
    reused.
    `exclude`: a manifest (or an iterable of texts) whose texts must not occur here: held-out sets use it so
    that no evaluation string was ever heard in training. Written atomically (load.atomic_dir).
    """
    import soundfile as sf

    for name, share in (("noise", noise), ("pauses", pauses), ("sentences", sentences), ("non_speech", non_speech),
                        ("surround", surround)):
        if not 0 <= share <= 1:
            raise NanoaudioError(f"{name} is a share of the utterances, in [0, 1]: got {share}")
    if isinstance(exclude, (str, Path)) and not Path(exclude).is_file():
        raise NanoaudioError(f"exclude: no manifest at {exclude}")
    folder = Path(folder)
    manifest, recipe = folder / "manifest.jsonl", {"n": n, "kind": kind, "seed": seed, "noise": noise,
                                                     "pauses": pauses, "sentences": sentences}
    if non_speech or surround:  # (absent when 0: the folders made before they existed are still reused)
        recipe |= {"non_speech": non_speech, "surround": surround}
    check_dataset_folder(folder)
    if manifest.exists() and (folder / "recipe.json").is_file() and _read_recipe(folder) == recipe:
        return manifest
    if exclude is not None and not isinstance(exclude, (set, list, tuple)):
        exclude = [json.loads(line)["text"] for line in open(exclude)]
    banned = set(exclude or [])
    rng, words, all_voices = random.Random(seed), vocabulary(), voices()
    with atomic_dir(folder) as tmp:  # a killed run leaves no half dataset that a later one would reuse
        rows = []
        for i in range(n):
            name = f"{i:06d}.flac"
            if non_speech and rng.random() < non_speech:  # (no draw at share 0: older datasets stay the same)
                wave, how = random_non_speech(rng.getrandbits(31), TRAIN_NON_SPEECH_SECONDS)
                sf.write(tmp / name, wave.numpy(), SAMPLE_RATE, subtype="PCM_16")
                rows.append({"audio": name, "text": "", "no_speech": True} | how)
                continue
            text = random_text(rng, kind, words, sentences)
            while text in banned:
                text = random_text(rng, kind, words, sentences)
            wave, how = random_utterance(rng, text, all_voices, noise, pauses)
            if surround and rng.random() < surround:
                wave, how["surround"] = surrounded(wave, rng.getrandbits(31), around=TRAIN_AROUND_SECONDS,
                                                   levels=TRAIN_BED_DB)
            sf.write(tmp / name, wave.clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")
            rows.append({"audio": name, "text": text, "seconds": round(len(wave) / SAMPLE_RATE, 4)} | how)
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "recipe.json").write_text(json.dumps(recipe))
    return manifest


def check_dataset_folder(folder) -> None:
    """make_dataset replaces `folder`: only a missing folder, an empty one or one it wrote itself (its
    recipe.json is there) may be replaced; anything else is one line, and nothing is deleted."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NanoaudioError(f"{folder}: is a file, not a dataset folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "recipe.json").is_file():
        raise NanoaudioError(f"{folder}: a folder that holds files but no synth dataset (no recipe.json); "
                             f"refusing to replace it: choose a new or empty folder")


def dataset_folder(text: str) -> str:
    """The argparse type of --dataset: check_dataset_folder at parse time, before any speech is made."""
    try:
        check_dataset_folder(text)
    except NanoaudioError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _read_recipe(folder: Path):
    try:
        return json.loads((folder / "recipe.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a damaged recipe: the dataset is made again


def main(argv=None):
    p = argparse.ArgumentParser(description="Synthesize speech with espeak-ng (16 kHz).")
    p.add_argument("text", nargs="?", help="text to speak (one utterance)")
    p.add_argument("-o", "--out", default="speech.wav", type=output_file(*AUDIO_SUFFIXES),
                   help=f"output audio file for one utterance ({', '.join(AUDIO_SUFFIXES)})")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice, e.g. en-us+f3 (see --list-voices)")
    p.add_argument("--rate", type=int_in(*RATE_LIMITS), default=175, help="words per minute, %d..%d" % RATE_LIMITS)
    p.add_argument("--pitch", type=int_in(0, 100), default=50, help="0..100")
    p.add_argument("--list-voices", action="store_true", help="print every voice and exit")
    p.add_argument("--dataset", type=dataset_folder,
                   help="write a dataset (FLAC + manifest.jsonl) into this folder instead")
    p.add_argument("-n", type=positive_int, default=100, help="utterances in --dataset")
    p.add_argument("--kind", default="mixed", choices=["digits", "sentences", "mixed"], help="--dataset texts")
    p.add_argument("--seed", type=non_negative_int, default=0, help="--dataset seed")
    p.add_argument("--pauses", type=fraction, default=0.0,
                   help="--dataset share of utterances spoken as phrases with silences between them, 0..1")
    p.add_argument("--sentences", type=fraction, default=0.5,
                   help="--dataset --kind mixed: share of random sentences, 0..1")
    p.add_argument("--non-speech", type=fraction, default=0.0,
                   help="--dataset share of clips with nobody speaking (noise, tones, music...; empty transcript)")
    p.add_argument("--surround", type=fraction, default=0.0,
                   help="--dataset share of utterances with noise or music before, under and after the speech")
    p.add_argument("--exclude", help="--dataset: a manifest (e.g. the training set's) whose texts must not occur, "
                                     "for a held-out set")
    args = p.parse_args(argv)
    if args.exclude is not None and not Path(args.exclude).is_file():
        raise NanoaudioError(f"--exclude {args.exclude}: no such manifest")
    if args.list_voices:
        print("\n".join(voices()))
    elif args.dataset:
        print(make_dataset(args.dataset, args.n, args.kind, args.seed, args.exclude, pauses=args.pauses,
                           sentences=args.sentences, non_speech=args.non_speech, surround=args.surround))
    elif args.text:
        import soundfile as sf

        sf.write(args.out, speak(args.text, args.voice, args.rate, args.pitch).clamp(-1, 1).numpy(), SAMPLE_RATE)
        print(args.out)
    else:
        p.error("give a text, --dataset or --list-voices")


if __name__ == "__main__":
    from nanoaudio import run_cli

    run_cli(main)
