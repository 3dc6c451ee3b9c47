"""Reader of the reference's preprocessed layout, and its batching with a resumable order.

Layout (spec §5.1)::

    ROOT/train.txt, val.txt      basename|speaker|{PH ON ES}|raw text     (UTF-8, one per line)
    ROOT/mel/{speaker}-mel-{basename}.npy         float [T, 80]
    ROOT/pitch/{speaker}-pitch-{basename}.npy     float [N]   (phoneme level, normalised)
    ROOT/energy/{speaker}-energy-{basename}.npy   float [N]
    ROOT/duration/{speaker}-duration-{basename}.npy  int [N], sum == T
    ROOT/stats.json   {"pitch": [min, max, mean, std], "energy": [...]}
    ROOT/speakers.json  {"name": id, ...}

Unlike the reference (which silently drops unknown phones and crashes later with a shape
mismatch), every problem is a ``DataError`` naming the file (and line, and phone): unknown phone,
malformed line, empty split file, missing ``.npy``, NaN/inf in a feature, a mel without 80 bins,
``len(phones) != len(duration|pitch|energy)``, ``sum(duration) != mel frames``. Shapes are checked
for every utterance when the corpus is opened (from the ``.npy`` headers); values when an
utterance is first loaded, or up front with ``validate()``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcpu.data.symbols import SYMBOL_TO_ID

KINDS = ("mel", "pitch", "energy", "duration")
_BRACES = re.compile(r"\{([^}]*)\}")


class DataError(ValueError):
    """Bad corpus data; the message names the file (and line) and what was expected."""


@dataclass
class Utterance:
    basename: str
    speaker: str
    phones: list
    raw_text: str
    line: int


def text_to_ids(text: str, where: str) -> np.ndarray:
    """``{PH ON ES}`` groups -> ids of "@PH"; characters outside braces map one by one.
    Unknown symbols are errors (the reference drops them silently)."""
    ids, pos = [], 0
    for m in _BRACES.finditer(text):
        for ch in text[pos:m.start()]:
            if ch not in SYMBOL_TO_ID:
                raise DataError(f"{where}: unknown character {ch!r}")
            ids.append(SYMBOL_TO_ID[ch])
        for ph in m.group(1).split():
            sid = SYMBOL_TO_ID.get("@" + ph)
            if sid is None:
                raise DataError(f"{where}: unknown phone {ph!r} (not in the 361-symbol table)")
            ids.append(sid)
        pos = m.end()
    for ch in text[pos:]:
        if ch not in SYMBOL_TO_ID:
            raise DataError(f"{where}: unknown character {ch!r}")
        ids.append(SYMBOL_TO_ID[ch])
    return np.asarray(ids, dtype=np.int64)


def read_split(path) -> list:
    """Parse train.txt / val.txt into Utterances (phones validated against the symbol table)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 4:
            raise DataError(f"{path}:{n}: expected 4 '|'-separated fields "
                            f"(basename|speaker|{{phones}}|text), got {len(parts)}")
        base, spk, text, raw = parts
        text = text.strip()
        if not (text.startswith("{") and text.endswith("}")) or not text[1:-1].split():
            raise DataError(f"{path}:{n}: phones must be a non-empty '{{...}}' group, got "
                            f"{text[:40]!r}")
        ids = text_to_ids(text, f"{path}:{n}")
        out.append(Utterance(base, spk, list(ids), raw, n))
    if not out:
        raise DataError(f"{path}: no utterances (empty split file)")
    return out


def front_end_of(root, speakers) -> dict:
    """A corpus's ``front_end.json``; for a corpus written before it existed, inferred: espeak-ng
    if every speaker is one of the builder's ("espeak_*"), else CMUdict, marked "inferred"."""
    p = Path(root) / "front_end.json"
    if p.is_file():
        try:
            fe = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise DataError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(fe, dict) or fe.get("kind") not in ("espeak", "lexicon"):
            raise DataError(f"{p}: 'kind' must be \"espeak\" or \"lexicon\", got "
                            f"{fe.get('kind') if isinstance(fe, dict) else fe!r}")
        return fe
    if speakers and all(str(s).startswith("espeak_") for s in speakers):
        return {"kind": "espeak", "voice": "en-us", "inferred": True}
    return {"kind": "lexicon", "lexicon": "cmudict", "inferred": True}


