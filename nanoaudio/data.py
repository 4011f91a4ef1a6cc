"""Training data in, batches of examples out: list a dataset cheaply, then stream its audio batch by batch.

- `open_dataset(spec)` lists a dataset without decoding any audio. A spec is one of
    * a LibriSpeech folder as downloaded: <root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt, one line
      `UTTID TRANSCRIPT` per <UTTID>.flac beside it (root may hold several splits: walked recursively, sorted);
    * a JSONL manifest: {"audio": path, "text": ..., "seconds": optional} per line, paths relative to its folder
      (`"no_speech": true` marks a clip where nobody speaks: its empty text is the target, not a mistake);
    * a .parquet file or a folder of shards in the Hugging Face audio layout: a column `audio` holding a struct
      {bytes, path} (or plain bytes) and a text column (TEXT_COLUMNS, first present), read row group by row group;
    * a Hugging Face dataset id "owner/name", whose parquet files are downloaded once.
  Any of them may end in ":split": only parquet files whose path contains that string ("openslr/librispeech_asr:
  train.clean.100"). Iterating a Dataset yields `Example`s in listing order, skipping (and counting in
  `ds.skipped`) unreadable files and empty transcripts (unless marked no_speech), so an evaluation never dies on
  one bad file.
- `Batches(ds, batch_size, seed, rank, world_size, max_seconds)`: the infinite training iterator.
    1. Each epoch shuffles the dataset's chunks (one file, or one parquet row group) with (seed, epoch).
    2. Consecutive chunks form blocks of `block` global batches (G = batch_size * world_size examples each).
    3. A block is shuffled, its unusable examples dropped (unreadable, too long, empty text), cut to a multiple
       of G (the remainder, fewer than G random examples, sits out this epoch), sorted by length, cut into
       global batches, and the batches shuffled: little padding, yet a random order.
    4. Rank r takes examples [r*b, (r+1)*b) of every global batch: ranks are disjoint, see the same number of
       batches, and together see exactly what one process with batch_size = b * world_size sees.
  The position is (epoch, block, batch). Everything is a function of (seed, epoch, block), so a resumed
  iterator rebuilds only the current block and yields exactly the batches the interrupted one would have.
  Lengths are cheap: the manifest's "seconds", else the audio header (soundfile.info), never a full decode.
Legend: B batch, S samples, G global batch (all ranks).
"""

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE, load_audio

TEXT_COLUMNS = ("text", "transcription", "sentence", "normalized_text")  # Hugging Face names, first present wins
BLOCK = 50  # global batches shuffled and sorted by length together: bigger pads less, but batches of one length cluster
MAX_SKIP_EXAMPLES = 10  # "path: reason" lines kept for the skip report


@dataclass
class Example:
    audio: torch.Tensor  # (S,) float32 mono at 16 kHz, not normalized
    text: str  # the transcript as written in the source
    seconds: float  # S / 16000
    id: str  # the audio file's path, or "<parquet file>:<row>"


@dataclass
class Item:
    """One listed utterance before its audio is read: where the audio lives, and what we know about it."""
    id: str
    text: str
    source: Path | bytes  # a file, or the encoded bytes of a parquet cell
    seconds: float | None = None  # from the manifest, or filled in (once) by `probe_seconds`
    error: str | None = None  # why the header could not be read, remembered so it is not re-read every epoch
    no_speech: bool = False  # nobody speaks: the empty text is the target (synth's non-speech clips)


class Skips:
    """Examples left out, each id counted once however many epochs meet it: id -> (kind, reason)."""

    def __init__(self):
        self.by_id = {}

    def add(self, id: str, kind: str, reason: str):
        self.by_id.setdefault(id, (kind, reason))

    def counts(self) -> dict:
        return dict(Counter(kind for kind, _ in self.by_id.values()))

    def report(self) -> dict:
        """{} or {"unreadable": 2, "too_long": 1, "examples": ["path: reason", ...]}."""
        if not self.by_id:
            return {}
        examples = [f"{id}: {reason}" for id, (_, reason) in list(self.by_id.items())[:MAX_SKIP_EXAMPLES]]
        return {**self.counts(), "examples": examples}


