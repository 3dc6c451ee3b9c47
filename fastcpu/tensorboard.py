"""TensorBoard event files written directly (no TensorFlow / tensorboard package needed).

An event file is a sequence of TFRecords (``uint64 length, masked crc32c(length), data,
masked crc32c(data)``), each an ``Event`` protocol buffer; the few message fields used here are
encoded by hand: Event{wall_time=1 double, step=2 int64, file_version=3 string, summary=5},
Summary{value=1 repeated}, Value{tag=1, simple_value=2 float, image=4, audio=6},
Image{height=1, width=2, colorspace=3, encoded_image_string=4 (PNG)},
Audio{sample_rate=1 float, num_channels=2, length_frames=3, encoded_audio_string=4 (WAV),
content_type=5}. ``read_events`` parses them back (checking every CRC) for tests and tools.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import time
import wave
import zlib
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------- crc32c


def _crc_table():
    poly = 0x82F63B78                      # Castagnoli, reflected
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        t.append(c)
    return t


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    t = _TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------- protobuf


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def _pb_bytes(num, b: bytes) -> bytes:
    return _field(num, 2) + _varint(len(b)) + b


def _pb_int(num, n: int) -> bytes:
    return _field(num, 0) + _varint(int(n))


def _pb_float(num, x: float) -> bytes:
    return _field(num, 5) + struct.pack("<f", x)


def _pb_double(num, x: float) -> bytes:
    return _field(num, 1) + struct.pack("<d", x)


def _parse(buf: bytes) -> list:
    """-> [(field number, value)] (varint -> int, 64-bit -> double, 32-bit -> float,
    length-delimited -> bytes)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
        elif wire == 1:
            v, i = struct.unpack_from("<d", buf, i)[0], i + 8
        elif wire == 5:
            v, i = struct.unpack_from("<f", buf, i)[0], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((num, v))
    return out


def _read_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


# ------------------------------------------------------------------------------ encoders


def png(rgb: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def wav_bytes(x: np.ndarray, sr: int) -> bytes:
    """float samples in [-1, 1] -> 16-bit PCM WAV bytes."""
    pcm = (np.clip(np.asarray(x, np.float64), -1, 1) * 32767).astype("<i2")
    f = io.BytesIO()
    with wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sr))
        w.writeframes(pcm.tobytes())
    return f.getvalue()


_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                     [253, 231, 37]], dtype=np.float64)       # a viridis-like ramp


def colorize(a: np.ndarray, lo=None, hi=None) -> np.ndarray:
    """2-D array -> uint8 RGB image [H, W, 3] (row 0 at the top)."""
    a = np.asarray(a, np.float64)
    lo = np.min(a) if lo is None else lo
    hi = np.max(a) if hi is None else hi
    t = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_ANCHORS) - 1)
    k = np.minimum(t.astype(int), len(_ANCHORS) - 2)
    f = (t - k)[..., None]
    return (_ANCHORS[k] * (1 - f) + _ANCHORS[k + 1] * f).round().astype(np.uint8)


def mel_image(*mels) -> np.ndarray:
    """Mel spectrograms [T, 80] stacked vertically (low bins at the bottom of each), one shared
    colour scale, 2 px separators."""
    lo = min(float(np.min(m)) for m in mels)
    hi = max(float(np.max(m)) for m in mels)
    T = max(m.shape[0] for m in mels)
    rows = []
    for m in mels:
        img = np.full((m.shape[1], T), lo)
        img[:, :m.shape[0]] = np.asarray(m, np.float64).T[::-1]
        rows += [colorize(img, lo, hi), np.full((2, T, 3), 255, np.uint8)]
    return np.concatenate(rows[:-1], axis=0)


# -------------------------------------------------------------------------------- writer


class SummaryWriter:
    """Append-only TensorBoard event file in ``logdir``."""

    def __init__(self, logdir):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.fastcpu")
        self.path = self.logdir / name
        self._f = open(self.path, "ab")
        self._write(_pb_double(1, time.time()) + _pb_bytes(3, b"brain.Event:2"))

    def _write(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        self._f.write(header + struct.pack("<I", _masked(header)) + event +
                      struct.pack("<I", _masked(event)))

    def _summary(self, value: bytes, step: int) -> None:
        self._write(_pb_double(1, time.time()) + _pb_int(2, step) +
                    _pb_bytes(5, _pb_bytes(1, value)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._summary(_pb_bytes(1, tag.encode()) + _pb_float(2, float(value)), step)

    def add_scalars(self, prefix: str, values: dict, step: int) -> None:
        for k, v in values.items():
            self.add_scalar(f"{prefix}/{k}", v, step)

    def add_image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        h, w = rgb.shape[:2]
        img = _pb_int(1, h) + _pb_int(2, w) + _pb_int(3, 3) + _pb_bytes(4, png(rgb))
        self._summary(_pb_bytes(1, tag.encode()) + _pb_bytes(4, img), step)

    def add_audio(self, tag: str, x: np.ndarray, sr: int, step: int) -> None:
        aud = (_pb_float(1, float(sr)) + _pb_int(2, 1) + _pb_int(3, len(x)) +
               _pb_bytes(4, wav_bytes(x, sr)) + _pb_bytes(5, b"audio/wav"))
        self._summary(_pb_bytes(1, tag.encode()) + _pb_bytes(6, aud), step)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_events(path) -> list:
    """Parse an event file -> [{"step", "wall_time", "scalars": {tag: v}, "images": {tag:
    (h, w, png)}, "audio": {tag: (sr, n, wav)}}]; a bad CRC raises ValueError."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8:i + 12])[0] != _masked(header):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        event = data[i + 12:i + 12 + n]
        if struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] != _masked(event):
            raise ValueError(f"{path}: bad data CRC at byte {i}")
        i += 16 + n
        ev = {"step": 0, "wall_time": 0.0, "scalars": {}, "images": {}, "audio": {}}
        for num, v in _parse(event):
            if num == 1:
                ev["wall_time"] = v
            elif num == 2:
                ev["step"] = v
            elif num == 3:
                ev["file_version"] = v.decode()
            elif num == 5:
                for _, val in _parse(v):
                    f = dict(_parse(val))
                    tag = f[1].decode()
                    if 2 in f:
                        ev["scalars"][tag] = f[2]
                    elif 4 in f:
                        im = dict(_parse(f[4]))
                        ev["images"][tag] = (im[1], im[2], im[4])
                    elif 6 in f:
                        au = dict(_parse(f[6]))
                        ev["audio"][tag] = (au[1], au[3], au[4])
        out.append(ev)
    return out
