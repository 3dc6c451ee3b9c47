"""espeak-ng through its C API (ctypes): speech plus the exact sample position of every phoneme.

The legacy API is initialised in synchronous mode with phoneme events on
(``espeakINITIALIZE_PHONEME_EVENTS``); the synth callback receives the int16 samples and the
events, and each phoneme event carries ``sample``, its absolute start in samples. A phoneme
lasts until the next phoneme event (the final pause event ends at the last sample), so the
alignment is exact by construction — no forced aligner.

Phonemes arrive as espeak's English mnemonics with a stress prefix (``'`` primary, ``,``
secondary); ``PHONE_MAP`` maps each one to the reference's ARPAbet symbols (vowels get the stress
digit). An espeak phoneme missing from the table is an error naming it and the sentence.

The library comes from the ``espeakng-loader`` wheel (library and voice data bundled, pinned in
the ``data`` extra) or, failing that, the system's ``libespeak-ng`` (Debian ``espeak-ng``).
espeak-ng is needed only to (re)build a corpus, never to train.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

import numpy as np

SAMPLE_RATE = 22050

# espeak English mnemonic -> ARPAbet (without stress); a tuple splits the phoneme's samples
# evenly between the symbols. Names starting with "_" are pauses (-> "sp").
PHONE_MAP = {
    # consonants
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "f": "F", "v": "V",
    "T": "TH", "D": "DH", "s": "S", "z": "Z", "S": "SH", "Z": "ZH", "h": "HH", "tS": "CH",
    "dZ": "JH", "m": "M", "n": "N", "N": "NG", "l": "L", "r": "R", "w": "W", "j": "Y",
    "t#": "T", "d#": "D", "?": "T", "x": "K", "r-": "R", "n-": "N", "m-": "M", "l/": "L",
    "l/2": "L", "z/2": "Z", "s2": "S", "k/": "K", "t2": "T", "d2": "D", "h#": "HH",
    "@L": ("AH", "L"), "n#": "N", "w#": "W", "j2": "Y", "C": "HH", "nj": ("N", "Y"),
    # vowels
    "@": "AH", "@2": "AH", "@5": "AH", "a#": "AH", "V": "AH", "3": "ER", "3:": "ER",
    "a": "AE", "aa": "AA", "A:": "AA", "A@": ("AA", "R"), "0": "AA", "O:": "AO", "O": "AO",
    "O@": ("AO", "R"), "o@": ("AO", "R"), "E": "EH", "e@": ("EH", "R"), "eI": "EY", "i": "IY",
    "i:": "IY", "I": "IH", "I2": "IH", "I#": "IH", "i@": ("IH", "R"), "i@3": ("IH", "R"),
    "oU": "OW", "OI": "OY", "aI": "AY", "aU": "AW", "U": "UH", "u:": "UW", "U@": ("UH", "R"),
    "aI@": ("AY", "ER"), "aU@": ("AW", "ER"), "aI3": ("AY", "ER"), "u@": ("UH", "R"),
    "oU#": "OW", "e": "EH", "IR": ("IH", "R"), "VR": ("AH", "R"), "ER": ("EH", "R"),
    "0@": ("AA", "R"), "aI@3": ("AY", "ER"), "@-": "AH", "I2#": "IH", "eI#": "EY",
    "O2": "AO", "a2": "AE", "A": "AA", "E2": "EH", "aI2": "AY", "t[": "T", "d[": "D",
}
VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH",
          "UW"}
# espeak marks that are events but not sounds of their own: they get merged into the next phone
MODIFIERS = {";", "#", "|", "||"}


class EspeakError(RuntimeError):
    """espeak-ng missing, failing, or producing a phoneme the table does not know."""


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))
_EV_END_LIST, _EV_PHONEME = 0, 7
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS, _INIT_DONT_EXIT = 0x0001, 0x8000
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_RATE, _PITCH, _RANGE = 1, 3, 4        # espeak_PARAMETER: rate (wpm), base pitch, pitch range
_lock = threading.Lock()


def _load():
    try:
        import espeakng_loader as el
        return ctypes.CDLL(el.get_library_path()), el.get_data_path(), "espeakng-loader"
    except ImportError:
        pass
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise EspeakError("espeak-ng not found: pip install 'espeakng-loader==0.2.4' (or "
                          "`pip install -e .[data]`), or apt-get install espeak-ng")
    return ctypes.CDLL(name), None, name


class Espeak:
    """One espeak-ng instance (the library is process-global; use one at a time)."""

    def __init__(self):
        self.lib, data, self.source = _load()
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Info.restype = ctypes.c_char_p
        sr = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                        data.encode() if data else None,
                                        _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT)
        if sr != SAMPLE_RATE:
            raise EspeakError(f"espeak_Initialize returned {sr} (expected sample rate "
                              f"{SAMPLE_RATE}); data path {data}")
        self.version = self.lib.espeak_Info(None).decode()
        self._chunks, self._events = [], []
        self._cb = _CALLBACK(self._callback)      # keep a reference: espeak holds the pointer
        self.lib.espeak_SetSynthCallback(self._cb)
        self.voice = None

    def _callback(self, wav, n, events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EV_END_LIST:
            e = events[i]
            if e.type == _EV_PHONEME:
                self._events.append((int(e.sample),
                                     bytes(e.id.string).split(b"\0")[0].decode("utf-8")))
            i += 1
        return 0

    def set_voice(self, voice: str, rate: int | None = None, pitch: int | None = None,
                  pitch_range: int | None = None) -> None:
        """``rate`` in words per minute; ``pitch`` (base pitch) and ``pitch_range`` (how far
        the intonation moves) on espeak-ng's 0-100 scales (its defaults: 50 and 50)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            if value is not None:
                self.lib.espeak_SetParameter(param, int(value), 0)
        self.voice = voice

    def text_to_phonemes_clauses(self, text: str) -> list:
        """espeak-ng's phonemes for ``text`` without synthesising audio: clauses, each a list
        of words, each a list of phoneme names (the names its synthesis events carry)."""
        lib = self.lib
        if not getattr(self, "_t2p_ready", False):
            lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
            lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p),
                                                  ctypes.c_int, ctypes.c_int]
            self._t2p_ready = True
        buf = ctypes.create_string_buffer(text.encode("utf-8") + b"\0")
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        clauses = []
        with _lock:
            while ptr.value:
                # phoneme names separated by "_" (bits 8-23: the separator), words by spaces
                r = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, ord("_") << 8)
                if r is None:
                    break
                words = [[n for n in w.split("_") if n] for w in r.decode("utf-8").split()]
                if any(words):
                    clauses.append([w for w in words if w])
        return clauses

    def text_to_phonemes(self, text: str) -> list:
        return [n for clause in self.text_to_phonemes_clauses(text) for w in clause for n in w]

    def synth(self, text: str):
        """-> (int16 samples, [(start_sample, espeak phoneme name), ...]) in time order."""
        data = text.encode("utf-8") + b"\0"
        with _lock:
            self._chunks, self._events = [], []
            err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                        None, None)
            if err != 0:
                raise EspeakError(f"espeak_Synth failed with code {err} on {text!r}")
            self.lib.espeak_Synchronize()
            wav = (np.concatenate(self._chunks) if self._chunks
                   else np.zeros(0, np.int16)).astype(np.int16)
            return wav, list(self._events)