# -----------------------------------------------------------------------------
# reading one item: its length (header only) and its audio


def _name(source) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(source)


def probe_seconds(item: Item) -> float:
    """The item's duration from the file header (soundfile.info), cached on the item. NanoaudioError if unreadable."""
    import soundfile as sf

    if item.seconds is None and item.error is None:
        if isinstance(item.source, Path) and not item.source.is_file():
            item.error = "no such file"
        else:
            try:
                info = sf.info(io.BytesIO(item.source) if isinstance(item.source, bytes) else str(item.source))
                if info.frames <= 0:  # unknown (-1 for some streams) or empty: either way nothing to train on
                    item.error = "the file holds zero samples"
                else:
                    item.seconds = info.frames / info.samplerate
            except RuntimeError as e:  # soundfile's LibsndfileError: garbage, truncated header, unknown format
                reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                item.error = f"not an audio file soundfile can read ({reason.split(': ')[-1]})"
    if item.error is not None:
        raise NanoaudioError(f"{item.id}: {item.error}")
    return item.seconds


def load_example(item: Item, skips: Skips, max_seconds: float = float("inf")) -> Example | None:
    """Decode the item's audio -> Example, or None after recording in `skips` why it was left out."""
    if not item.text.strip() and not item.no_speech:
        skips.add(item.id, "empty_text", "empty transcript")
        return None
    try:
        audio = load_audio(item.source)  # (S,) float32, 16 kHz mono
    except NanoaudioError as e:
        skips.add(item.id, "unreadable", str(e).removeprefix(f"{_name(item.source)}: "))
        return None
    seconds = audio.shape[0] / SAMPLE_RATE
    if seconds > max_seconds:  # the manifest's "seconds" may have been wrong: the decoded length decides
        skips.add(item.id, "too_long", f"{seconds:.1f} s > max_seconds {max_seconds:g}")
        return None
    return Example(audio=audio, text=item.text, seconds=seconds, id=item.id)


# -----------------------------------------------------------------------------
# datasets: a list of chunks (one file, or one parquet row group), each read only when needed


class Dataset:
    """A listed, re-iterable set of utterances. Subclasses provide `chunk_sizes` and `read_chunk(c)`."""

    def __init__(self, name: str, chunk_sizes: list[int]):
        if not chunk_sizes:
            raise NanoaudioError(f"{name}: no utterances listed")
        self.name = name
        self.chunk_sizes = chunk_sizes  # items in each chunk, known without reading audio
        self.skips = Skips()  # what iteration left out, for ds.skipped

    def read_chunk(self, c: int) -> list[Item]:
        raise NotImplementedError

    def __len__(self) -> int:
        return sum(self.chunk_sizes)

    def __iter__(self):
        """Examples in listing order, one chunk in memory at a time; bad ones are skipped and counted."""
        for c in range(len(self.chunk_sizes)):
            for item in self.read_chunk(c):
                ex = load_example(item, self.skips)
                if ex is not None:
                    yield ex

    @property
    def skipped(self) -> dict:
        """{kind: count} of the examples iteration has skipped so far, e.g. {"unreadable": 1}."""
        return self.skips.counts()

    def skipped_report(self) -> dict:
        return self.skips.report()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self)} utterances)"


class FileDataset(Dataset):
    """Utterances that are audio files on disk (LibriSpeech, JSONL manifests): one item per chunk."""

    def __init__(self, name: str, items: list[Item]):
        super().__init__(name, [1] * len(items))
        self.items = items

    def read_chunk(self, c: int) -> list[Item]:
        return [self.items[c]]


