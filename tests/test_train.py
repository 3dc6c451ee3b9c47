"""`python -m fastcpu.train` end to end on the bundled corpus with configs/tiny.yaml: a run that
learns and writes everything, bit-exact resume after SIGINT/SIGTERM, emergency checkpoints,
non-finite steps, corrupted checkpoints, exact gradient accumulation, the profiler table and
trace, the monitor, and one-line exit-status-2 errors for bad input."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastcpu.startup import config_path
from fastcpu import checkpoint
from fastcpu.train import main as train_main

TINY = str(config_path("tiny"))
STEPS = 30


def run_cli(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "fastcpu.train", *args], capture_output=True,
                          text=True, cwd=cwd, **kw)


def tiny(out, *extra, steps=STEPS):
    return ["--config", TINY, "--output-dir", str(out), "--max-steps", str(steps),
            "--threads", "2", *extra]


def records(run, event=None):
    recs = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if event is None or r["event"] == event]


def train_losses(run):
    return {r["step"]: r["loss"]["total"] for r in records(run, "train")}


def weights(path):
    t, meta = checkpoint.load(path)
    return {k: v for k, v in t.items()}, meta


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted 30-step run."""
    out = tmp_path_factory.mktemp("baseline")
    r = run_cli(*tiny(out))
    assert r.returncode == 0, r.stderr
    return out / "tiny", r


def test_run_learns_and_writes_metrics_tensorboard_checkpoints_samples(baseline):
    run, r = baseline
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first = np.mean([losses[s] for s in range(1, 6)])
    last = np.mean([losses[s] for s in range(STEPS - 4, STEPS + 1)])
    assert last < 0.6 * first, (first, last)
    rec = records(run, "train")[-1]
    for k in ("total", "mel", "postnet_mel", "pitch", "energy", "duration"):
        assert np.isfinite(rec["loss"][k])
    assert {"data", "forward", "backward", "optimizer", "step"} <= set(rec["time"])
    assert rec["lr"] > 0 and rec["grad_norm"] > 0 and rec["frames_per_s"] > 0
    vals = records(run, "val")
    assert vals and all(np.isfinite(v["loss"]["total"]) for v in vals)
    # checkpoints load, samples exist, the plain (non-terminal) log has no carriage returns
    ck = run / "checkpoints"
    for name in ("final", "best", "step-00000025"):
        _, meta = weights(ck / f"{name}.safetensors")
        assert meta["fastcpu_version"] and meta["threads"] == 2 and meta["config"]["name"]
    pngs = sorted((run / "samples" / f"step-{STEPS:08d}").glob("*.png"))
    assert pngs and pngs[-1].read_bytes().startswith(b"\x89PNG")
    # the prediction at each sample, the target once, both through the same Griffin-Lim
    for wavs in [(run / "samples" / f"step-{STEPS:08d}").glob("*-prediction.wav"),
                 (run / "samples").glob("*-target.wav")]:
        (wav,) = wavs
        from scipy.io import wavfile
        sr, x = wavfile.read(wav)
        assert sr == 22050 and x.dtype == np.int16 and len(x) > 1000
    assert "\r" not in r.stdout and "step 10/30" in r.stdout
    assert "memory: weights" in r.stdout and "blas:" in r.stdout