def to_arpabet(events, n_samples: int, where: str):
    """espeak phoneme events -> [(start_sample, end_sample, ARPAbet phone)], contiguous; pauses
    become "sp". Stress marks set the vowels' digit (' -> 1, , -> 2, none -> 0)."""
    out = []
    ends = [s for s, _ in events[1:]] + [n_samples]
    pending = None
    for (start, name), end in zip(events, ends):
        if pending is not None:
            start, pending = pending, None
        if name in MODIFIERS:
            pending = start
            continue
        stress = "0"
        core = name
        while core[:1] in ("'", ","):
            stress = "1" if core[0] == "'" else "2"
            core = core[1:]
        if core.startswith("_"):
            if out and out[-1][2] == "sp":        # a pause split into several events
                out[-1] = (out[-1][0], end, "sp")
            else:
                out.append((start, end, "sp"))
            continue
        target = PHONE_MAP.get(core)
        if target is None:
            raise EspeakError(f"{where}: espeak phoneme {name!r} has no ARPAbet mapping "
                              f"(fastcpu.data.espeak.PHONE_MAP)")
        parts = (target,) if isinstance(target, str) else target
        cuts = [start + (end - start) * k // len(parts) for k in range(len(parts) + 1)]
        for k, p in enumerate(parts):
            out.append((cuts[k], cuts[k + 1], p + stress if p in VOWELS else p))
    if pending is not None and out:
        s, _, p = out[-1]
        out[-1] = (s, n_samples, p)
    return out
