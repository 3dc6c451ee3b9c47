"""Live view of a training run, read from its ``metrics.jsonl``.

    python -m fastcpu.monitor RUN_DIR [--once] [--interval 2]

Shows the step and progress, current and average training loss (per term), steps/s, ETA,
learning rate, grad norm, the last validation losses and the last checkpoints. Uses ``rich``
when it is installed and the output is a terminal; plain text otherwise (and with ``--once``).
Also the elapsed time, the time since the last record, whether the trainer's process is alive
(from its lock or train.pid) with its CPU % and RSS (psutil), checkpoint times and free disk.
Exits when the run ends, or when its process is gone without ending it (status 1), or on Ctrl+C.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def read_log(path: Path) -> list:
    """The records of a metrics.jsonl as one history (``one_history``); lines that are not
    JSON objects (a line being written right now, or damage) are passed over."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("event"), str):
                    out.append(rec)
    except FileNotFoundError:
        pass
    return one_history(out)


STEP_EVENTS = ("train", "skip", "val", "checkpoint")


def one_history(records: list) -> list:
    """Each run segment starts with a ``start`` record at the step it resumed from; records of
    earlier segments past that step are superseded (a crash after the last checkpoint makes the
    resumed run redo those steps), so readers see every step once, as finally trained."""
    out = []
    for r in records:
        if r.get("event") == "start" and isinstance(r.get("step"), int):
            out = [x for x in out if x.get("event") not in STEP_EVENTS or
                   not isinstance(x.get("step"), int) or x["step"] <= r["step"]]
        out.append(r)
    return out


def _well_formed(r) -> bool:
    try:
        return (isinstance(r["step"], int) and isinstance(r["epoch"], int)
                and all(isinstance(v, (int, float)) for v in r["loss"].values())
                and isinstance(r["lr"], (int, float)) and isinstance(r["grad_norm"], (int, float))
                and isinstance(r["time"]["step"], (int, float))
                and isinstance(r["frames_per_s"], (int, float)))
    except (KeyError, TypeError, AttributeError):
        return False


def summarize(records: list, window: int = 50) -> dict:
    start = [r for r in records if r.get("event") == "start"
             and isinstance(r.get("total_step"), int)]
    train = [r for r in records if r.get("event") == "train" and _well_formed(r)]
    val = [r for r in records if r.get("event") == "val" and isinstance(r.get("step"), int)
           and isinstance(r.get("best"), (int, float)) and isinstance(r.get("loss"), dict)
           and isinstance(r["loss"].get("total"), (int, float))]
    ckpts = [r for r in records if r.get("event") == "checkpoint" and
             all(k in r for k in ("kind", "step", "path"))]
    last_start = max((i for i, r in enumerate(records) if r.get("event") == "start"),
                     default=-1)
    end = next((r for r in reversed(records[last_start + 1:]) if r.get("event") == "end"
                and isinstance(r.get("status"), str)), None)
    s = {"total_step": start[-1]["total_step"] if start else None, "step": 0,
         "skipped": sum(r.get("event") == "skip" for r in records),
         "val": val[-3:], "checkpoints": ckpts[-4:], "end": end,
         "started_at": next((r.get("at") for r in records if r.get("event") == "start"), None),
         "last_at": next((r.get("at") for r in reversed(records) if "at" in r), None)}
    if not train:
        return s
    last = train[-1]
    recent = train[-window:]
    s.update(step=last["step"], epoch=last["epoch"], loss=last["loss"], lr=last["lr"],
             grad_norm=last["grad_norm"],
             avg={k: sum(r["loss"][k] for r in recent) / len(recent) for k in last["loss"]},
             step_ms=1e3 * sum(r["time"]["step"] for r in recent) / len(recent),
             frames_per_s=sum(r["frames_per_s"] for r in recent) / len(recent))
    # steps/s and ETA from the wall-clock stamps of this process's steps, as the trainer does
    seg = records[last_start + 1:]
    stamps = [(r["at"], r["step"]) for r in seg if r.get("event") in ("train", "skip")
              and isinstance(r.get("at"), (int, float)) and isinstance(r.get("step"), int)]
    rate, eta = rate_and_eta(stamps, s["total_step"], window)
    if rate is None:                  # one step so far: its time includes the compile
        rate = 1e3 / s["step_ms"] if s["step_ms"] else 0.0
    s["steps_per_s"] = rate
    if eta is not None:
        s["eta_s"] = eta
    return s


