"""Listen to checkpoints side by side: one page, sentences by checkpoints.

    python -m fastcpu.compare --checkpoints runs/demo/checkpoints/step-00000200.safetensors,\\
        runs/demo/checkpoints/final.safetensors --sentences sentences.txt --out compare/

Synthesises every sentence of ``--sentences`` (``python -m fastcpu.synthesize --source``'s
format: one per line, or ``id|text``; a text in braces is phones) with every checkpoint, into
``OUT/<column>/`` (wav, mel image, JSON), and writes ``OUT/index.html``: a row per sentence, a
column per checkpoint, each cell an audio player, the mel image and the duration. The header
names each checkpoint by its file, its step and its metric: the MCD of ``python -m
fastcpu.select`` or ``evaluate`` when the run has one for it, else the validation loss logged
at its step. The page uses relative paths only (no script, no network): it works offline,
copied anywhere with its folder.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

from fastcpu.synthesize import SynthError

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 6px 8px; vertical-align: top; }
th { background: #f2f4f7; text-align: left; }
td.text { max-width: 16em; }
td img { display: block; width: 360px; margin-top: 4px; }
audio { width: 360px; }
.meta { color: #666; font-size: 12px; }
"""


def metric_of(ckpt: Path, step: int) -> str:
    """The metric the run knows for a checkpoint: MCD from select/evaluate, else the validation
    loss logged at its step; '' if neither."""
    run = ckpt.parent.parent
    sel = run / "selection.json"
    try:
        result = json.loads(sel.read_text())
        names = result["selected_from"] if ckpt.stem == "selected" else [ckpt.stem]
        for r in result["ranking"]:
            if names[0] in r["checkpoints"]:
                return f"MCD {r['mcd_db']:.2f} dB"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        s = json.loads((run / "eval" / ckpt.stem / "summary.json").read_text())
        return f"MCD {s['mcd_db']:.2f} dB"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from fastcpu.monitor import read_log
    vals = [r for r in read_log(run / "metrics.jsonl") if r.get("event") == "val"
            and r.get("step") == step and isinstance(r.get("loss"), dict)]
    if vals and isinstance(vals[-1]["loss"].get("total"), (int, float)):
        return f"val loss {vals[-1]['loss']['total']:.4f}"
    return ""


def columns(paths: list) -> list:
    """[(checkpoint path, column directory name, header)] with distinct directory names."""
    from fastcpu import checkpoint
    out, used = [], set()
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise SynthError(f"--checkpoints: {p}: no such file")
        try:
            meta = checkpoint.peek_meta(p)
            step = int(meta["state"]["step"])
        except (OSError, ValueError, KeyError, TypeError):
            raise SynthError(f"--checkpoints: {p}: not a fastcpu checkpoint") from None
        name = p.stem
        k = 2
        while name in used:
            name, k = f"{p.stem}-{k}", k + 1
        used.add(name)
        metric = metric_of(p, step)
        out.append((p, name, f"{p.stem}, step {step}" + (f", {metric}" if metric else "")))
    return out


def page(title: str, cols: list, sentences: list, out: Path) -> str:
    head = "".join(f"<th>{html.escape(h)}<div class=meta>{html.escape(str(p))}</div></th>"
                   for p, _, h in cols)
    rows = []
    for uid, text, _ in sentences:
        cells = [f"<td class=text><b>{html.escape(uid)}</b><br>{html.escape(text)}</td>"]
        for _, name, _ in cols:
            rec = out / name / f"{uid}.json"
            if not rec.is_file():
                cells.append("<td class=meta>not synthesised (see the command's output)</td>")
                continue
            r = json.loads(rec.read_text())
            img = (f'<img src="{name}/{uid}.png" alt="mel of {html.escape(uid)}">'
                   if (out / name / f"{uid}.png").is_file() else "")
            cells.append(f'<td><audio controls preload="metadata" src="{name}/{uid}.wav">'
                         f'</audio>{img}<div class=meta>{r["seconds"]:.2f} s, {r["frames"]} '
                         f'frames</div></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<link rel="icon" href="data:,">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table><tr><th>sentence</th>{head}</tr>"
            + "\n".join(rows) + "</table></body></html>\n")


def main(argv=None) -> int:
    from fastcpu import synthesize
    from fastcpu.cli import add_version
    ap = argparse.ArgumentParser(prog="python -m fastcpu.compare",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(ap)
    ap.add_argument("--checkpoints", required=True, help="comma-separated checkpoint files")
    ap.add_argument("--sentences", required=True, help="one sentence per line, or id|text")
    ap.add_argument("--out", required=True, help="output directory (index.html and a folder "
                                                 "per checkpoint)")
    ap.add_argument("--speaker", default="0")
    synthesize.add_vocoder_args(ap)
    ap.add_argument("--threads", type=int, default=0, help="0: every core")
    a = ap.parse_args(argv)
    out = Path(a.out)
    try:
        paths = [p.strip() for p in a.checkpoints.split(",") if p.strip()]
        if not paths:
            raise SynthError("--checkpoints: no files given")
        cols = columns(paths)
        sentences = synthesize.read_source(a.sentences)
    except SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    for k, (p, name, header) in enumerate(cols, 1):
        print(f"[{k}/{len(cols)}] {header}", file=sys.stderr)
        args = ["--checkpoint", str(p), "--source", a.sentences, "--out", str(out / name),
                "--speaker", a.speaker, "--vocoder", a.vocoder, "--griffin-lim-iters",
                str(a.griffin_lim_iters), "--threads", str(a.threads)]
        if a.vocoder_checkpoint:
            args += ["--vocoder-checkpoint", a.vocoder_checkpoint]
        rc = synthesize.main(args)
        if rc and not (out / name).is_dir():
            return rc                            # nothing written: the error is printed
        status = status or rc
    title = f"{len(sentences)} sentences, {len(cols)} checkpoints"
    (out / "index.html").write_text(page(title, cols, sentences, out), encoding="utf-8")
    print(f"wrote {out / 'index.html'}")
    return status


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