def read_librispeech(root: Path) -> FileDataset:
    """Every <speaker>-<chapter>.trans.txt under root, sorted; each line `UTTID WORDS` names UTTID.flac beside it."""
    items = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if line.strip():
                utt, _, text = line.strip().partition(" ")
                path = trans.parent / f"{utt}.flac"
                items.append(Item(id=str(path), text=text.strip(), source=path))
    return FileDataset(str(root), items)


def read_manifest(path: Path) -> FileDataset:
    """A JSONL manifest: {"audio": path, "text": str, "seconds": optional number} per line."""
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise NanoaudioError(f"{path}: not a UTF-8 text file (expected one JSON object per line)") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise NanoaudioError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not (isinstance(rec, dict) and isinstance(rec.get("audio"), str) and isinstance(rec.get("text"), str)):
            raise NanoaudioError(f'{path}:{n}: expected an object with string "audio" and "text" keys')
        seconds = rec.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not seconds > 0):
            raise NanoaudioError(f'{path}:{n}: "seconds" must be a positive number, got {seconds!r}')
        no_speech = rec.get("no_speech", False)
        if not isinstance(no_speech, bool) or (no_speech and rec["text"].strip()):
            raise NanoaudioError(f'{path}:{n}: "no_speech" must be true (with an empty "text") or false, '
                                 f'got {no_speech!r} with text {rec["text"][:40]!r}')
        audio = Path(rec["audio"]).expanduser()
        audio = audio if audio.is_absolute() else path.parent / audio  # relative to the manifest, not the cwd
        items.append(Item(id=str(audio), text=rec["text"], source=audio,
                          seconds=None if seconds is None else float(seconds), no_speech=no_speech))
    return FileDataset(str(path), items)


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise NanoaudioError("reading parquet needs pyarrow: pip install 'nanoaudio[data]'") from None
    return pq


class ParquetDataset(Dataset):
    """Hugging Face audio parquet shards: one row group per chunk, so memory holds one row group at a time."""

    def __init__(self, name: str, root: Path, files: list[Path]):
        pq = _pyarrow_parquet()
        import pyarrow as pa  # present: pyarrow.parquet imported

        self.root = root
        self.groups = []  # (file, row group, first row in the file, text column): one per chunk
        sizes = []
        for f in files:
            try:
                meta = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                raise NanoaudioError(f"{f}: not a parquet file ({e})") from None
            schema = meta.schema_arrow
            if "audio" not in schema.names:
                raise NanoaudioError(f"{f}: no 'audio' column (columns: {', '.join(schema.names)})")
            kind = schema.field("audio").type
            if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                    or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)):
                raise NanoaudioError(f"{f}: column 'audio' is {kind}, expected a struct {{bytes, path}} or binary")
            text = next((c for c in TEXT_COLUMNS if c in schema.names), None)
            if text is None:
                raise NanoaudioError(f"{f}: no text column (looked for {', '.join(TEXT_COLUMNS)}; "
                                     f"columns: {', '.join(schema.names)})")
            first = 0
            for g in range(meta.num_row_groups):
                n = meta.metadata.row_group(g).num_rows
                if n > 0:
                    self.groups.append((f, g, first, text))
                    sizes.append(n)
                first += n
        super().__init__(name, sizes)

    def read_chunk(self, c: int) -> list[Item]:
        f, g, first, text = self.groups[c]
        table = _pyarrow_parquet().ParquetFile(f).read_row_group(g, columns=["audio", text])
        rel = f.relative_to(self.root).as_posix() if f.is_relative_to(self.root) else str(f)
        items = []
        for i, (audio, words) in enumerate(zip(table.column("audio").to_pylist(), table.column(text).to_pylist())):
            if isinstance(audio, dict):  # {bytes, path}: bytes embedded, or (rarely) only a path beside the shard
                path = audio.get("path")
                audio = audio.get("bytes") or (f.parent / path if path else b"")
            items.append(Item(id=f"{rel}:{first + i}", text=words or "", source=audio))
        return items


