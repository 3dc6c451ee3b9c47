"""How a training run went, as one HTML page.

    python -m fastcpu.report runs/demo            # -> runs/demo/report/index.html
    python -m fastcpu.report runs/demo --out DIR

Reads the run's ``metrics.jsonl`` (and its checkpoints, ``selection.json`` and ``eval/``) and
writes ``index.html`` with the PNGs it shows (matplotlib): each loss term's training and
validation curve; the learning rate; the pre-clip gradient norm against the clip threshold; step
time and frames/s; the checkpoints; the evaluation metrics when ``select`` or ``evaluate`` left
any; and a diagnosis in words of the signs to watch for — epochs whose mean training loss rose,
gradient-norm spikes, validation loss rising while the training loss falls (over-fitting),
how long the validation loss has not improved (a plateau), skipped non-finite steps.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import numpy as np

SPIKE = 5.0            # a grad norm this many times the median of the 50 steps before it
RISE = 0.05            # validation this much above its best, training still falling: over-fit


class ReportError(ValueError):
    pass


def load(run: Path) -> dict:
    """The run's records by event, its config and the clip threshold."""
    from fastcpu.monitor import read_log
    log = run / "metrics.jsonl"
    if not log.is_file():
        raise ReportError(f"{log}: no such file (is {run} a fastcpu run directory?)")
    recs = read_log(log)
    ev = {k: [r for r in recs if r.get("event") == k and isinstance(r.get("step"), int)]
          for k in ("train", "val", "skip", "checkpoint")}
    ev["train"] = [r for r in ev["train"] if isinstance(r.get("loss"), dict)
                   and isinstance(r.get("grad_norm"), (int, float))]
    if not ev["train"]:
        raise ReportError(f"{log}: no training steps recorded yet")
    start = [r for r in recs if r.get("event") == "start" and isinstance(r.get("config"), dict)]
    cfg = start[-1]["config"] if start else {}
    ev["clip"] = float(cfg.get("optimizer", {}).get("grad_clip_thresh", 1.0))
    ev["name"] = cfg.get("name") or run.name
    ev["total_step"] = start[-1].get("total_step") if start else None
    ev["end"] = next((r for r in reversed(recs) if r.get("event") == "end"), None)
    return ev


def loss_curves(records: list) -> dict:
    """term -> (steps, values) of train or val records."""
    terms = records[0]["loss"] if records else {}
    return {k: ([r["step"] for r in records if isinstance(r["loss"].get(k), (int, float))],
                [r["loss"][k] for r in records if isinstance(r["loss"].get(k), (int, float))])
            for k in terms}


def _median_before(x: np.ndarray, window: int = 50) -> np.ndarray:
    return np.array([np.median(x[max(0, i - window):i]) if i else np.nan
                     for i in range(len(x))])


def spikes(steps: np.ndarray, norms: np.ndarray) -> list:
    """Steps whose pre-clip grad norm is SPIKE x the median of the 50 before it (past the first
    20 steps, where the norm falls fast by nature)."""
    med = _median_before(norms)
    hit = (np.arange(len(norms)) >= 20) & (norms > SPIKE * med)
    return [(int(s), float(n), float(m)) for s, n, m in zip(steps[hit], norms[hit], med[hit])]


