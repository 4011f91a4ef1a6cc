"""The training data pipeline (nanoaudio/data.py): every format, skipping, bucketing, exact resume, DDP shards.

    python -m pytest -q tests/test_data.py

Every dataset is built here in tmp_path from a few short sine + noise files written with soundfile; the audio
an Example carries is compared sample for sample with load_audio of the file it came from.
"""

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE, load_audio
from nanoaudio.data import Batches, Example, open_dataset

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_audio(path, seconds, sr=SAMPLE_RATE, seed=0):
    """A tone plus a little noise, `seconds` long, in the format the suffix names (.wav or .flac)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (200 + 37 * seed) * t) + 0.02 * rng.standard_normal(t.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sr)
    return path


def manifest(tmp_path, lengths, name="m.jsonl"):
    """n wav files of the given lengths under tmp_path/audio and a manifest (relative paths, no seconds)."""
    lines = []
    for i, s in enumerate(lengths):
        write_audio(tmp_path / "audio" / f"u{i:03d}.wav", s, seed=i)
        lines.append(json.dumps({"audio": f"audio/u{i:03d}.wav", "text": f"utterance {i}"}))
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return open_dataset(str(tmp_path / name))


def write_parquet(path, flacs, texts, text_column="text", row_group_size=2, struct=True):
    """The Hugging Face audio layout: audio = struct {bytes, path} holding the encoded file (or plain bytes)."""
    blobs = [f.read_bytes() for f in flacs]
    if struct:
        audio = pa.array([{"bytes": b, "path": f.name} for b, f in zip(blobs, flacs)],
                         type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        audio = pa.array(blobs, type=pa.binary())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"audio": audio, text_column: texts}), path, row_group_size=row_group_size)
    return path


def take(batches, n):
    it = iter(batches)
    return [[ex.id for ex in next(it)] for _ in range(n)]


# -----------------------------------------------------------------------------
# formats


def test_librispeech_tree(tmp_path):
    root = tmp_path / "LibriSpeech"
    utts = {"train-clean-100/19/198": ["19-198-0000", "19-198-0001"], "train-clean-100/26/495": ["26-495-0000"],
            "dev-clean/84/121123": ["84-121123-0000", "84-121123-0001"]}
    texts = {}
    for i, (folder, ids) in enumerate(utts.items()):
        lines = []
        for j, utt in enumerate(ids):
            # one file at 8 kHz: load_audio resamples it, and the dataset must hand over the same samples
            write_audio(root / folder / f"{utt}.flac", 0.3 + 0.1 * j, sr=8000 if utt == "26-495-0000" else SAMPLE_RATE,
                        seed=i * 10 + j)
            texts[utt] = f"WORDS OF {utt} SPOKEN"
            lines.append(f"{utt} {texts[utt]}")
        speaker, chapter = folder.split("/")[-2:]
        (root / folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")

    ds = open_dataset(str(root))  # the parent of the splits: walked recursively
    assert len(ds) == 5
    examples = list(ds)
    expected = sorted((str(p) for p in root.rglob("*.flac")), key=lambda p: (str(p.rsplit("/", 1)[0]), p))
    assert [ex.id for ex in examples] == expected  # sorted by transcript file, then line
    for ex in examples:
        assert isinstance(ex, Example)
        utt = ex.id.rsplit("/", 1)[1].removesuffix(".flac")
        assert ex.text == texts[utt]
        ref = load_audio(ex.id)
        assert ex.audio.dtype == torch.float32 and torch.equal(ex.audio, ref)
        assert ex.seconds == pytest.approx(ref.shape[0] / SAMPLE_RATE)
    assert len(open_dataset(str(root / "train-clean-100"))) == 3  # one split alone
    assert [ex.id for ex in ds] == expected  # re-iterable, same order


def test_jsonl_relative_paths_and_seconds(tmp_path, monkeypatch):
    data = tmp_path / "corpus"
    write_audio(data / "wavs" / "a.wav", 0.5, seed=1)
    write_audio(data / "wavs" / "b.flac", 0.25, sr=22050, seed=2)
    (data / "train.jsonl").write_text(
        json.dumps({"audio": "wavs/a.wav", "text": "Hello, World!"}) + "\n\n"
        + json.dumps({"audio": str(data / "wavs" / "b.flac"), "text": "second one", "seconds": 0.25}) + "\n")
    monkeypatch.chdir(tmp_path)  # relative to the manifest's folder, not to the working directory
    ds = open_dataset("corpus/train.jsonl")
    assert len(ds) == 2
    a, b = list(ds)
    assert (a.text, b.text) == ("Hello, World!", "second one")  # as written: normalization is not ours
    assert torch.equal(a.audio, load_audio(data / "wavs" / "a.wav"))
    assert torch.equal(b.audio, load_audio(data / "wavs" / "b.flac"))
    assert a.seconds == pytest.approx(0.5) and b.seconds == pytest.approx(0.25, abs=1e-3)


def test_parquet_hf_layout_and_split(tmp_path):
    flacs = [write_audio(tmp_path / "src" / f"{i}.flac", 0.2 + 0.05 * i, seed=i) for i in range(5)]
    root = tmp_path / "hf"
    write_parquet(root / "data" / "train-00000.parquet", flacs[:3], ["zero", "one", "two"], "transcription")
    write_parquet(root / "data" / "train-00001.parquet", flacs[3:4], ["three"], "transcription", struct=False)
    write_parquet(root / "data" / "test-00000.parquet", flacs[4:], ["four"])

    ds = open_dataset(str(root))  # a folder of shards, sorted by path
    assert len(ds) == 5 and ds.chunk_sizes == [1, 2, 1, 1]  # row groups of 2: test, train-0 (2 + 1), train-1
    train = open_dataset(f"{root}:train")
    assert len(train) == 4
    examples = list(train)
    assert [ex.text for ex in examples] == ["zero", "one", "two", "three"]
    assert [ex.id for ex in examples] == ["data/train-00000.parquet:0", "data/train-00000.parquet:1",
                                          "data/train-00000.parquet:2", "data/train-00001.parquet:0"]
    for ex, f in zip(examples, flacs):
        assert torch.equal(ex.audio, load_audio(f))
    single = open_dataset(str(root / "data" / "test-00000.parquet"))
    assert [ex.text for ex in single] == ["four"]
    with pytest.raises(NanoaudioError, match="validation"):
        open_dataset(f"{root}:validation")


def test_hub_id_downloads_parquet_only(tmp_path, monkeypatch):
    import huggingface_hub

    import nanoaudio.load

    flacs = [write_audio(tmp_path / f"{i}.flac", 0.2, seed=i) for i in range(2)]
    snapshot = tmp_path / "snapshot"
    write_parquet(snapshot / "clean" / "train.100" / "0000.parquet", flacs, ["a", "b"])
    calls = []

    def fake_hub_download(repo, patterns, repo_type="model", name=None):
        calls.append((repo, patterns, repo_type))
        return snapshot

    monkeypatch.setattr(nanoaudio.load, "hub_download", fake_hub_download)
    ds = open_dataset("openslr/librispeech_asr:train.100")
    assert len(ds) == 2 and [ex.text for ex in ds] == ["a", "b"]
    assert calls == [("openslr/librispeech_asr", ["*train.100*.parquet"], "dataset")]

    def offline(*args, **kw):
        raise OSError("no network")

    monkeypatch.undo()
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", offline)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(NanoaudioError, match="owner/name.*no network"):
        open_dataset("owner/name")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    f = write_parquet(tmp_path / "x.parquet", [write_audio(tmp_path / "a.flac", 0.2)], ["a"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(NanoaudioError, match=r"pip install 'nanoaudio\[data\]'"):
        open_dataset(str(f))


# -----------------------------------------------------------------------------
# bad input: errors at open time, skips at run time


def test_malformed_jsonl_names_the_line(tmp_path):
    write_audio(tmp_path / "a.wav", 0.2)
    good = json.dumps({"audio": "a.wav", "text": "fine"})
    cases = {"bad.jsonl": (good + "\n{not json\n", ":2:"),
             "notext.jsonl": (good + "\n\n" + '{"audio": "a.wav"}\n', ":3:"),
             "seconds.jsonl": ('{"audio": "a.wav", "text": "x", "seconds": -1}\n', ":1:")}
    for name, (content, where) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(NanoaudioError) as e:
            open_dataset(str(tmp_path / name))
        assert f"{tmp_path / name}{where}" in str(e.value)


def test_no_speech_rows_keep_their_empty_text(tmp_path):
    """A clip marked no_speech is kept with its empty transcript (the target: nothing); an unmarked empty text
    is a mistake and skipped; the mark is checked."""
    for i in range(3):
        write_audio(tmp_path / f"a{i}.wav", 0.3, seed=i)
    rows = [{"audio": "a0.wav", "text": "words"}, {"audio": "a1.wav", "text": "", "no_speech": True},
            {"audio": "a2.wav", "text": ""}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = open_dataset(str(tmp_path / "m.jsonl"))
    assert [ex.text for ex in ds] == ["words", ""] and ds.skipped == {"empty_text": 1}
    batch = next(iter(Batches(ds, batch_size=2, seed=0)))
    assert sorted(ex.text for ex in batch) == ["", "words"]
    for bad in ({"audio": "a1.wav", "text": "words", "no_speech": True},
                {"audio": "a1.wav", "text": "", "no_speech": 1}):
        (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
        with pytest.raises(NanoaudioError, match=r'bad.jsonl:1: "no_speech" must be true'):
            open_dataset(str(tmp_path / "bad.jsonl"))


def test_missing_or_unknown_paths(tmp_path):
    for spec in (tmp_path / "nope.jsonl", tmp_path / "nope", tmp_path / "nope.parquet"):
        with pytest.raises(NanoaudioError, match="no such file or folder") as e:
            open_dataset(str(spec))
        assert str(spec) in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanoaudioError, match="trans.txt"):
        open_dataset(str(tmp_path / "empty"))
    f = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"audio": pa.array([b"x"]), "label": ["a"]}), f)
    with pytest.raises(NanoaudioError, match="notext.parquet: no text column"):
        open_dataset(str(f))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(NanoaudioError, match="x.txt: unknown dataset file type"):
        open_dataset(str(tmp_path / "x.txt"))


def test_bad_files_are_skipped_and_counted(tmp_path):
    for i in range(4):
        write_audio(tmp_path / f"good{i}.wav", 0.3, seed=i)
    (tmp_path / "garbage.flac").write_bytes(b"this is not flac" * 100)  # the header cannot be read
    nan = np.zeros(1600, dtype=np.float32)
    nan[100] = np.nan  # the header reads fine; load_audio refuses the samples: caught only at load time
    sf.write(tmp_path / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    write_audio(tmp_path / "long.wav", 3.0)
    write_audio(tmp_path / "liar.wav", 3.0)  # the manifest says 0.5 s: too long is found after decoding
    rows = [{"audio": f"good{i}.wav", "text": f"good {i}"} for i in range(4)] + [
        {"audio": "garbage.flac", "text": "g"}, {"audio": "missing.wav", "text": "m"},
        {"audio": "nan.wav", "text": "n"}, {"audio": "good0.wav", "text": "  "},
        {"audio": "long.wav", "text": "l"}, {"audio": "liar.wav", "text": "l", "seconds": 0.5}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = open_dataset(str(tmp_path / "m.jsonl"))

    # evaluation: plain iteration skips bad files (no max length there), counting each once however often
    for _ in range(2):
        assert [ex.text for ex in ds] == ["good 0", "good 1", "good 2", "good 3", "l", "l"]
    assert ds.skipped == {"unreadable": 3, "empty_text": 1}

    # training: two epochs of batch_size 1 give the good files only, and the report names what was left out
    train = Batches(ds, batch_size=1, seed=3, max_seconds=2.0)
    ids = take(train, 8)
    assert sorted(i for b in ids[:4] for i in b) == [str(tmp_path / f"good{i}.wav") for i in range(4)]
    assert sorted(ids[:4]) == sorted(ids[4:])
    assert train.state_dict()["epoch"] == 1
    report = train.skipped_report()
    assert {k: v for k, v in report.items() if k != "examples"} == {"unreadable": 3, "empty_text": 1, "too_long": 2}
    text = "\n".join(report["examples"])
    assert f"{tmp_path / 'garbage.flac'}: not an audio file" in text
    assert f"{tmp_path / 'missing.wav'}: no such file" in text and f"{tmp_path / 'nan.wav'}: " in text
    assert Batches(open_dataset(str(tmp_path / "m.jsonl")), batch_size=1).skipped_report() == {}


def test_no_usable_batch_is_an_error(tmp_path):
    ds = manifest(tmp_path, [0.2, 0.2, 3.0])
    with pytest.raises(NanoaudioError, match="no batch: 2 usable examples, 4 needed"):
        next(iter(Batches(ds, batch_size=2, world_size=2, max_seconds=1.0)))


# -----------------------------------------------------------------------------
# Batches: bucketing, resume, sharding


def test_bucketing_reduces_padding(tmp_path):
    lengths = np.random.default_rng(0).uniform(0.05, 1.0, size=48).round(3)
    ds = manifest(tmp_path, lengths)

    def padding(block):
        """Padded-but-empty samples over one epoch: 12 batches of 4, covering the 48 examples once."""
        it = iter(Batches(ds, batch_size=4, seed=1, block=block))
        pad, seen = 0, []
        for _ in range(12):
            batch = next(it)
            n = [ex.audio.shape[0] for ex in batch]
            pad += len(n) * max(n) - sum(n)
            seen += [ex.id for ex in batch]
        assert sorted(seen) == sorted(item.id for item in ds.items)
        return pad

    bucketed, unsorted = padding(block=50), padding(block=1)  # block 1: a batch is sorted only within itself
    assert bucketed < 0.25 * unsorted, (bucketed, unsorted)
    # yet the order is random: not ascending length, and each epoch is shuffled anew
    b = Batches(ds, batch_size=4, seed=1)
    epochs = take(b, 24)
    first_lengths = [lengths[int(ids[0][-7:-4])] for ids in epochs[:12]]
    assert first_lengths != sorted(first_lengths)
    assert epochs[:12] != epochs[12:] and sorted(map(sorted, epochs[:12])) != sorted(map(sorted, epochs[12:]))
    assert take(Batches(ds, batch_size=4, seed=2), 12) != epochs[:12]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_exact_resume(tmp_path, kind):
    lengths = np.random.default_rng(1).uniform(0.05, 0.3, size=20).round(3)
    if kind == "jsonl":
        ds = manifest(tmp_path, lengths)
    else:
        flacs = [write_audio(tmp_path / f"{i}.flac", s, seed=i) for i, s in enumerate(lengths)]
        texts = [f"t{i}" for i in range(20)]
        ds = open_dataset(str(write_parquet(tmp_path / "d.parquet", flacs, texts, row_group_size=3)))
    # blocks of 2 batches of 3 examples: several blocks per epoch, a remainder, and epoch boundaries
    make = lambda: Batches(ds, batch_size=3, seed=7, block=2)  # noqa: E731
    reference = take(make(), 22)
    for k in (0, 1, 2, 5, 6, 7, 12, 15):
        before = make()
        assert take(before, k) == reference[:k]
        state = json.loads(json.dumps(before.state_dict()))  # what train.py writes into trainer_state.json
        after = make()
        after.load_state_dict(state)
        assert take(after, 5) == reference[k:k + 5], k
    # a position from another setup (here another batch size) cannot be exact: say so, restart that epoch
    other = Batches(ds, batch_size=2, seed=7, block=2)
    with pytest.warns(UserWarning, match="global_batch: 3 -> 2"):
        other.load_state_dict(state)
    assert state["epoch"] > 0 and (state["block"], state["batch"]) != (0, 0)
    assert [other.state_dict()[k] for k in ("epoch", "block", "batch")] == [state["epoch"], 0, 0]


def test_rank_shards_are_disjoint_and_add_up_to_one_process(tmp_path):
    ds = manifest(tmp_path, np.random.default_rng(2).uniform(0.05, 0.4, size=26).round(3))
    single = take(Batches(ds, batch_size=4, seed=5, block=3), 12)
    ranks = [take(Batches(ds, batch_size=2, seed=5, rank=r, world_size=2, block=3), 12) for r in range(2)]
    for step, (whole, r0, r1) in enumerate(zip(single, *ranks)):
        assert len(r0) == len(r1) == 2
        assert not set(r0) & set(r1) and set(r0) | set(r1) == set(whole), step
    epoch0 = [set(sum(r[:6], [])) for r in ranks]  # 26 // 4 = 6 batches per epoch
    assert not epoch0[0] & epoch0[1] and len(epoch0[0] | epoch0[1]) == 24


def test_bad_arguments(tmp_path):
    ds = manifest(tmp_path, [0.2])
    for kw in ({"batch_size": 0}, {"batch_size": 1, "rank": 2, "world_size": 2}, {"batch_size": 1, "seed": -1}):
        with pytest.raises(NanoaudioError, match="Batches"):
            Batches(ds, **kw)
    with pytest.raises(NanoaudioError, match="missing key"):
        Batches(ds, batch_size=1).load_state_dict({"epoch": 0})
