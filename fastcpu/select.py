"""Choose a run's best checkpoint by an objective metric.

    python -m fastcpu.select runs/demo                         # by MCD, teacher-forced, val split
    python -m fastcpu.select runs/demo --criterion val_loss --average 3

Scores every checkpoint of the run with ``python -m fastcpu.evaluate`` (files holding the same
weights — ``best``, ``final`` and the step file of one step — are scored once, as one entry),
ranks them by ``--criterion`` (lower is better for all), and writes:

- ``RUN_DIR/selection.md`` and ``selection.json``: the ranked table (every metric, every entry);
- ``RUN_DIR/eval/<checkpoint>/``: each evaluation's ``metrics.csv`` and ``summary.json``;
- ``RUN_DIR/checkpoints/selected.safetensors``: the weights of the first of the ranking, alone
  (what ``synthesize`` and ``export`` take); with ``--average N``, the element-wise average of
  the N best checkpoints' weights (as ESPnet averages its N best) is written to
  ``checkpoints/averaged.safetensors``, scored and ranked with the rest, so it is ``selected``
  when it scores best.

Validation loss (teacher-forced) is a weak guide to how a checkpoint sounds; MCD measures the
audio's spectral envelope. Training never deletes the file at the best validation's step
(``train.keep_last`` retention), so the candidates include it.

An empty run directory, a run with only one checkpoint, or a checkpoint that does not fit the
corpus is one line, exit status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from fastcpu.evaluate import EvalError

CRITERIA = {"mcd": "mcd_db", "val_loss": "loss.total", "pitch_rmse": "pitch_rmse_hz",
            "duration_mae": "duration_mae_frames", "energy_mae": "energy_mae"}
MADE_HERE = ("selected", "averaged")           # kinds select writes; never candidates


def value(summary: dict, criterion: str) -> float:
    v = summary
    for k in CRITERIA[criterion].split("."):
        v = v[k]
    v = float(v)
    return v if np.isfinite(v) else float("inf")


def candidates(run_dir: Path, log=print) -> list:
    """[{names, step, path, tensors, meta}] of a run's checkpoints, one per distinct set of
    weights, newest first."""
    from fastcpu import checkpoint
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    files = checkpoint.find(run_dir, log)
    seen, out = {}, []
    for p in files:
        try:
            tensors, meta = checkpoint.load(p)
        except checkpoint.CheckpointError as e:
            log(f"warning: passed over: {e}")
            continue
        if meta.get("kind") in MADE_HERE:
            continue
        model = {k: v for k, v in tensors.items() if k.startswith("model/")}
        h = hashlib.sha256()
        for k in sorted(model):
            h.update(k.encode())
            h.update(np.ascontiguousarray(model[k]).tobytes())
        key = h.hexdigest()
        if key in seen:
            seen[key]["names"].append(p.stem)
            continue
        seen[key] = {"names": [p.stem], "step": int(meta["state"]["step"]), "path": p,
                     "tensors": model, "meta": meta}
        out.append(seen[key])
    if not out:
        raise EvalError(f"{run_dir}: no checkpoints (nothing readable in "
                        f"{run_dir / 'checkpoints'})")
    if len(out) == 1:
        c = out[0]
        raise EvalError(f"{run_dir}: one checkpoint ({', '.join(c['names'])}, step {c['step']}): "
                        f"nothing to choose between; score it with python -m fastcpu.evaluate "
                        f"--checkpoint {c['path']} --out DIR")
    return out


def average(entries: list) -> dict:
    """Element-wise mean of the entries' model tensors (float ones; counters from the first)."""
    out = {}
    for k, v in entries[0]["tensors"].items():
        if np.issubdtype(v.dtype, np.floating):
            acc = np.zeros(v.shape, np.float64)
            for e in entries:
                acc += e["tensors"][k]
            out[k] = (acc / len(entries)).astype(v.dtype)
        else:
            out[k] = v.copy()
    return out


def weights_file(path: Path, tensors: dict, meta: dict, kind: str, note: dict) -> Path:
    from fastcpu import checkpoint
    m = {k: v for k, v in meta.items() if k not in ("optimizer_step", "reason")}
    m.update(kind=kind, weights_only=True, **note)
    return checkpoint.save(path, tensors, m)


