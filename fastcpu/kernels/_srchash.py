"""The source digest each Cython kernel build carries: SHA-256 (first 16 hex digits) over its
``.pyx`` and every local file it pulls in (``.pxd`` it cimports, headers and ``.pxi`` it
includes, recursively). ``_cybuild`` compares it with the checkout's sources to refuse stale
builds. Standard library only: setup.py loads this file by path, before fastcpu can import."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

_DEPS = re.compile(r'^\s*(?:from\s+(\w+)\s+cimport|cimport\s+(\w+)|cdef\s+extern\s+from\s+"([^"]+)"'
                   r'|include\s+"([^"]+)")', re.M)


def local_deps(pyx) -> list:
    """The files under the .pyx's directory that it depends on, itself first."""
    pyx = Path(pyx)
    root, seen, todo = pyx.parent, [pyx], [pyx]
    while todo:
        text = todo.pop().read_text(encoding="utf-8")
        for m in _DEPS.finditer(text):
            mod, mod2, header, inc = m.groups()
            name = f"{mod or mod2}.pxd" if (mod or mod2) else (header or inc)
            p = root / name
            if p.is_file() and p not in seen:
                seen.append(p)
                todo.append(p)
    return seen


def digest(pyx) -> str:
    pyx = Path(pyx)
    h = hashlib.sha256()
    for p in [pyx] + sorted(local_deps(pyx)[1:]):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]