def test_tensorboard_shows_train_and_validation_as_two_runs_with_the_same_tags(baseline):
    """TensorBoard's own reader: tb/train and tb/val carry loss/* under the same tags (one chart
    overlays them), train also lr and grad norm and the config as text; the samples' mel
    figure and both audios in val; the config as hparams."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run, _ = baseline

    def load(sub):
        ea = EventAccumulator(str(run / "tb" / sub), size_guidance={
            "images": 0, "audio": 0, "scalars": 0, "tensors": 0})
        ea.Reload()
        return ea
    train, val = load("train"), load("val")
    terms = {f"loss/{k}" for k in ("total", "mel", "postnet_mel", "pitch", "energy",
                                   "duration")}
    assert terms | {"lr", "grad_norm", "frames_per_s"} <= set(train.Tags()["scalars"])
    assert terms <= set(val.Tags()["scalars"])
    total = train.Scalars("loss/total")
    ours = train_losses(run)
    assert [e.step for e in total] == [1, 10, 20, 30]
    assert all(abs(e.value - ours[e.step]) <= 1e-5 * abs(ours[e.step]) for e in total)
    vals = {r["step"]: r["loss"]["total"] for r in records(run, "val")}
    got = {e.step: e.value for e in val.Scalars("loss/total")}
    assert got.keys() == vals.keys() and all(abs(got[k] - vals[k]) <= 1e-5 * vals[k]
                                             for k in got)
    (img,) = val.Images("mel")[-1:]
    assert img.encoded_image_string.startswith(b"\x89PNG") and img.width > 500
    for kind in ("prediction", "target"):
        (aud,) = val.Audio(f"audio/{kind}")[-1:]
        assert aud.sample_rate == 22050
    (text,) = train.Tensors("config/text_summary")
    assert b"encoder_hidden: 32" in text.tensor_proto.string_val[0]
    hp = load("train/hparams")
    assert {"hparam/best_val_loss", "hparam/last_val_loss"} <= set(hp.Tags()["scalars"])


def test_profile_table_sums_to_the_step_time_and_trace_parses(tmp_path):
    """configs/demo.yaml (the default run): steps 2-3 profiled."""
    r = run_cli("--config", str(config_path("demo")), "--output-dir", str(tmp_path),
                "--max-steps", "4", "--profile-steps", "2", "--threads", "2")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "demo"
    (prof,) = records(run, "profile")
    table = Path(prof["table"]).read_text()
    assert "clip_adam" in table and "Conv1d" in table and "sum of ops" in table
    # the profiled steps as the trainer itself timed them
    step_s = sum(r["time"]["step"] for r in records(run, "train") if r["step"] in (2, 3))
    assert abs(prof["sum_ops_s"] - step_s) <= 0.10 * step_s, (prof["sum_ops_s"], step_s)
    assert abs(prof["wall_s"] - step_s) <= 0.05 * step_s, (prof["wall_s"], step_s)
    trace = json.loads(Path(prof["trace"]).read_text())
    assert len(trace["traceEvents"]) > 50
    assert all({"name", "ph", "ts", "dur"} <= set(e) for e in trace["traceEvents"])


def test_monitor_shows_the_run(baseline):
    run, _ = baseline
    r = subprocess.run([sys.executable, "-m", "fastcpu.monitor", str(run), "--once"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"step {STEPS}/{STEPS}" in r.stdout and "ETA" in r.stdout
    assert "final.safetensors" in r.stdout and "validation @ 30" in r.stdout
    assert "run ended: done" in r.stdout


def _interrupt(out, sig, at_step):
    p = subprocess.Popen([sys.executable, "-m", "fastcpu.train",
                          *tiny(out, "--debug-step-delay", "0.15")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = out / "tiny"
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and max(train_losses(run), default=0) >= at_step:
            break
        time.sleep(0.02)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    return p.returncode, stdout, stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_then_resume_equals_the_uninterrupted_run(baseline, tmp_path, sig):
    run0, _ = baseline
    rc, stdout, stderr = _interrupt(tmp_path, sig, 8)
    assert rc == 128 + sig.value, stderr                  # 130 / 143: what shells expect
    run = tmp_path / "tiny"
    _, meta = weights(run / "checkpoints" / "interrupted.safetensors")
    k = meta["state"]["step"]
    assert meta["reason"] == sig.name and 8 <= k < STEPS
    assert f"interrupted by {sig.name} at step {k}" in stdout
    assert max(train_losses(run)) == k
    r = run_cli(*tiny(tmp_path, "--resume-from", str(run)))
    assert r.returncode == 0, r.stderr
    assert train_losses(run) == train_losses(run0)            # every step, bit for bit
    a, _ = weights(run0 / "checkpoints" / "final.safetensors")
    b, _ = weights(run / "checkpoints" / "final.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_exception_mid_step_saves_the_last_good_state_and_reraises(baseline, tmp_path):
    run0, _ = baseline
    r = run_cli(*tiny(tmp_path, "--debug-fault", "exception@12"))
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "RuntimeError: injected fault in step 12" in r.stderr
    ck = tmp_path / "tiny" / "checkpoints" / "emergency.safetensors"
    _, meta = weights(ck)
    assert meta["state"]["step"] == 11 and meta["optimizer_step"] == 11
    assert "injected fault" in meta["reason"]
    assert f"saved the last good state (step 11) to {ck}" in r.stdout
    # the emergency state is exact: resuming from it reproduces the uninterrupted run
    r = run_cli(*tiny(tmp_path, "--resume-from", str(ck)))
    assert r.returncode == 0, r.stderr
    assert train_losses(tmp_path / "tiny") == train_losses(run0)
    a, _ = weights(run0 / "checkpoints" / "final.safetensors")
    b, _ = weights(tmp_path / "tiny" / "checkpoints" / "final.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_nonfinite_steps_are_skipped_and_reported(tmp_path):
    r = run_cli(*tiny(tmp_path, "--debug-fault", "nan@5:6", "--set", "train.max_nonfinite=3",
                      "--set", "train.save_step=2", "--set", "train.keep_last=2", steps=10))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "tiny"
    skips = records(run, "skip")
    assert [s["step"] for s in skips] == [5, 6]
    assert all(s["reason"] == "non-finite loss" for s in skips)
    assert sorted(train_losses(run)) == [1, 2, 3, 4, 7, 8, 9, 10]
    assert "step 5: skipped (non-finite loss, 1 in a row)" in r.stdout
    t, meta = weights(run / "checkpoints" / "final.safetensors")
    assert meta["optimizer_step"] == 8 and all(np.isfinite(v).all() for v in t.values())
    # keep-last-2 retention of the periodic checkpoints
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [
        "step-00000008.safetensors", "step-00000010.safetensors"]


def test_too_many_nonfinite_steps_stop_with_an_emergency_checkpoint(tmp_path):
    r = run_cli(*tiny(tmp_path, "--debug-fault", "nan@5", "--set", "train.max_nonfinite=3",
                      steps=20))
    assert r.returncode == 1
    assert "stopped: 3 non-finite steps in a row" in r.stderr
    t, meta = weights(tmp_path / "tiny" / "checkpoints" / "emergency.safetensors")
    assert meta["optimizer_step"] == 4                # the weights of the last good update
    assert all(np.isfinite(v).all() for v in t.values())
    # BatchNorm statistics are those after step 4 too (the skipped steps' forwards undone)
    assert int(t["model/postnet.convolutions.0.1.num_batches_tracked"]) == 4


def test_corrupted_checkpoints_are_refused_naming_the_file(baseline, tmp_path):
    run0, _ = baseline
    src = run0 / "checkpoints" / "step-00000025.safetensors"
    blob = src.read_bytes()
    trunc = tmp_path / "truncated.safetensors"
    trunc.write_bytes(blob[:len(blob) // 2])
    flip = tmp_path / "flipped.safetensors"
    b = bytearray(blob)
    b[len(b) - 100] ^= 0x10
    flip.write_bytes(bytes(b))
    for p, what in ((trunc, "truncated"), (flip, "checksum mismatch")):
        r = run_cli(*tiny(tmp_path / "o", "--resume-from", str(p)))
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and str(p) in r.stderr and what in r.stderr, r.stderr
    # a directory falls back past a corrupted newer checkpoint to the previous good one
    d = tmp_path / "dir" / "checkpoints"
    d.mkdir(parents=True)
    shutil.copy(src, d / "step-00000025.safetensors")
    final = (run0 / "checkpoints" / "final.safetensors").read_bytes()
    (d / "final.safetensors").write_bytes(final[:-10])
    r = run_cli(*tiny(tmp_path / "o2", "--resume-from", str(tmp_path / "dir")))
    assert r.returncode == 0, r.stderr
    assert "warning: skipping" in r.stdout and "final.safetensors" in r.stdout
    assert min(train_losses(tmp_path / "o2" / "tiny")) == 26


def _synthetic_items(rng, n_long=4, L=20, T=100):
    """Ragged utterances; every micro-batch of two holds one with the longest text and mel,
    so each micro-batch pads to the same shape as the large batch (the reference model's
    outputs depend on padding through the PostNet convs and the variance adaptor)."""
    items = []
    for i in range(2 * n_long):
        long = i % 2 == 0
        n = L if long else int(rng.integers(5, L - 4))
        t = T if long else int(rng.integers(30, T - 10))
        d = np.full(n, t // n)
        d[:t - d.sum()] += 1
        rng.shuffle(d)
        items.append({"id": f"u{i}", "speaker": 0, "raw_text": "", "text":
                      rng.integers(64, 148, n), "duration": d.astype(np.int64),
                      "mel": rng.standard_normal((t, 80)).astype(np.float32) - 4,
                      "pitch": rng.standard_normal(n).astype(np.float32),
                      "energy": rng.standard_normal(n).astype(np.float32)})
    return items


def test_accumulation_4x2_equals_batch_8():
    from fastcpu.config import load_config
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus, collate
    from fastcpu.nn.layers import BatchNorm1d
    from fastcpu.train import Trainer
    over = [f"model.{k}=0.0" for k in ("encoder_dropout", "decoder_dropout", "vp_dropout",
                                        "postnet_dropout")]
    train = PreprocessedCorpus(BUNDLED_CORPUS, "train.txt")
    items = _synthetic_items(np.random.default_rng(0))
    grads, updated = {}, {}
    for mode in ("large", "accumulated", "naive"):
        cfg = load_config(TINY, over + ["optimizer.grad_acc_step=4", "train.batch_size=2"])
        tr = Trainer(cfg, BUNDLED_CORPUS, train, train, Path("unused"))
        tr.model.train()
        for _, m in tr.model.named_modules():
            if isinstance(m, BatchNorm1d):     # batch statistics are per micro-batch in
                m.eval()                       # every framework; fixed statistics here
        tr.opt.zero_grad()
        if mode == "large":
            tr.accumulate([collate(items)], 1)
        elif mode == "accumulated":
            tr.accumulate([collate(items[i:i + 2]) for i in range(0, 8, 2)], 1)
        else:                                   # plain average of micro-batch means
            for i in range(0, 8, 2):
                tr.accumulate([collate(items[i:i + 2])], 1)
            tr.buffer.grad /= 4
        grads[mode] = tr.buffer.grad.copy()
        tr.opt.step()
        updated[mode] = tr.buffer.data.copy()
    g, a = grads["large"], grads["accumulated"]
    assert np.linalg.norm(a - g) <= 1e-5 * np.linalg.norm(g)
    # the naive average is measurably different: the test can fail
    assert np.linalg.norm(grads["naive"] - g) > 1e-2 * np.linalg.norm(g)
    lr = 3e-3 / 10                    # tiny.yaml: lr 3e-3, first warm-up step of 10
    diff = np.abs(updated["accumulated"] - updated["large"])
    assert diff.max() <= 2 * lr + 1e-6
    # Adam's first update is ~lr * sign(g): only rounding-level gradients may flip sign
    assert np.mean(diff > 1e-6) < 1e-3


def test_no_arguments_trains_the_demo_config_on_the_bundled_corpus(demo_run, tmp_path):
    """The documented default: configs/demo.yaml, bundled corpus, into runs/demo/."""
    cwd, r = demo_run
    assert r.returncode == 0, r.stderr[-2000:]
    run = cwd / "runs" / "demo"
    losses = train_losses(run)
    assert len(losses) == 400
    assert np.mean([losses[s] for s in range(381, 401)]) < 0.5 * np.mean(
        [losses[s] for s in range(1, 21)])
    assert (run / "checkpoints" / "final.safetensors").exists()
    # the loss falls without spikes, and the validation pitch loss clearly below step 100's
    tot = np.array([losses[s] for s in range(1, 401)])
    med = np.array([np.median(tot[max(0, i - 20):i + 20]) for i in range(400)])
    assert (tot / med)[20:].max() < 2.0, (tot / med)[20:].max()
    val = {r["step"]: r["loss"]["pitch"] for r in records(run, "val")}
    last = [val[s] for s in sorted(val)[-3:]]
    assert np.mean(last) < 0.85 * val[100], (val[100], last)
    # its best checkpoint speaks: about espeak-ng's own length, slower with the control, and a
    # --source batch writes a set per line
    from fastcpu.data import features as F
    from fastcpu.data.espeak_corpus import ESPEAK_PITCH_RANGE, utterances
    sentence = "The quick brown fox jumps over the lazy dog."
    best = run / "checkpoints" / "best.safetensors"
    seconds = {}
    for dc in ("1.0", "1.5"):
        out = tmp_path / f"syn-{dc}"
        r = subprocess.run([sys.executable, "-m", "fastcpu.synthesize", "--checkpoint",
                            str(best), "--text", sentence, "--out", str(out),
                            "--duration-control", dc], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert {p.suffix for p in out.iterdir()} == {".wav", ".npy", ".json", ".png"}
        seconds[dc] = json.loads((out / "utt.json").read_text())["seconds"]
    (_, _, _, wav, _), = utterances([sentence], ["en-us"], pitch_range=ESPEAK_PITCH_RANGE)
    assert abs(seconds["1.0"] / (len(wav) / F.SR) - 1) <= 0.25, (seconds, len(wav) / F.SR)
    assert 1.3 <= seconds["1.5"] / seconds["1.0"] <= 1.7, seconds
    from fastcpu.data import sentences
    src = tmp_path / "twenty.txt"
    src.write_text("\n".join(sentences.generate(20, 7)) + "\n")
    r = subprocess.run([sys.executable, "-m", "fastcpu.synthesize", "--checkpoint", str(best),
                        "--source", str(src), "--out", str(tmp_path / "twenty")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "twenty").glob("*.wav"))) == 20
    assert len(list((tmp_path / "twenty").glob("*.json"))) == 20
    # the run stays small: four step files for select (weights only once the run is done),
    # best weights-only, final with Adam's state; the rest is samples (free-running ones at each
    # of ~18 validations) and TensorBoard. (What select, evaluate and report add to the run —
    # test_workflow shares it — is not counted.)
    mine = [p for p in (run / "checkpoints").iterdir()
            if p.name not in ("selected.safetensors", "averaged.safetensors")]
    ckpts = sum(p.stat().st_size for p in mine)
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file() and not (
        {"eval", "report"} & set(p.relative_to(run).parts)) and p.name not in (
        "selection.json", "selection.md", "selected.safetensors", "averaged.safetensors"))
    assert ckpts <= 80 * 2 ** 20 and size <= 100 * 2 ** 20, (ckpts, size)
    kept = sorted(p.name for p in mine)
    steps = [f"step-{s:08d}.safetensors" for s in (100, 200, 300, 400)]
    assert kept == ["best.safetensors", "final.safetensors", *steps], kept
    for name in ("best", *(s[:-12] for s in steps)):   # weights for selection; resume from final
        assert checkpoint.peek_meta(run / "checkpoints" / f"{name}.safetensors")["weights_only"]
    assert "optimizer_step" in checkpoint.peek_meta(run / "checkpoints" / "final.safetensors")


BAD = [
    (["--set", "train.nope=1"], "train: unknown key 'nope'"),
    (["--set", "train.batch_size=abc"], "train.batch_size: expected an integer"),
    (["--batch-size", "0"], "train.batch_size: must be > 0"),
    (["--accumulation-steps", "1000"], "exceeds the 224 training utterances"),
    (["--data-dir", "/nonexistent/corpus"], "/nonexistent/corpus: corpus directory not found"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--batch-size", "x"], "invalid int value: 'x'"),
    (["--config", "/nonexistent.yaml"], "config file not found: /nonexistent.yaml"),
    (["--resume-from", "/nonexistent/run"], "/nonexistent/run: no such file or directory"),
    (["--learning-rate", "-1"], "optimizer.lr: must be > 0"),
]


@pytest.mark.parametrize("argv,expect", BAD, ids=[e for _, e in BAD])
def test_bad_input_is_one_line_and_exit_status_2(argv, expect, capsys, tmp_path):
    args = ["--config", TINY, "--output-dir", str(tmp_path)] + argv
    if argv[0] == "--config":
        args = ["--output-dir", str(tmp_path)] + argv
    try:
        rc = train_main(args)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expect in err and err.count("\n") == 1, err
    assert not (tmp_path / "tiny").exists()


def test_help_documents_every_option_and_dry_run_plans(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        train_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--output-dir", "--batch-size", "--learning-rate",
                 "--warmup-steps", "--accumulation-steps", "--max-grad-norm", "--num-epochs",
                 "--max-steps", "--threads", "--seed", "--resume-from", "--dry-run",
                 "--profile-steps", "--data-dir"):
        assert flag in out, flag
    import dataclasses
    from fastcpu.config import Config
    for section in dataclasses.fields(Config):       # and every config key, with its default
        sub = getattr(Config(), section.name)
        for f in (dataclasses.fields(sub) if dataclasses.is_dataclass(sub) else ()):
            assert f"{f.name}=" in " ".join(out.split()), f"{section.name}.{f.name}"
    assert train_main(["--config", TINY, "--output-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "steps/epoch" in out and "memory: weights" in out and "dry run" in out
    assert not (tmp_path / "tiny").exists()


def test_configs_load():
    from fastcpu.config import load_config
    for name in ("ljspeech", "demo", "stable", "tiny"):
        cfg = load_config(config_path(name))
        assert cfg.name
    s = load_config(config_path("stable"))
    assert (s.optimizer.lr, s.train.batch_size, s.optimizer.grad_acc_step,
            s.optimizer.grad_clip_thresh, s.model.encoder_dropout) == (5e-5, 8, 4, 0.5, 0.2)


def test_early_stopping_and_divergence_warning(tmp_path, monkeypatch, capsys):
    """The loop's decisions, with validation results scripted: best at step 1, then worse."""
    from fastcpu.config import load_config
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus
    from fastcpu.train import TERMS, Trainer
    cfg = load_config(TINY, ["train.val_step=1", "train.early_stop_patience=2",
                             "train.total_step=20", f"train.output_dir={tmp_path}"])
    data = PreprocessedCorpus(BUNDLED_CORPUS, "train.txt")
    run = tmp_path / "tiny"
    run.mkdir()
    tr = Trainer(cfg, BUNDLED_CORPUS, data, data, run)
    scripted = iter([5.0, 6.0, 1000.0])

    def fake_validate():
        v = next(scripted)
        return {"total": v, **{k: v / 5 for k in TERMS}}, None
    monkeypatch.setattr(tr, "validate", fake_validate)
    assert tr.run() == 0
    vals = records(run, "val")
    assert [v["step"] for v in vals] == [1, 2, 3] and vals[0]["best"] == 5.0
    assert records(run, "early_stop")[0]["step"] == 3
    assert "diverging" in vals[2]["warning"] and "warning" not in vals[0]
    assert "early stopping: no validation improvement in 2 validations" in capsys.readouterr().out
    assert max(train_losses(run)) == 3