def synthesis_record(corpus) -> dict:
    """What synthesis needs from the corpus a model was trained on, kept in every checkpoint
    (``meta["synthesis"]``): speakers, pitch/energy statistics, the front end, the symbols."""
    from fastcpu.data.symbols import SYMBOLS
    return {"speakers": dict(corpus.speakers), "stats": dict(corpus.stats),
            "front_end": dict(corpus.front_end), "symbols": list(SYMBOLS)}


class PreprocessedCorpus:
    """One split of a preprocessed corpus; items are dicts like the reference's Dataset."""

    def __init__(self, root, split: str = "train.txt"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: corpus directory not found")
        self.split = self.root / split
        self.utts = read_split(self.split)
        self.stats = self._json("stats.json")
        self.speakers = self._json("speakers.json")
        self.front_end = front_end_of(self.root, self.speakers)
        for k in ("pitch", "energy"):
            v = self.stats.get(k)
            if not (isinstance(v, list) and len(v) == 4):
                raise DataError(f"{self.root / 'stats.json'}: '{k}' must be [min, max, mean, "
                                f"std], got {v!r}")
        self._checked = set()
        frames = []
        for u in self.utts:
            if u.speaker not in self.speakers:
                raise DataError(f"{self.split}:{u.line}: speaker {u.speaker!r} is not in "
                                f"speakers.json")
            frames.append(self._check_shapes(u))
        self.frames = np.array(frames, dtype=np.int64)     # mel frames per utterance

    def _json(self, name):
        p = self.root / name
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        try:
            return json.loads(p.read_text())
        except ValueError as e:
            raise DataError(f"{p}: not valid JSON ({e})") from None

    def path(self, u: Utterance, kind: str) -> Path:
        return self.root / kind / f"{u.speaker}-{kind}-{u.basename}.npy"

    def _open(self, u, kind, mmap=True):
        p = self.path(u, kind)
        if not p.is_file():
            raise DataError(f"{p}: missing (utterance {u.basename!r}, {self.split.name} line "
                            f"{u.line})")
        try:
            return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{p}: unreadable .npy ({e})") from None

    def _check_shapes(self, u):
        a = {k: self._open(u, k) for k in KINDS}
        n, mel = len(u.phones), a["mel"]
        where = f"{self.split}:{u.line} ({u.basename})"
        if mel.ndim != 2 or mel.shape[1] != 80:
            raise DataError(f"{self.path(u, 'mel')}: mel must be [frames, 80], got "
                            f"{list(mel.shape)}")
        for k in ("pitch", "energy", "duration"):
            if a[k].shape != (n,):
                raise DataError(f"{where}: {n} phones but {k} has shape {list(a[k].shape)} "
                                f"({self.path(u, k)})")
        return mel.shape[0]

    def load(self, i: int) -> dict:
        u = self.utts[i]
        a = {k: np.asarray(self._open(u, k, mmap=False)) for k in KINDS}
        if i not in self._checked:
            for k in KINDS:
                want = "iu" if k == "duration" else "f"
                if a[k].dtype.kind not in want:
                    kind = "integer" if want == "iu" else "float"
                    raise DataError(f"{self.path(u, k)}: expected {kind} values, got "
                                    f"{a[k].dtype}")
                with np.errstate(over="ignore"):          # beyond float32 -> inf: reported
                    finite = np.all(np.isfinite(a[k].astype(np.float32)))
                if not finite:
                    raise DataError(f"{self.path(u, k)}: non-finite values (NaN or inf"
                                    f"{', or beyond float32' if a[k].dtype.itemsize > 4 else ''})")
            d = a["duration"]
            if d.dtype.kind not in "iu" or (d < 0).any():
                raise DataError(f"{self.path(u, 'duration')}: durations must be non-negative "
                                f"integers")
            if int(d.sum()) != a["mel"].shape[0]:
                raise DataError(f"{self.split}:{u.line} ({u.basename}): sum(duration) = "
                                f"{int(d.sum())} but the mel has {a['mel'].shape[0]} frames")
            self._checked.add(i)
        return {"id": u.basename, "speaker": self.speakers[u.speaker],
                "text": np.asarray(u.phones, np.int64), "raw_text": u.raw_text,
                "mel": a["mel"].astype(np.float32), "pitch": a["pitch"].astype(np.float32),
                "energy": a["energy"].astype(np.float32), "duration": a["duration"].astype(
                    np.int64)}

    def validate(self, cache: bool = False) -> bool:
        """Check every value of every utterance now (otherwise done on first load). With
        ``cache``, a summary keyed by the split file's and every feature file's size and mtime
        (in ``$XDG_CACHE_HOME/fastcpu``) spares a restart re-reading an unchanged corpus.
        -> True if the files were read now, False if the cache vouched for them."""
        marker = self._marker() if cache else None
        key = self._fingerprint() if marker else None
        if marker is not None and marker.is_file() and marker.read_text() == key:
            self._checked.update(range(len(self)))
            return False
        for i in range(len(self)):
            self.load(i)
        if marker is not None:
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(key)
            except OSError:
                pass                                   # no cache: checked again next time
        return True

    def _marker(self):
        import hashlib
        import os
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastcpu"
        name = hashlib.sha256(str(self.split.resolve()).encode()).hexdigest()[:24]
        return base / "validated" / f"{name}.key"

    def _fingerprint(self) -> str:
        import hashlib
        h = hashlib.sha256()
        for p in [self.split] + [self.path(u, k) for u in self.utts for k in KINDS]:
            try:
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"{p.name}:missing;".encode())
        return h.hexdigest()

    def __len__(self):
        return len(self.utts)

    def text_lengths(self) -> np.ndarray:
        return np.array([len(u.phones) for u in self.utts])


