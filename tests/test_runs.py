"""Runs a user can trust: each failure found by trying to break the trainer, reproduced with a
real subprocess run on the bundled corpus (like tests/test_train.py), fixed and kept fixed."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from fastcpu import checkpoint
from tests.test_train import TINY, records, run_cli, tiny, train_losses


# 3. floats in exponent form were refused (flags went through json.dumps -> PyYAML, whose
#    YAML 1.1 float pattern needs a dot: "5e-05" was a string)
@pytest.mark.parametrize("how", ["flag", "flag-decimal", "set", "yaml"])
def test_floats_in_exponent_form_are_accepted(tmp_path, how):
    extra = {"flag": ["--learning-rate", "5e-5"], "flag-decimal": ["--learning-rate", "0.00005"],
             "set": ["--set", "optimizer.lr=5e-5"], "yaml": []}[how]
    cfg = TINY
    if how == "yaml":
        data = yaml.safe_load(open(TINY))
        data["optimizer"]["lr"] = "LR"
        cfg = tmp_path / "exp.yaml"
        cfg.write_text(yaml.safe_dump(data).replace("LR", "5e-5"))
    args = tiny(tmp_path, *extra, steps=1)
    args[1] = str(cfg)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    written = yaml.safe_load((tmp_path / "tiny" / "config.yaml").read_text())
    assert written["optimizer"]["lr"] == 5e-5
    start = records(tmp_path / "tiny", "start")[0]
    assert start["config"]["optimizer"]["lr"] == 5e-5


# 1. an emergency checkpoint could mix two steps: a failure after the optimizer update
#    (validation, a sample, a checkpoint or metrics write) saved step K's weights and moments
#    with step K-1's counters, sampler and RNG, so a resume applied step K's batch twice
def test_a_failure_after_the_update_saves_one_consistent_state(tmp_path):
    base = run_cli(*tiny(tmp_path / "base"))
    assert base.returncode == 0, base.stderr
    out = tmp_path / "f"
    r = run_cli(*tiny(out, "--debug-fault", "after-update@12"))
    assert r.returncode == 1 and "injected fault after the update of step 12" in r.stderr
    ck = out / "tiny" / "checkpoints" / "emergency.safetensors"
    _, meta = checkpoint.load(ck)
    assert meta["state"]["step"] == 12 and meta["optimizer_step"] == 12
    assert f"saved the state after step 12 (the error came after its update) to {ck}" in r.stdout
    r = run_cli(*tiny(out, "--resume-from", str(ck)))
    assert r.returncode == 0, r.stderr
    assert train_losses(out / "tiny") == train_losses(tmp_path / "base" / "tiny")
    a, _ = checkpoint.load(tmp_path / "base" / "tiny" / "checkpoints" / "final.safetensors")
    b, _ = checkpoint.load(out / "tiny" / "checkpoints" / "final.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def _start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "fastcpu.train",
                             *tiny(out, "--debug-step-delay", "0.15", *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(run, k, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and max(train_losses(run), default=0) >= k:
            return
        time.sleep(0.02)
    raise AssertionError(f"no step {k} in {timeout} s")


# 8. SIGHUP was unhandled; Ctrl+C / SIGTERM exited 0 (read as success by shells and schedulers)
def test_sighup_stops_like_sigterm_with_its_exit_status(tmp_path):
    p = _start(tmp_path)
    _wait_for_step(tmp_path / "tiny", 3)
    p.send_signal(signal.SIGHUP)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGHUP.value, err
    _, meta = checkpoint.load(tmp_path / "tiny" / "checkpoints" / "interrupted.safetensors")
    assert meta["reason"] == "SIGHUP" and "interrupted by SIGHUP" in out


# 8. a second signal ended in a long KeyboardInterrupt traceback and still wrote a (possibly
#    mixed) emergency checkpoint
def test_a_second_signal_stops_at_once_with_one_line(tmp_path):
    p = _start(tmp_path)
    _wait_for_step(tmp_path / "tiny", 3)
    p.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    t = time.time()
    out, err = p.communicate(timeout=60)
    assert time.time() - t < 2.0      # the stop itself is immediate; this bounds interpreter exit
    assert p.returncode == 143
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [ln for ln in out.splitlines() if "second SIGTERM" in ln]
    assert len(lines) == 1 and "nothing saved for the step under way" in lines[0]
    assert not (tmp_path / "tiny" / "checkpoints" / "emergency.safetensors").exists()
    end = records(tmp_path / "tiny", "end")[-1]
    assert end["status"] == "stopped" and end["signal"] == "SIGTERM"


# 8. smaller failures
def test_run_name_cannot_leave_the_output_dir(tmp_path):
    r = run_cli(*tiny(tmp_path / "out", "--name", "../../x", steps=1))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: name: '../../x' must be a plain directory name (no '/', no '..'): the run "
        "lives in train.output_dir/<name>"]
    assert not (tmp_path / "x").exists()


def test_stale_temp_files_dangling_links_and_corrupted_newest(tmp_path):
    r = run_cli(*tiny(tmp_path, "--set", "train.save_step=5", steps=10))
    assert r.returncode == 0, r.stderr
    ck = tmp_path / "tiny" / "checkpoints"
    dead = ck / ".step-00000099.safetensors.tmp-999999999"       # a killed writer's file
    dead.write_bytes(b"partial")
    (ck / "step-00000077.safetensors").symlink_to(ck / "gone.safetensors")
    newest = ck / "step-00000010.safetensors"
    blob = bytearray(newest.read_bytes())
    blob[3] ^= 0xFF                                              # the header length
    newest.write_bytes(bytes(blob))
    r = run_cli(*tiny(tmp_path, "--resume-from", str(tmp_path / "tiny"), "--set",
                      "train.save_step=5", steps=12))
    assert r.returncode == 0, r.stderr
    assert "is not a checkpoint file (a dangling link?)" in r.stdout
    assert f"warning: {newest}: header unreadable (corrupted?); tried last" in r.stdout
    assert "removed 1 temp file(s) of interrupted checkpoint writes" in r.stdout
    assert not dead.exists()
    assert records(tmp_path / "tiny", "resume")[-1]["step"] == 10    # final.safetensors


def test_preprocess_exits_2_on_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastcpu.preprocess", "--corpus",
                        str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ")


# 2. re-running into an existing run directory appended to its metrics, mixed checkpoints of
#    both runs and let retention delete the new run's files; two trainers on one directory
#    crashed each other
def test_starting_where_a_run_already_is_needs_resume_or_overwrite(tmp_path):
    assert run_cli(*tiny(tmp_path, steps=6)).returncode == 0
    run = tmp_path / "tiny"
    r = run_cli(*tiny(tmp_path, steps=6))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {run} already holds a run (newest checkpoint {run}/checkpoints/"
        f"final.safetensors at step 6); continue it with --resume auto, or start afresh with "
        f"--overwrite (the old run is moved aside)"]
    assert len(records(run, "start")) == 1                    # nothing was written
    r = run_cli(*tiny(tmp_path, "--resume", "auto", steps=9))
    assert r.returncode == 0, r.stderr
    assert records(run, "resume")[-1]["step"] == 6 and max(train_losses(run)) == 9
    r = run_cli(*tiny(tmp_path, "--overwrite", steps=3))
    assert r.returncode == 0, r.stderr
    old = [p for p in tmp_path.iterdir() if p.name.startswith("tiny.old-")]
    assert len(old) == 1 and max(train_losses(old[0])) == 9
    assert len(records(run, "start")) == 1 and max(train_losses(run)) == 3
    assert not (run / ".lock").exists()


def test_resume_auto_starts_a_run_that_is_not_there(tmp_path):
    r = run_cli(*tiny(tmp_path, "--resume", "auto", steps=2))
    assert r.returncode == 0, r.stderr
    assert not records(tmp_path / "tiny", "resume")


def test_one_trainer_per_run_directory(tmp_path):
    p = _start(tmp_path)
    _wait_for_step(tmp_path / "tiny", 2)
    r = run_cli(*tiny(tmp_path, "--resume", "auto"))
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'tiny'} is in use by pid {p.pid} on ")


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    run = tmp_path / "tiny"
    run.mkdir()
    import socket
    (run / ".lock").write_text(json.dumps({"pid": 999999999, "host": socket.gethostname()}))
    r = run_cli(*tiny(tmp_path, steps=2))
    assert r.returncode == 0, r.stderr
    assert "taking over the stale lock of pid 999999999" in r.stdout
    assert not (run / ".lock").exists()


# 5. impossible values passed start-up and crashed later with tracebacks
BAD_CONFIG = [
    (["--set", "model.n_mel_channels=40"], "model.n_mel_channels: 40, but the corpus"),
    (["--set", "model.conv_kernel_size=[8,1]"], "model.conv_kernel_size: kernel sizes must be odd"),
    (["--set", "model.vp_kernel_size=0"], "model.vp_kernel_size: must be > 0"),
    (["--set", "model.postnet_kernel_size=4"], "model.postnet_kernel_size: kernel sizes must be"),
    (["--set", "model.n_src_vocab=100"], "model.n_src_vocab: must be >= 361"),
    (["--set", "model.conv_kernel_size=[9,x]"], "model.conv_kernel_size: expected 2 integers"),
    (["--set", "optimizer.betas=[0.9,x]"], "optimizer.betas: expected 2 numbers"),
    (["--threads", "100000"], "train.threads: 100000 asked but this process can use"),
    (["--seed", "-1"], "train.seed: must be >= 0"),
    (["LIST"], "expected a mapping, got list"),
    (["BYTES"], "not UTF-8 text"),
]


@pytest.mark.parametrize("extra,expect", BAD_CONFIG, ids=[e for _, e in BAD_CONFIG])
def test_impossible_values_stop_at_start_up(tmp_path, extra, expect):
    args = tiny(tmp_path, steps=1)
    if extra == ["LIST"]:
        (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
        args[1], extra = str(tmp_path / "c.yaml"), []
    elif extra == ["BYTES"]:
        (tmp_path / "c.yaml").write_bytes(b"name: caf\xe9\n")
        args[1], extra = str(tmp_path / "c.yaml"), []
    r = run_cli(*args, *extra)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert expect in line and "Traceback" not in r.stderr
    assert not (tmp_path / "tiny").exists()


# 6. resuming with changed flags silently reinterpreted the sampler position, ignored
#    --config, and gave a traceback for --seed
@pytest.mark.parametrize("extra,expect", [
    (["--batch-size", "8"], "train.batch_size: 4 in the checkpoint, 8 asked; the saved data "
                            "position (epoch 0, batch 6) cannot be mapped"),
    (["--accumulation-steps", "2"], "optimizer.grad_acc_step: 1 in the checkpoint, 2 asked"),
    (["--set", "train.group_size=2"], "train.group_size: 4 in the checkpoint, 2 asked"),
    (["--seed", "5"], "train.seed: the checkpoint's run has seed 1234"),
    (["--config", "OTHER"], "model.decoder_layer is 2 there but 1 in the checkpoint; a "
                            "resumed run keeps its checkpoint's config"),
])
def test_resume_refuses_changes_it_cannot_honour(tmp_path, extra, expect):
    assert run_cli(*tiny(tmp_path, steps=6)).returncode == 0
    args = tiny(tmp_path, "--resume-from", str(tmp_path / "tiny"), steps=9)
    if extra == ["--config", "OTHER"]:           # tiny.yaml with one value changed
        other = tmp_path / "other.yaml"
        other.write_text(open(TINY).read().replace("decoder_layer: 1", "decoder_layer: 2"))
        args[1], extra = str(other), []
    r = run_cli(*args, *extra)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert expect in line, line


def test_resume_with_the_same_config_file_is_fine(tmp_path):
    assert run_cli(*tiny(tmp_path, steps=4)).returncode == 0
    r = run_cli(*tiny(tmp_path, "--resume-from", str(tmp_path / "tiny"), steps=6))
    assert r.returncode == 0, r.stderr
    assert max(train_losses(tmp_path / "tiny")) == 6


# 7. a process that JIT-compiled the Numba kernels computed other last bits than one that loaded
#    them from the cache, so the first run after an install, interrupted and resumed, was not
#    bit-identical (the parallel kernels' "reassoc" flag; see kernels/_common.py)
@pytest.mark.slow
def test_compiled_and_cached_kernels_give_the_same_bits(tmp_path):
    import os
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}   # empty: compiles
    runs = []
    for i in (1, 2):                                                          # then loads
        r = run_cli(*tiny(tmp_path / f"r{i}", steps=12), env=env)
        assert r.returncode == 0, r.stderr
        runs.append(tmp_path / f"r{i}" / "tiny")
    assert any((tmp_path / "numba-cache").rglob("*.nbi"))
    assert train_losses(runs[0]) == train_losses(runs[1])
    a, _ = checkpoint.load(runs[0] / "checkpoints" / "final.safetensors")
    b, _ = checkpoint.load(runs[1] / "checkpoints" / "final.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a if k.startswith("model/"))


# 8. steps after the newest checkpoint were logged twice after a crash and resume; the monitor
#    crashed on a well-formed line of the wrong shape
def test_after_a_kill_and_resume_readers_see_one_history(tmp_path):
    from fastcpu import monitor
    p = _start(tmp_path, "--set", "train.save_step=4")
    run = tmp_path / "tiny"
    _wait_for_step(run, 7)
    p.kill()                                              # kill -9: no checkpoint at the end
    p.communicate(timeout=60)
    assert max(train_losses(run)) >= 7
    r = run_cli(*tiny(tmp_path, "--resume", "auto", "--set", "train.save_step=4", steps=10))
    assert r.returncode == 0, r.stderr
    raw = [r for r in records(run, "train")]
    assert len(raw) > 10                                  # steps 5.. were logged twice
    steps = [r["step"] for r in monitor.read_log(run / "metrics.jsonl")
             if r["event"] == "train"]
    assert steps == list(range(1, 11))


def test_the_monitor_survives_malformed_lines(tmp_path):
    assert run_cli(*tiny(tmp_path, steps=3)).returncode == 0
    log = tmp_path / "tiny" / "metrics.jsonl"
    with open(log, "a") as f:
        f.write('{"event": "train", "step": 4}\n[1, 2]\n"text"\n{"event": 5}\n{"no": "event"}\n'
                '{"event": "val", "step": "x", "loss": 3}\n{"event": "checkpoint"}\n{broken\n')
    r = subprocess.run([sys.executable, "-m", "fastcpu.monitor", str(tmp_path / "tiny"),
                        "--once"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "step 3/3" in r.stdout and "run ended: done at step 3" in r.stdout


# 8. a full disk or an unwritable output directory was a traceback
def test_an_unwritable_output_dir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_cli(*tiny(tmp_path / "file" / "runs", steps=1))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path}/file/runs/tiny: cannot create the run directory (Not a directory)"]


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path):
    run = tmp_path / "tiny"
    run.mkdir()
    (run / "checkpoints").write_text("in the way")          # every checkpoint write fails
    r = run_cli(*tiny(tmp_path, "--set", "train.save_step=2", steps=4))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "checkpoints" in line
    assert max(train_losses(run)) == 2                       # it stopped at the failed write


# fine-tuning: --init-from takes weights only and starts a new run
def test_init_from_takes_the_weights_and_starts_a_new_run(tmp_path):
    from fastcpu.config import load_config
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus
    from fastcpu.train import Trainer
    assert run_cli(*tiny(tmp_path / "a", steps=6)).returncode == 0
    src = tmp_path / "a" / "tiny" / "checkpoints" / "final.safetensors"
    r = run_cli(*tiny(tmp_path / "b", "--init-from", str(src), steps=3))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "b" / "tiny"
    assert not records(run, "resume") and sorted(train_losses(run)) == [1, 2, 3]
    cfg = load_config(TINY, [f"train.init_from={src}"])
    data = PreprocessedCorpus(BUNDLED_CORPUS, "train.txt")
    tr = Trainer(cfg, BUNDLED_CORPUS, data, data, tmp_path / "c")
    tensors, _ = checkpoint.load(src)
    for k, v in tr.model.state_dict().items():
        np.testing.assert_array_equal(v, tensors[f"model/{k}"], err_msg=k)
    assert tr.opt.t == 0 and tr.step == 0 and not tr.opt.m.any()


def test_init_from_a_weights_only_file_with_reinit_and_freeze(tmp_path):
    from safetensors.numpy import save_file
    from fastcpu.config import load_config
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus
    from fastcpu.train import Trainer
    data = PreprocessedCorpus(BUNDLED_CORPUS, "train.txt")
    donor = Trainer(load_config(TINY, ["train.seed=7"]), BUNDLED_CORPUS, data, data,
                    tmp_path / "d")
    weights = {k: v.copy() for k, v in donor.model.state_dict().items()}
    save_file(weights, tmp_path / "w.safetensors")
    cfg = load_config(TINY, [f"train.init_from={tmp_path / 'w.safetensors'}",
                             "train.reinit=[postnet]", "train.freeze=[encoder]"])
    tr = Trainer(cfg, BUNDLED_CORPUS, data, data, tmp_path / "e")
    fresh = Trainer(load_config(TINY), BUNDLED_CORPUS, data, data, tmp_path / "f")
    sd, fr = tr.model.state_dict(), fresh.model.state_dict()
    for k in sd:
        np.testing.assert_array_equal(sd[k], fr[k] if k.startswith("postnet.") else weights[k],
                                      err_msg=k)
    frozen = [n for n, p in tr.model.named_parameters() if not p.requires_grad]
    always = {"encoder.position_enc", "decoder.position_enc", "variance_adaptor.pitch_bins",
              "variance_adaptor.energy_bins"}                   # frozen in the reference too
    assert set(frozen) - always == {n for n, _ in tr.model.named_parameters()
                                    if n.startswith("encoder.")} - always
    assert not any(n.startswith("encoder.") for n in tr.buffer.names)


def test_init_from_refuses_a_file_that_does_not_fit(tmp_path):
    assert run_cli(*tiny(tmp_path / "a", steps=2)).returncode == 0
    src = tmp_path / "a" / "tiny" / "checkpoints" / "final.safetensors"
    r = run_cli(*tiny(tmp_path / "b", "--init-from", str(src), "--set",
                      "model.decoder_hidden=48", "--set", "model.encoder_hidden=48", steps=2))
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: --init-from {src}: does not fit this model (other shapes: ")
    assert line.endswith("name modules to start afresh with --reinit")
    r = run_cli(*tiny(tmp_path / "c", "--freeze", "nonexistent", steps=2))
    assert r.returncode == 2 and "train.freeze: no module 'nonexistent' in this model" in r.stderr


# the kill -9 loop: checkpoints every step, killed at random moments, resumed each time
@pytest.mark.slow
def test_kill_9_loop_keeps_every_file_good_and_the_chain_bit_identical(tmp_path):
    import random
    from fastcpu import monitor
    steps, extra = 80, ["--set", "train.save_step=1", "--set", "train.keep_last=2"]
    base = run_cli(*tiny(tmp_path / "base", *extra, steps=steps))
    assert base.returncode == 0, base.stderr
    rnd, kills, run = random.Random(7), 0, tmp_path / "k" / "tiny"
    while kills < 20:
        p = subprocess.Popen([sys.executable, "-m", "fastcpu.train", *tiny(
            tmp_path / "k", "--resume", "auto", "--debug-step-delay", "0.1", *extra,
            steps=steps)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rnd.uniform(0.5, 3.5))             # start-up, a step, a write, ...
        if p.poll() is not None:                      # finished before the kill: start over
            assert p.returncode == 0, p.stderr.read()
            break
        p.kill()
        p.wait()
        kills += 1
    r = run_cli(*tiny(tmp_path / "k", "--resume", "auto", *extra, steps=steps))
    assert r.returncode == 0, r.stderr
    assert kills == 20
    for f in (run / "checkpoints").iterdir():
        assert not f.name.startswith("."), f"temp file left: {f}"
        checkpoint.load(f)                            # verifies the SHA-256 of every file
    a = {x["step"]: x["loss"] for x in monitor.read_log(tmp_path / "base" / "tiny" /
                                                       "metrics.jsonl") if x["event"] == "train"}
    b = {x["step"]: x["loss"] for x in monitor.read_log(run / "metrics.jsonl")
         if x["event"] == "train"}
    assert a == b                                     # every step's losses, bit for bit
    wa, _ = checkpoint.load(tmp_path / "base" / "tiny" / "checkpoints" / "final.safetensors")
    wb, _ = checkpoint.load(run / "checkpoints" / "final.safetensors")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


# launch and watch
def test_detach_runs_in_the_background_and_the_monitor_follows_it(tmp_path):
    t = time.time()
    r = run_cli(*tiny(tmp_path, "--detach", steps=8))
    assert r.returncode == 0, r.stderr
    assert time.time() - t < 60
    run = tmp_path / "tiny"
    pid = int((run / "train.pid").read_text())
    assert f"pid {pid}" in r.stdout and f"tail -f {run / 'train.log'}" in r.stdout
    assert f"python -m fastcpu.monitor {run}" in r.stdout and f"kill -TERM {pid}" in r.stdout
    m = subprocess.run([sys.executable, "-m", "fastcpu.monitor", str(run), "--interval", "1"],
                       capture_output=True, text=True, timeout=180)     # until the run ends
    assert m.returncode == 0, m.stdout + m.stderr
    assert "run ended: done at step 8" in m.stdout
    log = (run / "train.log").read_text()
    assert "done: 8 steps" in log and log.count("fastcpu 0.1.0") == 1      # not teed twice
    assert all(x["rss"] > 0 and x["peak_rss"] >= x["rss"] for x in records(run, "train"))
    mem = records(run, "memory")
    assert len(mem) == 1 and mem[0]["planned"] > 0 and mem[0]["peak_rss"] > 0


def test_detach_checks_before_it_starts(tmp_path):
    assert run_cli(*tiny(tmp_path, steps=2)).returncode == 0
    r = run_cli(*tiny(tmp_path, "--detach", steps=2))
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert not (tmp_path / "tiny" / "train.pid").exists()


def test_a_foreground_run_writes_train_log(tmp_path):
    assert run_cli(*tiny(tmp_path, steps=3)).returncode == 0
    log = (tmp_path / "tiny" / "train.log").read_text()
    assert log.startswith("fastcpu ") and "validation @ step 3" in log and "done: 3 steps" in log


def test_the_monitor_notices_a_killed_run(tmp_path):
    p = _start(tmp_path)
    run = tmp_path / "tiny"
    _wait_for_step(run, 2)
    p.kill()
    p.wait()
    m = subprocess.run([sys.executable, "-m", "fastcpu.monitor", str(run), "--interval", "1"],
                       capture_output=True, text=True, timeout=60)
    assert m.returncode == 1
    assert f"the run's process {p.pid} is gone without an end record (killed?)" in m.stdout


# 4. converted reference checkpoints could not be trained from (--resume-from: KeyError
#    'config'); convert A.safetensors A.safetensors replaced the file with a torch pickle
def _reference_file(path):
    """A checkpoint as the reference's train.py writes it, of the tiny config's model."""
    import torch
    from fastcpu.config import load_config
    from fastcpu.testing.torch_reference import TorchFastSpeech2
    torch.manual_seed(0)
    model = TorchFastSpeech2(load_config(TINY).model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)


def test_a_converted_reference_checkpoint_fine_tunes_with_init_from(tmp_path):
    from fastcpu.convert import main as convert_main
    ref, conv = tmp_path / "ref.pth.tar", tmp_path / "ref.safetensors"
    _reference_file(ref)
    assert convert_main([str(ref), str(conv)]) == 0
    r = run_cli(*tiny(tmp_path, "--resume-from", str(conv), steps=2))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {conv}: has weights but no training state to resume (a reference checkpoint "
        f"converted without its config?); fine-tune from it with --init-from {conv}, or "
        f"convert it with --reference-config DIR"]
    r = run_cli(*tiny(tmp_path, "--init-from", str(conv), steps=3))
    assert r.returncode == 0, r.stderr
    assert max(train_losses(tmp_path / "tiny")) == 3


@pytest.mark.parametrize("src,dst,expect", [
    ("a.safetensors", "a.safetensors", "the destination is the source file"),
    ("a.safetensors", "b.safetensors", "got fastcpu -> fastcpu"),
    ("ref.pth.tar", "b.pth.tar", "got reference -> reference"),
    ("ref.pth.tar", "b.bin", "got reference -> an unknown kind"),
])
def test_convert_takes_the_direction_from_both_names(tmp_path, capsys, src, dst, expect):
    from fastcpu.convert import main as convert_main
    _reference_file(tmp_path / "ref.pth.tar")
    assert convert_main([str(tmp_path / "ref.pth.tar"), str(tmp_path / "a.safetensors")]) == 0
    before = (tmp_path / "a.safetensors").read_bytes()
    capsys.readouterr()
    assert convert_main([str(tmp_path / src), str(tmp_path / dst)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert expect in line
    assert (tmp_path / "a.safetensors").read_bytes() == before       # untouched
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


# 5 (data). bad values were found only when an utterance was first loaded (step 37 of 60, or
#    hours into a run) unless --dry-run was used; a float64 pitch overflowing float32 passed
def _corpus_copy(tmp_path):
    import shutil
    from fastcpu.data import BUNDLED_CORPUS
    dst = tmp_path / "corpus"
    shutil.copytree(BUNDLED_CORPUS, dst)
    return dst


def _first(corpus, split, kind):
    from fastcpu.data import PreprocessedCorpus
    c = PreprocessedCorpus(corpus, split)
    return c.path(c.utts[0], kind)


@pytest.mark.parametrize("damage", ["nan-val-mel", "float64-pitch-overflow", "float-durations"])
def test_bad_values_stop_before_step_1(tmp_path, damage):
    corpus = _corpus_copy(tmp_path)
    if damage == "nan-val-mel":
        f = _first(corpus, "val.txt", "mel")
        a = np.load(f)
        a[0, 0] = np.nan
    elif damage == "float64-pitch-overflow":
        f = _first(corpus, "train.txt", "pitch")
        a = np.load(f).astype(np.float64)
        a[0] = 1e300
    else:
        f = _first(corpus, "train.txt", "duration")
        a = np.load(f).astype(np.float32)
    np.save(f, a)
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = run_cli(*tiny(tmp_path, "--data-dir", str(corpus), steps=2), env=env)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {f}: ")
    assert not (tmp_path / "tiny").exists()                       # before step 1


def test_the_data_check_is_cached_and_notices_a_changed_file(tmp_path):
    corpus = _corpus_copy(tmp_path)
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert run_cli(*tiny(tmp_path / "a", "--data-dir", str(corpus), steps=1),
                   env=env).returncode == 0
    assert len(list((tmp_path / "cache" / "fastcpu" / "validated").iterdir())) == 2
    f = _first(corpus, "train.txt", "energy")
    a = np.load(f)
    a[0] = np.inf
    np.save(f, a)                                                 # size/mtime change
    r = run_cli(*tiny(tmp_path / "b", "--data-dir", str(corpus), steps=1), env=env)
    assert r.returncode == 2 and f"{f}: non-finite values" in r.stderr


def _two_voice_copy(tmp_path):
    """The bundled corpus with its second half relabelled as a second speaker."""
    import json as _json
    corpus = _corpus_copy(tmp_path)
    for split in ("train.txt", "val.txt"):
        lines = (corpus / split).read_text().splitlines()
        out = []
        for i, line in enumerate(lines):
            base, spk, rest = line.split("|", 2)
            if i % 2:
                for kind in ("mel", "pitch", "energy", "duration"):
                    (corpus / kind / f"{spk}-{kind}-{base}.npy").rename(
                        corpus / kind / f"voice2-{kind}-{base}.npy")
                spk = "voice2"
            out.append("|".join([base, spk, rest]))
        (corpus / split).write_text("\n".join(out) + "\n")
    (corpus / "speakers.json").write_text(_json.dumps({"espeak_en_us": 0, "voice2": 1}))
    return corpus


def test_fine_tune_a_converted_reference_checkpoint_for_two_voices(tmp_path):
    from fastcpu.convert import main as convert_main
    ref, conv = tmp_path / "ref.pth.tar", tmp_path / "ref.safetensors"
    _reference_file(ref)                                  # single-speaker, as LJSpeech's
    assert convert_main([str(ref), str(conv)]) == 0
    corpus = _two_voice_copy(tmp_path)
    r = run_cli(*tiny(tmp_path, "--data-dir", str(corpus), "--init-from", str(conv),
                      "--set", "model.multi_speaker=true", steps=4))
    assert r.returncode == 2 and "speaker_emb.weight" in r.stderr and "--reinit" in r.stderr
    r = run_cli(*tiny(tmp_path, "--data-dir", str(corpus), "--init-from", str(conv),
                      "--reinit", "speaker_emb", "--set", "model.multi_speaker=true", steps=4))
    assert r.returncode == 0, r.stderr
    assert "tensor(s) of speaker_emb kept freshly initialised" in r.stdout
    t, meta = checkpoint.load(tmp_path / "tiny" / "checkpoints" / "final.safetensors")
    assert t["model/speaker_emb.weight"].shape == (2, 32)
    ref_w, _ = checkpoint.load(conv)
    k = "model/decoder.layer_stack.0.pos_ffn.w_1.weight"
    assert not np.array_equal(t[k], ref_w[k])             # trained from the reference's weights
    assert all(np.isfinite(v) for v in train_losses(tmp_path / "tiny").values())


# 8. a full disk was a traceback; the previous good checkpoint must be kept
def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    import os
    disk = tmp_path / "disk"
    disk.mkdir()
    assert os.geteuid() == 0, "the test mounts a small tmpfs (CI runs as root)"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(disk)], check=True)
    try:
        r = run_cli(*tiny(disk, "--set", "train.save_step=1", "--set", "train.keep_last=0",
                          steps=30))
        assert r.returncode == 1, r.stderr
        [line] = r.stderr.strip().splitlines()
        assert "No space left on device" in line, line
        ck = sorted((disk / "tiny" / "checkpoints").glob("step-*.safetensors"))
        assert ck, "no checkpoint was written before the disk filled"
        for f in ck:
            checkpoint.load(f)                            # every kept file verifies
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_resume_auto_starts_a_run_killed_before_its_first_checkpoint(tmp_path):
    p = _start(tmp_path)
    run = tmp_path / "tiny"
    _wait_for_step(run, 2)                                # save_step 25: no checkpoint yet
    p.kill()
    p.wait()
    assert not list((run / "checkpoints").glob("*.safetensors"))
    r = run_cli(*tiny(tmp_path, "--resume", "auto", steps=4))
    assert r.returncode == 0, r.stderr
    from fastcpu import monitor
    steps = [x["step"] for x in monitor.read_log(run / "metrics.jsonl") if x["event"] == "train"]
    assert steps == [1, 2, 3, 4]                          # the killed segment is superseded


@pytest.mark.parametrize("place", ["after-update", "in-validation", "in-save"])
def test_each_place_after_the_update_saves_that_steps_state(tmp_path, place):
    sched = ["--set", "train.val_step=6", "--set", "train.save_step=6"]
    base = run_cli(*tiny(tmp_path / "base", *sched, steps=18))
    assert base.returncode == 0, base.stderr
    out = tmp_path / "f"
    r = run_cli(*tiny(out, *sched, "--debug-fault", f"{place}@12", steps=18))
    assert r.returncode == 1 and f"of step 12 (--debug-fault)" in r.stderr
    ck = out / "tiny" / "checkpoints" / "emergency.safetensors"
    _, meta = checkpoint.load(ck)
    assert meta["state"]["step"] == 12 and meta["optimizer_step"] == 12
    assert "saved the state after step 12 (the error came after its update)" in r.stdout
    r = run_cli(*tiny(out, *sched, "--resume-from", str(ck), steps=18))
    assert r.returncode == 0, r.stderr
    assert train_losses(out / "tiny") == train_losses(tmp_path / "base" / "tiny")


# run size: best is weights-only by default; no periodic file duplicates final
def test_resume_from_every_kept_checkpoint_is_bit_exact_and_best_is_weights_only(tmp_path):
    every = ("--set", "train.save_step=10", "--set", "train.keep_last=2", "--set",
             "train.epoch_save=2", "--batch-size", "16")          # 14 steps an epoch
    base = run_cli(*tiny(tmp_path / "base", *every))
    assert base.returncode == 0, base.stderr
    ck = tmp_path / "base" / "tiny" / "checkpoints"
    kept = sorted(p.name for p in ck.glob("*.safetensors"))
    # 30 steps, keep_last 2: step-20, step-30, the second epoch's end (epoch_save 2)
    assert kept == ["best.safetensors", "epoch-0001.safetensors", "final.safetensors",
                    "step-00000020.safetensors", "step-00000030.safetensors"], kept
    t, meta = checkpoint.load(ck / "best.safetensors")
    assert meta["weights_only"] and not [k for k in t if k.startswith("optim/")]
    assert (ck / "best.safetensors").stat().st_size < 0.5 * (ck / "final.safetensors").stat(
        ).st_size
    want, _ = checkpoint.load(ck / "final.safetensors")
    for name in kept:
        if name in ("best.safetensors", "final.safetensors"):
            continue
        out = tmp_path / name
        r = run_cli(*tiny(out, "--resume-from", str(ck / name), *every))
        assert r.returncode == 0, (name, r.stderr)
        got, _ = checkpoint.load(out / "tiny" / "checkpoints" / "final.safetensors")
        assert all(np.array_equal(got[k], want[k]) for k in want), name
        again = train_losses(out / "tiny") if (out / "tiny" / "metrics.jsonl").exists() \
            else {}
        start = checkpoint.peek_meta(ck / name)["state"]["step"]
        assert again == {s: v for s, v in train_losses(tmp_path / "base" / "tiny").items()
                         if s > start}, name
    r = run_cli(*tiny(tmp_path / "b", "--resume-from", str(ck / "best.safetensors")))
    assert r.returncode == 2
    assert "holds the weights only" in r.stderr and "--init-from" in r.stderr
    r = run_cli(*tiny(tmp_path / "c", "--init-from", str(ck / "best.safetensors"), steps=2))
    assert r.returncode == 0, r.stderr
