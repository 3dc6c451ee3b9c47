"""Praat TextGrid files (MFA's alignments): read the interval tiers, write one.

Reads the long ("ooTextFile" with ``key = value`` lines) and the short text format, UTF-8 or
UTF-16. ``phone_intervals(path)`` returns the ``phones`` tier as contiguous
``(start_s, end_s, label)`` triples in which MFA 2.x's empty intervals (its silences) and any
uncovered gaps become ``"sp"`` — the reference drops them, which shifts every later phone
against the audio. A file without a ``phones`` tier is an error naming the tiers it has.
"""
from __future__ import annotations

import re
from pathlib import Path

from fastcpu.data.dataset import DataError

# strings ("" escapes a quote), numbers, flags; "item [1]:"-style labels and keys are skipped
_TOKEN = re.compile(r'"((?:[^"]|"")*)"|(<exists>|<absent>)|\[\s*\d*\s*\]|'
                    r'(?<![\w\[])([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w\]])')


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 or UTF-16 text") from None


def read_tiers(path) -> dict:
    """-> {tier name: [(start, end, label), ...]} for interval tiers (point tiers skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such TextGrid")
    toks = []
    for m in _TOKEN.finditer(_read_text(path)):
        if m.group(1) is not None:
            toks.append(("s", m.group(1).replace('""', '"')))
        elif m.group(2) is not None:
            toks.append(("f", m.group(2)))
        elif m.group(3) is not None:
            toks.append(("n", float(m.group(3))))
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(toks) or toks[pos][0] != kind:
            got = toks[pos][1] if pos < len(toks) else "end of file"
            raise DataError(f"{path}: malformed TextGrid: expected {what}, got {got!r}")
        pos += 1
        return toks[pos - 1][1]

    if take("s", "'ooTextFile'") != "ooTextFile" or take("s", "'TextGrid'") != "TextGrid":
        raise DataError(f"{path}: not a TextGrid (expected 'ooTextFile' / 'TextGrid' header)")
    take("n", "xmin")
    take("n", "xmax")
    if take("f", "<exists>") != "<exists>":
        return {}
    tiers = {}
    for _ in range(int(take("n", "tier count"))):
        cls = take("s", "tier class")
        name = take("s", "tier name")
        take("n", "tier xmin")
        take("n", "tier xmax")
        n = int(take("n", "interval count"))
        if cls == "IntervalTier":
            tiers[name] = [(take("n", "xmin"), take("n", "xmax"), take("s", "label").strip())
                           for _ in range(n)]
        elif cls == "TextTier":
            for _ in range(n):
                take("n", "time")
                take("s", "mark")
        else:
            raise DataError(f"{path}: unknown tier class {cls!r}")
    return tiers


def phone_intervals(path, tier: str = "phones"):
    tiers = read_tiers(path)
    if tier not in tiers:
        raise DataError(f"{path}: no {tier!r} tier (tiers: "
                        f"{', '.join(repr(t) for t in tiers) or 'none'})")
    out, t = [], None
    for s, e, label in tiers[tier]:
        if e < s:
            raise DataError(f"{path}: interval ({s}, {e}) ends before it starts")
        if t is not None and s > t:
            out.append((t, s, "sp"))
        out.append((s, e, label or "sp"))
        t = e
    return out


def write(path, xmax: float, tiers: dict) -> None:
    """Write a long-format TextGrid; ``tiers``: {name: [(start, end, label)]}. Times are
    written with ``repr`` so they read back to the same floats."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "",
             "xmin = 0", f"xmax = {xmax!r}", "tiers? <exists>", f"size = {len(tiers)}",
             "item []:"]
    for i, (name, ivs) in enumerate(tiers.items(), 1):
        lines += [f"    item [{i}]:", '        class = "IntervalTier"',
                  f'        name = "{name}"', "        xmin = 0", f"        xmax = {xmax!r}",
                  f"        intervals: size = {len(ivs)}"]
        for k, (s, e, label) in enumerate(ivs, 1):
            label = label.replace('"', '""')
            lines += [f"        intervals [{k}]:", f"            xmin = {s!r}",
                      f"            xmax = {e!r}", f'            text = "{label}"']
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