@dataclass
class Batch:
    """One zero-padded batch, the reference's 12-field tuple with names: ids, raw_texts, speakers
    (B,), texts (B, L) phone ids, text_lens (B,), max_text_len, mels (B, T, 80), mel_lens (B,),
    max_mel_len, pitches / energies (B, L) float32, durations (B, L) frames per phone."""
    ids: list
    raw_texts: list
    speakers: np.ndarray
    texts: np.ndarray
    text_lens: np.ndarray
    max_text_len: int
    mels: np.ndarray
    mel_lens: np.ndarray
    max_mel_len: int
    pitches: np.ndarray
    energies: np.ndarray
    durations: np.ndarray
    # a data-parallel rank's rows of a global batch: the first row's place in it, and the
    # whole batch's frames and phonemes (None: this is the whole batch)
    offset: int = 0
    global_counts: tuple | None = None

    def __len__(self) -> int:
        return len(self.text_lens)

    @property
    def frames(self) -> int:
        return int(self.mel_lens.sum())

    @property
    def phones(self) -> int:
        return int(self.text_lens.sum())

    def one(self, i: int = 0) -> "Batch":
        """Utterance i alone, trimmed to its own lengths."""
        n, t = int(self.text_lens[i]), int(self.mel_lens[i])
        return Batch([self.ids[i]], [self.raw_texts[i]], self.speakers[i:i + 1],
                     self.texts[i:i + 1, :n], self.text_lens[i:i + 1], n,
                     self.mels[i:i + 1, :t], self.mel_lens[i:i + 1], t,
                     self.pitches[i:i + 1, :n], self.energies[i:i + 1, :n],
                     self.durations[i:i + 1, :n])


