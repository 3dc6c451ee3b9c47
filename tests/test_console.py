"""The trainer's console as a person sees it: on an 80-column terminal one progress line updated
in place that never wraps, short records above it, an ETA that ignores the compile step and is
computed as the monitor computes it; plain lines in a pipe; the compile notice on a cold cache."""
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from fastcpu.monitor import rate_and_eta, summarize
from fastcpu.reporting import kernel_cache_warm
from tests.test_train import records, run_cli, tiny

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(args, cols=80, rows=24, env=None, timeout=600):
    """Run `python -m fastcpu.train ARGS` on a pseudo-terminal of the given size; -> what it
    wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in (env or os.environ).items() if k not in ("COLUMNS", "LINES")}
    p = subprocess.Popen([sys.executable, "-m", "fastcpu.train", *args], stdin=slave, stdout=slave, stderr=slave,
                         env=env, close_fds=True)
    os.close(slave)
    out, t0 = b"", time.time()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                                    # EIO: the child closed the pty
            break
        if not chunk:
            break
        out += chunk
        assert time.time() - t0 < timeout
    os.close(master)
    assert p.wait(timeout=60) == 0, out.decode(errors="replace")[-3000:]
    return out.decode("utf-8", errors="replace")


def screen_pieces(out):
    """Every piece of text the terminal shows on one row: split at newlines and carriage
    returns, colour codes removed."""
    return [ANSI.sub("", piece) for line in out.split("\n") for piece in line.split("\r")]


def test_an_80_column_terminal_shows_one_bar_updating_in_place(tmp_path):
    steps = 30
    # no validation or checkpoint mid-run: the ETA cannot know what those will cost in a run
    # this short (in a long one they are part of the measured rate)
    out = run_on_terminal(tiny(tmp_path, "--set", "train.log_step=10", "--set",
                               "train.val_step=1000", "--set", "train.save_step=1000",
                               steps=steps) + ["--debug-step-delay", "0.3"])
    pieces = screen_pieces(out)
    too_wide = [p for p in pieces if len(p) > 80]
    assert not too_wide, too_wide[:3]
    bars = [p for p in pieces if re.match(r"step \d+/30 \S* *ETA", p)]
    assert len({p.split()[1] for p in bars}) >= steps - 1      # a redraw for (nearly) every step
    assert out.count("\r") >= steps
    assert len([p for p in pieces if p.startswith("step 10/30 loss")]) == 1   # a record above
    assert "Traceback" not in out and "\x1b[3" in out          # coloured on a terminal
    # from step 2 on (compile excluded), the ETA shown is within 2x of the time the remaining
    # steps really took (+1 s: it is shown in whole seconds)
    run = tmp_path / "tiny"
    at = {r["step"]: r["at"] for r in records(run, "train")}
    end = at[steps]
    checked = 0
    for p in bars:
        n = int(p.split()[1].split("/")[0])
        m = re.search(r"ETA (\d+):(\d\d)", p)
        if n < 2 or not m:
            continue
        shown, truth = int(m.group(1)) * 60 + int(m.group(2)), end - at[n]
        assert truth / 2 - 1 <= shown <= 2 * truth + 1, (n, shown, truth)
        checked += 1
    assert checked >= steps - 2
    # the monitor's ETA from the same records equals the trainer's formula at the end
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    stamps = [(r["at"], r["step"]) for r in recs if r["event"] == "train"]
    assert summarize(recs)["steps_per_s"] == rate_and_eta(stamps, steps)[0]


def test_no_colour_with_NO_COLOR_and_plain_lines_in_a_pipe(tmp_path):
    out = run_on_terminal(tiny(tmp_path / "a", steps=3), env=dict(os.environ, NO_COLOR="1"))
    assert not re.search(r"\x1b\[3[0-9]m", out)
    r = run_cli(*tiny(tmp_path / "b", "--set", "train.log_step=2", steps=4))
    assert r.returncode == 0
    assert "\r" not in r.stdout and "\x1b" not in r.stdout
    lines = [x for x in r.stdout.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["1/4", "2/4", "4/4"]
    assert all("ETA" in x and "lr" in x for x in lines)         # the full record


def test_rate_and_eta_never_count_the_first_step_of_a_process():
    # step 1 took 30 s (compiling), then 1 s a step
    stamps = [(30.0, 1), (31.0, 2), (32.0, 3)]
    assert rate_and_eta(stamps[:1], 10) == (None, None)
    assert rate_and_eta(stamps[:2], 10) == (1.0, 8.0)
    assert rate_and_eta(stamps, 10) == (1.0, 7.0)
    # a resumed process: its first step compiles again; only its own stamps count
    recs = [{"event": "start", "total_step": 10, "at": 0}] + [
        {"event": "train", "step": n, "at": t} for t, n in stamps] + [
        {"event": "start", "total_step": 10, "at": 100}, {"event": "train", "step": 4,
                                                            "at": 140}]
    assert summarize(recs).get("eta_s") is None


def test_the_compile_notice_follows_the_numba_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "empty"))
    assert not kernel_cache_warm()
    r = run_cli(*tiny(tmp_path, steps=1), env=dict(os.environ, NUMBA_CACHE_DIR=str(
        tmp_path / "cold")), timeout=900)
    assert r.returncode == 0, r.stderr
    assert "compiling kernels (first run, about 30 s; `python -m fastcpu.warmup` does it " \
           "ahead)" in r.stdout
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cold"))
    assert kernel_cache_warm()                                  # that run filled it
    r = run_cli(*tiny(tmp_path / "again", steps=1), env=dict(os.environ, NUMBA_CACHE_DIR=str(
        tmp_path / "cold")), timeout=900)
    assert "compiling kernels" not in r.stdout
    assert Path(tmp_path / "cold").is_dir()