def diagnose(ev: dict) -> list:
    """[(level, sentence)]: level "ok", "note" or "warning"."""
    out = []
    tr = ev["train"]
    steps = np.array([r["step"] for r in tr])
    total = np.array([r["loss"]["total"] for r in tr], float)
    epochs = np.array([r.get("epoch", 0) for r in tr])
    # epochs whose mean training loss rose over the previous epoch's
    means = [(int(e), float(total[epochs == e].mean())) for e in np.unique(epochs)]
    rose = [(e, m, p) for (e, m), (_, p) in zip(means[1:], means[:-1]) if m > p]
    if rose:
        out.append(("warning" if len(rose) > max(1, len(means) // 4) else "note",
                    f"the mean training loss rose in {len(rose)} of {len(means)} epochs: " +
                    ", ".join(f"epoch {e} ({p:.3f} -> {m:.3f})" for e, m, p in rose[:6])
                    + (" ..." if len(rose) > 6 else "")))
    elif len(means) > 1:
        out.append(("ok", f"the mean training loss fell in every one of {len(means)} epochs"))
    # gradient norm
    norms = np.array([r["grad_norm"] for r in tr], float)
    sp = spikes(steps, norms)
    clipped = float(np.mean(norms > ev["clip"]))
    if sp:
        out.append(("warning" if len(sp) > 3 else "note",
                    f"{len(sp)} gradient-norm spike(s) over {SPIKE:g}x the recent median: "
                    + ", ".join(f"step {s} ({n:.1f} vs {m:.2f})" for s, n, m in sp[:6])
                    + (" ..." if len(sp) > 6 else "")))
    else:
        out.append(("ok", f"no gradient-norm spikes (none over {SPIKE:g}x the median of the 50 "
                          f"steps before)"))
    out.append(("note" if clipped > 0.5 else "ok",
                f"{clipped:.0%} of the steps were clipped (pre-clip norm over "
                f"{ev['clip']:g}); the last 50 steps' median norm is "
                f"{np.median(norms[-50:]):.2f}"))
    if ev["skip"]:
        out.append(("warning", f"{len(ev['skip'])} step(s) skipped for non-finite loss or "
                               f"gradients: " + ", ".join(str(r["step"]) for r in ev["skip"][:8])))
    # validation against training; plateau
    val = [r for r in ev["val"] if isinstance(r.get("loss", {}).get("total"), (int, float))]
    if len(val) >= 2:
        vs = np.array([r["step"] for r in val])
        vl = np.array([r["loss"]["total"] for r in val], float)
        b = int(np.argmin(vl))
        last = vl[-1]
        after = total[steps > vs[b]]
        at_best = total[(steps > vs[b] - 50) & (steps <= vs[b])]
        if last > (1 + RISE) * vl[b] and len(after) >= 10 and len(at_best) and \
                after[-min(50, len(after)):].mean() < at_best.mean():
            out.append(("warning", f"validation diverging from training: the validation loss "
                                   f"is {last / vl[b] - 1:.0%} above its best ({vl[b]:.4f} at step "
                                   f"{vs[b]}) while the training loss kept falling — "
                                   f"over-fitting; the best checkpoint is the one to keep"))
        gap = last / max(np.mean(total[-50:]), 1e-12)
        out.append(("ok" if gap < 1.5 else "note",
                    f"validation/training loss ratio at the end: {gap:.2f}"))
        since = int(steps[-1] - vs[b])
        n_after = len(vl) - 1 - b
        if n_after == 0:
            out.append(("ok", f"the validation loss was still improving at the last validation "
                              f"(step {vs[b]}: {vl[b]:.4f})"))
        else:
            out.append(("note" if n_after < 3 else "warning",
                        f"plateau: the validation loss last improved at step {vs[b]} "
                        f"({vl[b]:.4f}), {since} steps and {n_after} validation(s) ago"))
    elif val:
        out.append(("note", "one validation only: no trend to read"))
    else:
        out.append(("note", "no validation yet"))
    warned = [r for r in val if r.get("warning")]
    if warned:
        out.append(("warning", f"the trainer warned at step {warned[-1]['step']}: "
                               f"{warned[-1]['warning']}"))
    return out


def figures(ev: dict) -> dict:
    """name -> matplotlib Figure (each axis labelled, each figure with a legend)."""
    from matplotlib.figure import Figure

    from fastcpu import plots
    tr = ev["train"]
    steps = np.array([r["step"] for r in tr])
    figs = {"losses": plots.loss_figure(loss_curves(tr), loss_curves(ev["val"]),
                                        f"{ev['name']}: loss terms")}
    fig = Figure(figsize=(11, 3.6), dpi=100, layout="constrained")
    a, b = fig.subplots(1, 2)
    a.plot(steps, [r.get("lr", np.nan) for r in tr], color="#1f5fa0", label="learning rate")
    a.set(xlabel="step", ylabel="learning rate", title="learning-rate schedule")
    a.legend(fontsize=8)
    norms = np.array([r["grad_norm"] for r in tr], float)
    b.plot(steps, norms, color="#9bb7d4", lw=0.8, label="pre-clip gradient norm")
    b.axhline(ev["clip"], color="#d0542c", ls="--", label=f"clip threshold ({ev['clip']:g})")
    sp = spikes(steps, norms)
    if sp:
        b.plot([s for s, _, _ in sp], [n for _, n, _ in sp], "x", color="#a00", ms=7,
               label="spikes")
    b.set(xlabel="step", ylabel="global gradient norm (L2)", yscale="log",
          title="gradient norm before clipping")
    b.legend(fontsize=8)
    b.grid(alpha=0.3, which="both")
    figs["optimizer"] = fig
    fig = Figure(figsize=(11, 3.6), dpi=100, layout="constrained")
    a, b = fig.subplots(1, 2)
    ms = np.array([r.get("time", {}).get("step", np.nan) for r in tr], float) * 1e3
    fps = np.array([r.get("frames_per_s", np.nan) for r in tr], float)
    for ax, y, lab, unit in ((a, ms, "step time", "ms per step"),
                             (b, fps, "throughput", "mel frames per second")):
        ax.plot(steps, y, color="#9bb7d4", lw=0.8, label=f"{lab} (each step)")
        if len(y) >= 10:
            k = max(5, len(y) // 40)
            ax.plot(steps[k - 1:], np.convolve(y, np.ones(k) / k, "valid"), color="#1f5fa0",
                    label=f"mean of {k}")
        ax.axhline(np.nanmedian(y), color="#666", ls=":", label=f"median {np.nanmedian(y):.0f}")
        ax.set(xlabel="step", ylabel=unit, title=lab)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    figs["speed"] = fig
    return figs


def checkpoints(run: Path, ev: dict) -> list:
    from fastcpu import checkpoint
    val = {r["step"]: r["loss"].get("total") for r in ev["val"]}
    rows = []
    for p in checkpoint.find(run):
        try:
            m = checkpoint.peek_meta(p)
            step = int(m["state"]["step"])
        except (OSError, ValueError, KeyError, TypeError):
            rows.append({"file": p.name, "kind": "?", "step": "?", "mb": p.stat().st_size / 1e6,
                         "contents": "header unreadable", "val": None})
            continue
        rows.append({"file": p.name, "kind": m.get("kind", "?"), "step": step,
                     "mb": p.stat().st_size / 1e6,
                     "contents": "weights" if m.get("weights_only") else "weights + Adam",
                     "val": None if m.get("kind") == "averaged" else val.get(step)})
    return rows


def evaluations(run: Path) -> tuple:
    """(selection.json or None, [eval summaries not in it])."""
    sel = None
    try:
        sel = json.loads((run / "selection.json").read_text())
    except (OSError, ValueError):
        pass
    summaries = []
    for p in sorted((run / "eval").glob("*/summary.json")):
        try:
            s = json.loads(p.read_text())
            summaries.append({"name": p.parent.name, **s})
        except (OSError, ValueError):
            pass
    return sel, summaries


def _table(head: list, rows: list) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _f(v, fmt):
    return format(v, fmt) if isinstance(v, (int, float)) and np.isfinite(v) else "-"


def page(run: Path, ev: dict, diag: list, ckpts: list, sel, summaries, pngs: list) -> str:
    tr = ev["train"]
    last = tr[-1]
    end = ev["end"]
    status = (f"ended: {end.get('status')} at step {end.get('step')}" if end
              else "no end record (still running, or killed)")
    css = ("body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}"
           "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;"
           "padding:4px 8px;text-align:right}th{background:#f2f4f7}td:first-child{text-align:"
           "left}li.warning{color:#a33}li.note{color:#735c00}li.ok{color:#276738}"
           "img{max-width:100%;display:block;margin:.5em 0}")
    parts = [f"<h1>{html.escape(ev['name'])}: training report</h1>",
             f"<p>{html.escape(str(run))} — {last['step']} steps"
             + (f" of {ev['total_step']}" if ev["total_step"] else "")
             + f", {last.get('epoch', 0) + 1} epoch(s); {html.escape(status)}; last training "
               f"loss {last['loss']['total']:.4f}</p>",
             "<h2>Diagnosis</h2><ul>"
             + "".join(f"<li class={lv}><b>{lv}</b>: {html.escape(t)}</li>" for lv, t in diag)
             + "</ul>"]
    titles = {"losses": "Loss terms (train and validation)",
              "optimizer": "Learning rate and gradient norm",
              "speed": "Step time and throughput"}
    for name in pngs:
        parts.append(f"<h2>{titles[name]}</h2><img src=\"{name}.png\" alt=\"{name}\">")
    parts.append("<h2>Checkpoints</h2>" + _table(
        ["file", "kind", "step", "MB", "contents", "val loss at its step"],
        [[c["file"], c["kind"], c["step"], f"{c['mb']:.1f}", c["contents"],
          _f(c["val"], ".4f")] for c in ckpts]) if ckpts else "<h2>Checkpoints</h2><p>none</p>")
    if sel:
        parts.append(f"<h2>Evaluation (python -m fastcpu.select, by {sel['criterion']}, "
                     f"{sel['mode']} mode, {sel['split']} split)</h2>" + _table(
                         ["rank", "checkpoint", "step", "MCD (dB)", "duration MAE (frames)",
                          "pitch RMSE (Hz)", "energy MAE", "val loss"],
                         [[r["rank"], ", ".join(r["checkpoints"]), r["step"],
                           _f(r["mcd_db"], ".3f"), _f(r["duration_mae_frames"], ".3f"),
                           _f(r["pitch_rmse_hz"], ".2f"), _f(r["energy_mae"], ".3f"),
                           _f(r["loss"]["total"], ".4f")] for r in sel["ranking"]])
                     + f"<p>selected: {html.escape(', '.join(sel['selected_from']))}</p>")
    elif summaries:
        parts.append("<h2>Evaluation (python -m fastcpu.evaluate)</h2>" + _table(
            ["evaluation", "step", "mode", "MCD (dB)", "duration MAE", "pitch RMSE (Hz)",
             "energy MAE", "loss"],
            [[s["name"], s.get("step", "?"), s.get("mode", "?"), _f(s.get("mcd_db"), ".3f"),
              _f(s.get("duration_mae_frames"), ".3f"), _f(s.get("pitch_rmse_hz"), ".2f"),
              _f(s.get("energy_mae"), ".3f"), _f(s.get("loss", {}).get("total"), ".4f")]
             for s in summaries if "mode" in s]))
    else:
        parts.append("<h2>Evaluation</h2><p>none yet: python -m fastcpu.select "
                     f"{html.escape(str(run))} scores every checkpoint</p>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<link rel="icon" href="data:,">'
            f"<title>{html.escape(ev['name'])}: training report</title><style>{css}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>\n")


def report(run, out=None) -> Path:
    from fastcpu import plots
    run = Path(run)
    if not run.is_dir():
        raise ReportError(f"{run}: no such run directory")
    out = Path(out) if out else run / "report"
    ev = load(run)
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(ev)
    for name, fig in figs.items():
        (out / f"{name}.png").write_bytes(plots.to_png(fig))
    sel, summaries = evaluations(run)
    text = page(run, ev, diagnose(ev), checkpoints(run, ev), sel, summaries, list(figs))
    (out / "index.html").write_text(text, encoding="utf-8")
    return out / "index.html"


def main(argv=None) -> int:
    from fastcpu.cli import add_version
    ap = argparse.ArgumentParser(prog="python -m fastcpu.report",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(ap)
    ap.add_argument("run_dir", metavar="RUN_DIR")
    ap.add_argument("--out", help="output directory (default RUN_DIR/report)")
    a = ap.parse_args(argv)
    try:
        path = report(a.run_dir, a.out)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for lv, t in diagnose(load(Path(a.run_dir))):
        print(f"{lv}: {t}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