def collate(items: list, pad_to=None) -> Batch:
    """Zero-padded ``Batch`` of loaded utterances (``PreprocessedCorpus.load``); ``pad_to``:
    (phones, frames) to pad to instead of the items' own longest (a data-parallel rank's rows
    of a global batch are padded like the whole batch)."""
    B = len(items)
    text_lens = np.array([len(x["text"]) for x in items])
    mel_lens = np.array([x["mel"].shape[0] for x in items])
    L, T = int(text_lens.max()), int(mel_lens.max())
    if pad_to is not None:
        L, T = max(L, int(pad_to[0])), max(T, int(pad_to[1]))
    texts = np.zeros((B, L), np.int64)
    durations = np.zeros((B, L), np.int64)
    pitches = np.zeros((B, L), np.float32)
    energies = np.zeros((B, L), np.float32)
    mels = np.zeros((B, T, 80), np.float32)
    for b, x in enumerate(items):
        n, t = text_lens[b], mel_lens[b]
        texts[b, :n], durations[b, :n] = x["text"], x["duration"]
        pitches[b, :n], energies[b, :n] = x["pitch"], x["energy"]
        mels[b, :t] = x["mel"]
    return Batch([x["id"] for x in items], [x["raw_text"] for x in items],
                 np.array([x["speaker"] for x in items], np.int64), texts, text_lens, L, mels,
                 mel_lens, T, pitches, energies, durations)


class Batcher:
    """The reference's batching with a seeded, resumable order.

    Each epoch shuffles the utterances with ``seed`` and the epoch number; every group of
    ``batch_size * group_size`` is sorted by text length (descending) and cut into sub-batches of
    ``batch_size`` (each one training step); with ``drop_last`` a group's remainder is dropped,
    otherwise it is an extra, smaller sub-batch. ``state_dict()`` records the position (epoch and
    the next sub-batch), so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, n_items: int, text_lengths, batch_size: int, group_size: int = 4,
                 seed: int = 0, drop_last: bool = True, shuffle: bool = True):
        if batch_size < 1 or group_size < 1:
            raise ValueError("batch_size and group_size must be >= 1")
        if drop_last and n_items < batch_size:
            raise ValueError(f"{n_items} utterances cannot fill one batch of {batch_size}")
        self.n, self.lengths = n_items, np.asarray(text_lengths)
        self.bs, self.gs, self.seed = batch_size, group_size, seed
        self.drop_last, self.shuffle = drop_last, shuffle
        self.epoch, self.pos = 0, 0
        self._cache = {}

    def _batches(self, epoch: int) -> list:
        if epoch not in self._cache:
            self._cache = {epoch: self.epoch_batches(epoch)}
        return self._cache[epoch]

    def next(self):
        """The next sub-batch from the current position -> (indices, the epoch it completed, or
        None). Advances the position (recorded by ``state_dict``)."""
        batches = self._batches(self.epoch)
        if self.pos >= len(batches):
            self.epoch, self.pos = self.epoch + 1, 0
            batches = self._batches(self.epoch)
        idx = batches[self.pos]
        self.pos += 1
        return idx, (self.epoch if self.pos >= len(batches) else None)

    def epochs_done(self) -> int:
        """Epochs completely consumed."""
        return self.epoch + (self.pos >= len(self._batches(self.epoch)))

    def epoch_batches(self, epoch: int) -> list:
        """The sub-batches (index arrays) of one epoch, in order."""
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        out = []
        g = self.bs * self.gs
        for s in range(0, self.n, g):
            grp = order[s:s + g]
            grp = grp[np.argsort(-self.lengths[grp], kind="stable")]
            full = len(grp) - len(grp) % self.bs
            out += [grp[i:i + self.bs] for i in range(0, full, self.bs)]
            if not self.drop_last and full < len(grp):
                out.append(grp[full:])
        return out

    def steps_per_epoch(self) -> int:
        return len(self.epoch_batches(0))

    def __iter__(self):
        """Sub-batches from the current position onwards, across epochs (advance as consumed)."""
        while True:
            batches = self.epoch_batches(self.epoch)
            while self.pos < len(batches):
                b = batches[self.pos]
                self.pos += 1
                yield self.epoch, b
            self.epoch, self.pos = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, st: dict) -> None:
        if st["seed"] != self.seed:
            raise ValueError(f"sampler state was made with seed {st['seed']}, this run has "
                             f"{self.seed}")
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])