# -----------------------------------------------------------------------------
# open_dataset: spec -> Dataset


def _download(repo: str, split: str | None) -> Path:
    from nanoaudio.load import hub_download

    pattern = f"*{split}*.parquet" if split else "*.parquet"  # fnmatch: `*` also crosses folders
    # hub_download: a timeout on every call, one line naming the repo when it fails (offline, no such dataset...)
    return hub_download(repo, [pattern], repo_type="dataset", name=f"{repo} (no such file or folder either)")


def open_dataset(spec: str) -> Dataset:
    """A LibriSpeech folder, JSONL manifest, parquet file/folder or HF dataset id, optionally ":split"."""
    spec = str(spec)
    path, split = Path(spec).expanduser(), None
    if not path.exists() and ":" in spec:  # "owner/name:split" or "folder:split"
        base, split = spec.rsplit(":", 1)
        path = Path(base).expanduser()
    if not path.exists():
        name = str(path)
        looks_like_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and path.suffix not in (
            ".jsonl", ".json", ".parquet")
        if not looks_like_id:
            raise NanoaudioError(f"{spec}: no such file or folder")
        path = _download(name, split)
    if path.is_file():
        if path.suffix == ".parquet":
            return ParquetDataset(spec, path.parent, [path])
        if path.suffix in (".jsonl", ".json"):
            return read_manifest(path)
        raise NanoaudioError(f"{spec}: unknown dataset file type (expected .jsonl, .parquet or a folder)")
    shards = sorted(path.rglob("*.parquet"))
    if shards:
        chosen = [f for f in shards if split is None or split in f.relative_to(path).as_posix()]
        if not chosen:
            folders = sorted({f.parent.relative_to(path).as_posix() for f in shards})
            raise NanoaudioError(f"{spec}: no parquet file matches split {split!r} (folders: {', '.join(folders)})")
        return ParquetDataset(spec, path, chosen)
    if split is not None:
        raise NanoaudioError(f"{spec}: a split selects parquet files, and {path} holds none")
    if next(path.rglob("*.trans.txt"), None) is not None:
        return read_librispeech(path)
    raise NanoaudioError(f"{spec}: no LibriSpeech transcripts (*.trans.txt) or parquet files in this folder")


# -----------------------------------------------------------------------------
# Batches: the infinite, length-bucketed, resumable, rank-sharded training iterator