def rate_and_eta(stamps: list, total_step, window: int = 50):
    """(steps/s, seconds left) from ``(time, step)`` stamps of a process's step ends, oldest
    first; the trainer's console and the monitor both use this. The first stamp is only a
    starting point: the first step of a process includes compiling the kernels (~30 s on a cold
    cache), so it is never counted. Wall-clock time, so validation and checkpoints are in the
    rate. (None, None) until two stamps exist."""
    stamps = stamps[-(window + 1):]
    if len(stamps) < 2 or stamps[-1][0] <= stamps[0][0] or stamps[-1][1] <= stamps[0][1]:
        return None, None
    rate = (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0])
    eta = max(0, total_step - stamps[-1][1]) / rate if total_step else None
    return rate, eta


def hms(x) -> str:
    """Seconds -> "m:ss" or "h:mm:ss"; "?" for None or a non-finite value."""
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return "?"
    x = int(x)
    return f"{x // 3600}:{x // 60 % 60:02d}:{x % 60:02d}" if x >= 3600 else \
        f"{x // 60}:{x % 60:02d}"


def run_process(run: Path) -> dict:
    """The trainer of ``run``: pid (from its lock while it runs, else train.pid), whether it is
    alive, and with psutil its CPU % and RSS; free disk space under the run."""
    import os
    import shutil
    pid = None
    for name in (".lock", "train.pid"):
        try:
            text = (run / name).read_text().strip()
            pid = int(json.loads(text)["pid"] if text.startswith("{") else text)
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    out = {"pid": pid, "alive": None, "disk_free": None}
    try:
        out["disk_free"] = shutil.disk_usage(run).free
    except OSError:
        pass
    if pid is None:
        return out
    try:
        os.kill(pid, 0)
        out["alive"] = True
    except ProcessLookupError:
        out["alive"] = False
        return out
    except PermissionError:
        out["alive"] = True
    try:
        import psutil
        p = psutil.Process(pid)
        out.update(cpu=p.cpu_percent(interval=0.2), rss=p.memory_info().rss)
    except Exception:                        # psutil missing, or the process just ended
        pass
    return out


def _gib(n):
    return f"{n / 2 ** 30:.2f} GiB"


def render_plain(run: Path, s: dict, proc: dict | None = None) -> str:
    lines = [f"run {run}"]
    now = time.time()
    if s.get("started_at"):
        last = s.get("last_at") or s["started_at"]
        until = (s["end"] or {}).get("at") or now
        lines.append(f"elapsed {hms(until - s['started_at'])}  last update {hms(now - last)} ago")
    if proc and proc.get("pid") is not None:
        state = ("running" if proc["alive"] else "NOT running") if proc["alive"] is not None \
            else "unknown"
        extra = "".join([f", CPU {proc['cpu']:.0f}%" if "cpu" in proc else "",
                         f", RSS {_gib(proc['rss'])}" if "rss" in proc else ""])
        lines.append(f"process {proc['pid']}: {state}{extra}")
    if proc and proc.get("disk_free") is not None:
        lines.append(f"disk free {_gib(proc['disk_free'])}")
    if s["step"]:
        tot = s["total_step"] or 0
        pct = f" ({100 * s['step'] / tot:.1f}%)" if tot else ""
        lines.append(f"step {s['step']}/{tot}{pct}  epoch {s['epoch']}  "
                     f"{s['steps_per_s']:.2f} steps/s  {s['step_ms']:.0f} ms/step  "
                     f"{s['frames_per_s']:.0f} frames/s  ETA {hms(s.get('eta_s'))}")
        lines.append(f"lr {s['lr']:.3e}  grad norm {s['grad_norm']:.3f}  skipped steps "
                     f"{s['skipped']}")
        lines.append("loss      " + "  ".join(f"{k} {v:.4f}" for k, v in s["loss"].items()))
        lines.append("avg(50)   " + "  ".join(f"{k} {v:.4f}" for k, v in s["avg"].items()))
    else:
        lines.append("no training step logged yet")
    for v in s["val"]:
        lines.append(f"validation @ {v['step']}: {v['loss']['total']:.4f} (best "
                     f"{v['best']:.4f})")
    for c in s["checkpoints"]:
        at = time.strftime("%H:%M:%S", time.localtime(c["at"])) if "at" in c else ""
        lines.append(f"checkpoint {c['kind']:<11} step {c['step']:<8} {at} {c['path']}")
    if s["end"]:
        lines.append(f"run ended: {s['end']['status']} at step {s['end'].get('step')}")
    elif proc and proc.get("alive") is False:
        lines.append(f"the run's process {proc['pid']} is gone without an end record (killed?); "
                     f"resume with --resume auto")
    return "\n".join(lines)