def select(run_dir, criterion="mcd", n_average=0, mode="teacher", split="val", data_dir=None,
           vocode=None, log=print) -> dict:
    from fastcpu import evaluate
    from fastcpu.synthesize import SynthError, model_from
    run_dir = Path(run_dir)
    if criterion not in CRITERIA:
        raise EvalError(f"--criterion {criterion}: one of {', '.join(CRITERIA)}")
    entries = candidates(run_dir, log)
    if n_average and not 2 <= n_average <= len(entries):
        raise EvalError(f"--average {n_average}: between 2 and the run's {len(entries)} "
                        f"distinct checkpoints")
    vocode = vocode or evaluate.Vocode()

    def score(e, k, n):
        try:
            loaded = model_from(e["tensors"], e["meta"], e["path"])
        except SynthError as err:
            raise EvalError(str(err)) from None
        rows, summary = evaluate.score_checkpoint(e["path"], data_dir, split, mode, vocode,
                                                  loaded=loaded, log=None)
        evaluate.write(run_dir / "eval" / e["path"].stem, rows, summary)
        e["summary"], e["score"] = summary, value(summary, criterion)
        log(f"[{k}/{n}] {', '.join(e['names'])} (step {e['step']}): MCD "
            f"{summary['mcd_db']:.3f} dB, val loss {summary['loss']['total']:.4f}, pitch RMSE "
            f"{summary['pitch_rmse_hz']:.2f} Hz ({summary['seconds']:.0f} s)")

    n = len(entries) + (1 if n_average else 0)
    log(f"scoring {len(entries)} checkpoints of {run_dir} ({mode} mode, {split} split, "
        f"{vocode.name}) by {criterion}")
    for k, e in enumerate(entries, 1):
        score(e, k, n)
    ranked = sorted(entries, key=lambda e: (e["score"], -e["step"]))
    ck = run_dir / "checkpoints"
    if n_average:
        best = ranked[:n_average]
        avg = {"names": [f"averaged ({n_average} best)"], "step": max(e["step"] for e in best),
               "path": ck / "averaged.safetensors", "tensors": average(best),
               "meta": best[0]["meta"]}
        weights_file(avg["path"], avg["tensors"], avg["meta"], "averaged",
                     {"averaged_from": [e["names"][0] for e in best]})
        avg["meta"] = {**avg["meta"], "kind": "averaged"}
        score(avg, n, n)
        ranked = sorted(ranked + [avg], key=lambda e: (e["score"], -e["step"]))
    top = ranked[0]
    choice = {"criterion": criterion, "value": top["score"], "from": top["names"],
              "mode": mode, "split": split}
    path = weights_file(ck / "selected.safetensors", top["tensors"], top["meta"], "selected",
                        {"selected": choice})
    result = {"run": str(run_dir), "criterion": criterion, "mode": mode, "split": split,
              "vocoder": vocode.name, "selected": str(path), "selected_from": top["names"],
              "ranking": [{"rank": i, "checkpoints": e["names"], "step": e["step"],
                           "score": e["score"], **{k: e["summary"][k] for k in (
                               "mcd_db", "duration_mae_frames", "pitch_rmse_hz", "energy_mae",
                               "loss", "n_utterances")}}
                          for i, e in enumerate(ranked, 1)]}
    (run_dir / "selection.json").write_text(json.dumps(evaluate.json_safe(result), indent=1)
                                            + "\n")
    (run_dir / "selection.md").write_text(markdown(result) + "\n")
    return result


def markdown(result: dict) -> str:
    lines = [f"# Checkpoints of {result['run']} by {result['criterion']}", "",
             f"{result['mode']} mode, {result['split']} split, {result['vocoder']}; "
             f"selected: {', '.join(result['selected_from'])} -> `{result['selected']}`", "",
             "| rank | checkpoint | step | MCD (dB) | duration MAE (frames) | pitch RMSE (Hz) | "
             "energy MAE | val loss |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["ranking"]:
        lines.append(f"| {r['rank']} | {', '.join(r['checkpoints'])} | {r['step']} | "
                     f"{r['mcd_db']:.3f} | {r['duration_mae_frames']:.3f} | "
                     f"{r['pitch_rmse_hz']:.2f} | {r['energy_mae']:.3f} | "
                     f"{r['loss']['total']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from fastcpu import runtime
    from fastcpu.cli import add_version
    from fastcpu.evaluate import vocoder_of
    from fastcpu.synthesize import add_vocoder_args
    ap = argparse.ArgumentParser(prog="python -m fastcpu.select",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(ap)
    ap.add_argument("run_dir", metavar="RUN_DIR")
    ap.add_argument("--criterion", choices=list(CRITERIA), default="mcd")
    ap.add_argument("--average", type=int, default=0, metavar="N",
                    help="also the average of the N best checkpoints' weights")
    ap.add_argument("--mode", choices=["teacher", "free"], default="teacher")
    ap.add_argument("--split", choices=["train", "val", "test"], default="val")
    ap.add_argument("--data-dir", help="the corpus (default: the run's)")
    add_vocoder_args(ap)
    ap.add_argument("--threads", type=int, default=0, help="0: every core")
    a = ap.parse_args(argv)
    try:
        with runtime.threads(a.threads or None):
            result = select(a.run_dir, a.criterion, a.average, a.mode, a.split, a.data_dir,
                            vocoder_of(a), log=lambda m: print(m, file=sys.stderr))
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(result))
    print(f"\nwrote {Path(a.run_dir) / 'selection.md'}, selection.json and {result['selected']}")
    return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