class Batches:
    """iter(Batches(...)) -> list[Example] forever. See the module docstring for the order it follows."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 max_seconds: float = 30.0, block: int = BLOCK):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or block < 1:
            raise NanoaudioError(f"Batches: need batch_size >= 1, block >= 1 and 0 <= rank < world_size; got "
                                 f"batch_size={batch_size}, block={block}, rank={rank}, world_size={world_size}")
        if seed < 0:
            raise NanoaudioError(f"Batches: seed must be >= 0, got {seed}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.max_seconds, self.block_batches = rank, world_size, max_seconds, block
        self.G = batch_size * world_size  # examples in one global batch
        self.epoch, self.block, self.batch = 0, 0, 0  # the next batch to yield
        self.skips = Skips()

    def blocks(self, epoch: int) -> list[list[int]]:
        """The epoch's shuffled chunks, grouped into blocks of at least `block` global batches of items."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset.chunk_sizes))
        blocks, current, n = [], [], 0
        for c in order.tolist():
            current.append(c)
            n += self.dataset.chunk_sizes[c]
            if n >= self.block_batches * self.G:
                blocks.append(current)
                current, n = [], 0
        return blocks + [current] if current else blocks

    def usable(self, item: Item) -> bool:
        """Plan-time check from the header: False (and recorded) if unreadable, too long or without text."""
        if not item.text.strip() and not item.no_speech:
            self.skips.add(item.id, "empty_text", "empty transcript")
            return False
        try:
            seconds = probe_seconds(item)
        except NanoaudioError as e:
            self.skips.add(item.id, "unreadable", str(e).removeprefix(f"{item.id}: "))
            return False
        if seconds > self.max_seconds:
            self.skips.add(item.id, "too_long", f"{seconds:.1f} s > max_seconds {self.max_seconds:g}")
            return False
        return True

    def plan(self, epoch: int, w: int, chunks: list[int]) -> list[list[Item]]:
        """Block w of the epoch -> its global batches (G items each, sorted by length inside), in random order."""
        rng = np.random.default_rng([self.seed, epoch, w])
        items = [item for c in chunks for item in self.dataset.read_chunk(c)]
        items = [items[i] for i in rng.permutation(len(items))]
        kept = [item for item in items if self.usable(item)]
        kept = kept[: len(kept) // self.G * self.G]  # a random remainder (< G) sits out this epoch
        kept.sort(key=lambda item: item.seconds)  # stable: equal lengths keep their shuffled order
        batches = [kept[i: i + self.G] for i in range(0, len(kept), self.G)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        while True:
            fresh_epoch, produced = self.block == 0 and self.batch == 0, False
            blocks = self.blocks(self.epoch)
            while self.block < len(blocks):
                # keep only this rank's slices: the others' parquet bytes are freed right away
                r, b = self.rank, self.batch_size
                mine = [batch[r * b: (r + 1) * b] for batch in self.plan(self.epoch, self.block, blocks[self.block])]
                while self.batch < len(mine):
                    items = mine[self.batch]
                    self.batch += 1  # advanced before the yield: state_dict() taken now resumes after this batch
                    examples = [ex for item in items if (ex := load_example(item, self.skips, self.max_seconds))]
                    # A file whose header reads but whose samples do not (rare) shrinks this batch. If all of a
                    # rank's slice fails, that rank moves to its slice of the next global batch: it stays disjoint
                    # from the others, only one step ahead of them.
                    if examples:
                        produced = True
                        yield examples
                self.block, self.batch = self.block + 1, 0
            if fresh_epoch and not produced:
                n = len(self.dataset) - len(self.skips.by_id)
                raise NanoaudioError(f"{self.dataset.name}: a whole epoch gave no batch: {n} usable examples, "
                                     f"{self.G} needed per batch (batch_size x world_size); skipped: "
                                     f"{self.skipped_report() or 'none'}")
            self.epoch, self.block, self.batch = self.epoch + 1, 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "block": self.block, "batch": self.batch, "seed": self.seed,
                "global_batch": self.G, "block_batches": self.block_batches, "items": len(self.dataset)}

    def load_state_dict(self, state: dict):
        # checkpoints of nanoaudio 0.1 called blocks "windows" (a word the audio windows of decoding.py now own)
        state = {{"window": "block", "window_batches": "block_batches"}.get(k, k): v for k, v in state.items()}
        missing = [k for k in ("epoch", "block", "batch") if k not in state]
        if missing:
            raise NanoaudioError(f"data state: missing key(s) {', '.join(missing)}")
        now = self.state_dict()
        changed = [k for k in ("seed", "global_batch", "block_batches", "items") if k in state and state[k] != now[k]]
        if changed:
            # the saved position indexes another plan: start its epoch over rather than pretend to be exact
            import warnings

            warnings.warn(f"data state from another setup ({', '.join(f'{k}: {state[k]} -> {now[k]}' for k in changed)}"
                          f"): restarting epoch {state['epoch']} from its beginning")
            self.epoch, self.block, self.batch = int(state["epoch"]), 0, 0
            return
        self.epoch, self.block, self.batch = int(state["epoch"]), int(state["block"]), int(state["batch"])

    def skipped_report(self) -> dict:
        """{} or {"unreadable": 2, "too_long": 1, "examples": ["path: reason", ...]}, each example counted once."""
        return self.skips.report()