def plot(run: Path, log: Path, out: Path) -> int:
    if not log.is_file():
        print(f"error: {log}: no such file (is {run} a fastcpu run directory?)",
              file=sys.stderr)
        return 2
    from fastcpu import plots
    from fastcpu.report import loss_curves
    recs = read_log(log)
    curves = {event: loss_curves([r for r in recs if r.get("event") == event and isinstance(
        r.get("loss"), dict) and isinstance(r.get("step"), int)]) for event in ("train", "val")}
    if not curves["train"]:
        print(f"error: {log}: no training steps recorded yet", file=sys.stderr)
        return 2
    name = next((r.get("name") for r in recs if r.get("event") == "start"), None) or run.name
    last = max(curves["train"]["total"][0])
    fig = plots.loss_figure(curves["train"], curves["val"], f"{name}: {last} steps")
    out.write_bytes(plots.to_png(fig))
    print(f"wrote {out}")
    return 0


def finished(s, proc) -> bool:
    return bool(s["end"]) or (proc or {}).get("alive") is False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastcpu.monitor",
                                 description=__doc__.split("\n\n")[0])
    from fastcpu.cli import add_version
    add_version(ap)
    ap.add_argument("run_dir", help="the run directory (contains metrics.jsonl)")
    ap.add_argument("--once", action="store_true", help="print once (plain text) and exit")
    ap.add_argument("--interval", type=float, default=2.0, help="refresh seconds")
    ap.add_argument("--plot", metavar="PNG",
                    help="draw the run's loss curves (train and validation, each term) to this "
                         "PNG and exit")
    a = ap.parse_args(argv)
    run = Path(a.run_dir)
    log = run / "metrics.jsonl"
    if a.plot:
        return plot(run, log, Path(a.plot))
    while not log.is_file() and run_process(run).get("alive"):    # a run still starting up
        time.sleep(0.5)
    if not log.is_file():
        print(f"error: {log}: no such file (is {run} a fastcpu run directory?)",
              file=sys.stderr)
        return 2
    if a.once or not sys.stdout.isatty():
        while True:
            s, proc = summarize(read_log(log)), run_process(run)
            try:
                print(render_plain(run, s, proc), flush=True)
            except BrokenPipeError:                   # `monitor --once | head`
                sys.stdout = None
                return 0
            if a.once or finished(s, proc):
                return 0 if s["end"] or a.once else 1
            time.sleep(max(a.interval, 5.0))
    try:
        from rich.live import Live
        from rich.panel import Panel
    except ImportError:
        Live = None
    try:
        if Live is None:
            while True:
                s, proc = summarize(read_log(log)), run_process(run)
                sys.stdout.write("\033[2J\033[H" + render_plain(run, s, proc) + "\n")
                sys.stdout.flush()
                if finished(s, proc):
                    return 0 if s["end"] else 1
                time.sleep(a.interval)
        with Live(refresh_per_second=4) as live:
            while True:
                s, proc = summarize(read_log(log)), run_process(run)
                live.update(Panel(render_plain(run, s, proc), title="fastcpu"))
                if finished(s, proc):
                    return 0 if s["end"] else 1
                time.sleep(a.interval)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
