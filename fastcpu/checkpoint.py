"""Checkpoints: safetensors for tensors, JSON for everything else, no pickle.

One file per checkpoint: a safetensors file whose ``__metadata__`` holds
``{"fastcpu": <JSON of the non-tensor state>, "sha256": <digest>}``. The digest covers the whole
file with the digest itself replaced by zeros, so a truncated file or any flipped byte (header,
metadata or tensor data) is refused on load with a message naming the file. Writes are atomic:
temp file in the same directory, fsync, rename, fsync of the directory.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "fastcpu-checkpoint-1"
_PLACEHOLDER = "0" * 64


class CheckpointError(ValueError):
    pass


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _c(a):
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")     # keeps 0-d arrays 0-d


def dumps(tensors: dict, meta: dict) -> bytes:
    from safetensors.numpy import save
    arrays = {k: _c(v) for k, v in tensors.items()}
    metadata = {"format": FORMAT, "fastcpu": json.dumps(meta),
                "sha256": _PLACEHOLDER}
    blob = save(arrays, metadata=metadata)
    digest = _digest(blob)
    out = blob.replace(_PLACEHOLDER.encode(), digest.encode(), 1)
    if len(out) != len(blob):
        raise AssertionError("checkpoint digest changed the header length")
    return out


def loads(blob: bytes, name: str = "<bytes>"):
    """(tensors, meta) from checkpoint bytes; CheckpointError on any corruption."""
    from safetensors.numpy import load
    if len(blob) < 8:
        raise CheckpointError(f"{name}: truncated checkpoint ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise CheckpointError(f"{name}: truncated or corrupted checkpoint (header says {n} "
                              f"bytes, file has {len(blob) - 8})")
    try:
        header = json.loads(blob[8:8 + n])
        md = header["__metadata__"]
        digest = md["sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{name}: corrupted checkpoint header (not a fastcpu checkpoint?)")\
            from None
    check = blob.replace(digest.encode(), _PLACEHOLDER.encode(), 1)
    if len(digest) != 64 or _digest(check) != digest:
        raise CheckpointError(f"{name}: checksum mismatch — the file is corrupted or truncated")
    if md.get("format") != FORMAT:
        raise CheckpointError(f"{name}: unknown checkpoint format {md.get('format')!r}")
    try:
        tensors = load(blob)
    except Exception as e:                                   # safetensors' own errors
        raise CheckpointError(f"{name}: unreadable tensors ({e})") from None
    return tensors, json.loads(md["fastcpu"])


def save(path, tensors: dict, meta: dict) -> Path:
    """Atomically write a checkpoint to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = dumps(tensors, meta)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def load(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return loads(path.read_bytes(), str(path))


# ----------------------------------------------------------------------------- model + optimizer

def save_training_state(path, model, optimizer=None, meta: dict | None = None) -> Path:
    """Model state_dict under ``model/``, Adam moments under ``optim/`` and meta as JSON."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = dict(meta or {})
    if optimizer is not None:
        tensors.update({f"optim/{k}": v for k, v in optimizer.state_tensors().items()})
        meta["optimizer_step"] = optimizer.t
    return save(path, tensors, meta)


def apply_training_state(tensors: dict, meta: dict, model, optimizer=None) -> dict:
    """Load checkpoint contents (``load``'s result) into ``model`` (strict) and ``optimizer``;
    returns the meta dict."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    if optimizer is not None:
        optimizer.load_state_tensors({k[6:]: v for k, v in tensors.items()
                                      if k.startswith("optim/")}, meta.get("optimizer_step", 0))
    return meta


def load_training_state(path, model, optimizer=None) -> dict:
    """Load into ``model`` (strict) and ``optimizer``; returns the meta dict."""
    tensors, meta = load(path)
    return apply_training_state(tensors, meta, model, optimizer)


def peek_meta(path) -> dict:
    """The JSON metadata from a checkpoint's header alone — cheap, and *not* verified (the
    checksum covers the whole file: use ``load`` before trusting anything)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(min(n, 1 << 24)))
    return json.loads(header["__metadata__"]["fastcpu"])


# ----------------------------------------------------------------------------- training runs

@dataclass
class TrainState:
    """The counters of a training run besides weights and moments: what a checkpoint records
    so that a resumed run continues exactly (``to_meta``/``from_meta``: its JSON form)."""
    step: int = 0                  # loop steps done (each consumes one accumulation window)
    best_val: float = math.inf
    bad_vals: int = 0              # validations since the best (early stopping)
    nonfinite: int = 0             # non-finite steps in a row
    pending_val: bool = False      # a validation was interrupted: redo it first on resume
    train_avg: float | None = None     # running mean of the training loss (divergence check)
    best_step: int | None = None   # the step of the best validation (retention keeps its files)
    sampler: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)

    def to_meta(self) -> dict:
        d = asdict(self)
        d["best_val"] = None if not math.isfinite(self.best_val) else self.best_val
        return d

    @classmethod
    def from_meta(cls, d: dict) -> "TrainState":
        return cls(step=int(d["step"]), best_val=math.inf if d["best_val"] is None
                   else float(d["best_val"]), bad_vals=int(d["bad_vals"]),
                   nonfinite=int(d["nonfinite"]), pending_val=bool(d["pending_val"]),
                   train_avg=d["train_avg"], sampler=d["sampler"], rng=d["rng"],
                   best_step=d.get("best_step"))


KINDS = ("step", "epoch", "best", "final", "interrupted", "emergency")


def find(path, log=None, resumable=False) -> list:
    """Checkpoint files under a run or checkpoint directory, newest (highest step) first;
    files whose header cannot be read last (``log`` says so); what is not a file (a dangling
    link, a directory) is passed over with a note. ``resumable``: without the weights-only
    files (``best`` by default)."""
    path = Path(path)
    d = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = []
    for p in d.glob("*.safetensors"):
        if not p.is_file():
            if log:
                log(f"note: {p} is not a checkpoint file (a dangling link?); passed over")
            continue
        try:
            meta = peek_meta(p)
            if resumable and meta.get("weights_only"):
                continue
            found.append((int(meta["state"]["step"]), p.stat().st_mtime, p))
        except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError, struct.error):
            if log:
                log(f"warning: {p}: header unreadable (corrupted?); tried last")
            found.append((-1, p.stat().st_mtime, p))
    return [p for _, _, p in sorted(found, reverse=True)]


def remove_stale_temps(directory, log=None) -> int:
    """Remove temp files that killed writers left behind (``.NAME.tmp-PID`` of a PID that no
    longer runs); -> how many."""
    n = 0
    for p in Path(directory).glob(".*.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    if n and log:
        log(f"note: removed {n} temp file(s) of interrupted checkpoint writes in {directory}")
    return n


def resolve(target, log=print):
    """-> (path, tensors, meta) to resume from: a file must be good; a directory falls back past
    corrupted files to the newest good one. CheckpointError otherwise."""
    p = Path(target)
    if p.is_file():
        t, m = load(p)
        return p, t, m
    if not p.is_dir():
        raise CheckpointError(f"--resume-from {p}: no such file or directory")
    cands = find(p, log, resumable=True)
    for c in cands:
        try:
            t, m = load(c)
            return c, t, m
        except CheckpointError as e:
            log(f"warning: skipping {e}")
    raise CheckpointError(f"--resume-from {p}: no usable checkpoint ({len(cands)} file(s) "
                          f"found, none loadable)")


class Series:
    """The checkpoints of one run directory: names by kind, retention of the periodic kinds."""

    def __init__(self, run_dir, keep_last: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def path(self, kind: str, step: int, epoch=None) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {kind!r}")
        name = (f"step-{step:08d}" if kind == "step" else
                f"epoch-{epoch:04d}" if kind == "epoch" else kind)
        return self.dir / f"{name}.safetensors"

    def save(self, kind: str, model, optimizer, meta: dict, epoch=None) -> Path:
        path = save_training_state(self.path(kind, meta["state"]["step"], epoch), model,
                                   optimizer, meta)
        if kind in ("step", "epoch"):
            self.retain(kind, meta["state"].get("best_step"))
        return path

    def slim_periodic(self) -> int:
        """Rewrite the step and epoch files weights-only (their Adam moments dropped), for a
        finished run that resumes from ``final``; -> how many were rewritten."""
        n = 0
        for kind in ("step", "epoch"):
            for p in sorted(self.dir.glob(f"{kind}-*.safetensors")):
                tensors, meta = load(p)
                if meta.get("weights_only"):
                    continue
                meta["weights_only"] = True
                meta.pop("optimizer_step", None)
                save(p, {k: v for k, v in tensors.items() if not k.startswith("optim/")}, meta)
                n += 1
        return n

    def retain(self, kind: str, best_step=None) -> None:
        """Delete all but the newest ``keep_last`` files of a periodic kind — never the newest,
        and never one written at the best validation's step (``best`` itself is weights-only by
        default; that file keeps its full state, for fine-tuning or resuming from the best)."""
        if self.keep_last <= 0:
            return
        files = sorted(self.dir.glob(f"{kind}-*.safetensors"))
        for p in files[:-self.keep_last]:
            if best_step is not None:
                try:
                    if int(peek_meta(p)["state"]["step"]) == best_step:
                        continue
                except (OSError, ValueError, KeyError, TypeError, struct.error):
                    pass
            p.unlink()