def test_signal_during_validation_saves_and_the_resumed_run_validates_first(tmp_path):
    """A stop request seen inside the validation loop: the validation is abandoned, the state
    saved as `interrupted` with the validation pending, and the resumed run does it first."""
    from fastcpu.config import load_config
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus
    from fastcpu.train import Trainer, resolve_resume
    cfg = load_config(TINY, ["train.val_step=3", "train.total_step=6",
                             f"train.output_dir={tmp_path}"])
    tr_set = PreprocessedCorpus(BUNDLED_CORPUS, "train.txt")
    va_set = PreprocessedCorpus(BUNDLED_CORPUS, "val.txt")
    run = tmp_path / "tiny"
    run.mkdir()
    tr = Trainer(cfg, BUNDLED_CORPUS, tr_set, va_set, run)
    load = tr.load_batch

    def load_and_signal(dataset, idx):
        if dataset is va_set:
            tr.stop_signal = "SIGTERM"          # what the handler does
        return load(dataset, idx)
    tr.load_batch = load_and_signal
    assert tr.run() == 128 + signal.SIGTERM.value
    path, tensors, meta = resolve_resume(str(run))
    assert path.name == "interrupted.safetensors"
    assert meta["state"]["step"] == 3 and meta["state"]["pending_val"] is True
    assert not records(run, "val")
    tr2 = Trainer(cfg, BUNDLED_CORPUS, tr_set, va_set, run, resume=(path, tensors, meta))
    assert tr2.run() == 0
    vals = records(run, "val")
    assert [(v["step"], v["why"]) for v in vals] == [(3, "resumed"), (6, "step")]


def test_num_epochs_stops_at_the_epoch_end_with_an_epoch_checkpoint(tmp_path):
    r = run_cli(*tiny(tmp_path, "--num-epochs", "1", "--set", "train.val_step=1000",
                      steps=1000))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "tiny"
    steps = max(train_losses(run))
    assert steps == 224 // 4                          # 224 utterances, batches of 4
    assert [(v["step"], v["why"]) for v in records(run, "val")] == [(steps, "epoch")]
    assert (run / "checkpoints" / "epoch-0000.safetensors").exists()
