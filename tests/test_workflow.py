"""After training, on the no-argument demo run: evaluate (teacher and free), select, compare (in
a real headless browser) and report; and their bad input."""
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fastcpu import checkpoint

from tests import browser

SENTENCES = (
    "fox|{DH AH0 K W IH1 K B R AW1 N F AA1 K S JH AH1 M P S OW2 V ER0 DH AH0 L EY1 Z IY0 D AA1 G}\n"
    "station|Is this the right way to the station?\n"
    "hello|{HH AH0 L OW1 W ER1 L D sp HH AW2 AA0 R Y UW0 T AH0 D EY1}\n")


def cli(module, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", f"fastcpu.{module}", *map(str, args)],
                          capture_output=True, text=True, timeout=1200, cwd=cwd)


def one_line_error(r, want):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert want in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


@pytest.fixture(scope="module")
def demo(demo_run):
    """The no-argument demo run (conftest: once a session)."""
    cwd, r = demo_run
    assert r.returncode == 0, r.stderr
    return cwd / "runs" / "demo"


def val_loss_at(run, step):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["event"] == "val" and r["step"] == step][-1]["loss"]


def test_evaluate_teacher_and_free(demo, tmp_path):
    final = demo / "checkpoints" / "final.safetensors"
    got = {}
    for mode in ("teacher", "free"):
        r = cli("evaluate", "--checkpoint", final, "--mode", mode, "--out", tmp_path / mode)
        assert r.returncode == 0, r.stderr
        for what in ("MCD", "duration MAE", "pitch RMSE", "energy MAE", "loss total"):
            assert what in r.stdout, r.stdout
        s = json.loads((tmp_path / mode / "summary.json").read_text())
        assert s["n_utterances"] == 16 and s["mode"] == mode and s["step"] == 400
        for k in ("mcd_db", "duration_mae_frames", "pitch_rmse_hz", "energy_mae"):
            assert np.isfinite(s[k]) and s[k] > 0, (k, s[k])
        assert 2 < s["mcd_db"] < 20
        rows = (tmp_path / mode / "metrics.csv").read_text().splitlines()
        assert len(rows) == 17 and rows[0].startswith("id,phones,frames,frames_generated,mcd_db")
        got[mode] = s
    # the teacher-forced loss terms are training's validation loss at that step
    want = val_loss_at(demo, 400)
    for k, v in want.items():
        assert got["teacher"]["loss"][k] == pytest.approx(v, rel=1e-5), k
    # phone-level duration and pitch predictions do not depend on the mode; energy does (its
    # predictor sees the predicted pitch's embedding in free mode)
    assert got["free"]["duration_mae_frames"] == pytest.approx(got["teacher"][
        "duration_mae_frames"], rel=1e-9)
    assert got["free"]["pitch_rmse_hz"] == pytest.approx(got["teacher"]["pitch_rmse_hz"],
                                                         rel=1e-6)


def test_a_target_scored_against_itself_is_zero():
    from fastcpu import evaluate, metrics
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus
    mel = PreprocessedCorpus(BUNDLED_CORPUS, "val.txt").load(3)["mel"]
    v = evaluate.Vocode(gl_iters=4)
    m = metrics.compare_wavs(v.target("x", mel), v.features(mel), 22050, aligned=True)
    assert m["mcd_db"] == 0.0 and m["f0_rmse_hz"] == 0.0 and m["vuv_error"] == 0.0


def test_select_ranks_the_demo_checkpoints(demo):
    r = cli("select", demo, "--criterion", "mcd", "--average", "2")
    assert r.returncode == 0, r.stderr
    res = json.loads((demo / "selection.json").read_text())
    rank = res["ranking"]
    names = [n for e in rank for n in e["checkpoints"]]
    for n in ("step-00000100", "step-00000200", "step-00000300", "best", "final"):
        assert n in names, names
    # final and the step-400 file are the same weights: one entry
    assert any(set(e["checkpoints"]) >= {"final", "step-00000400"} for e in rank)
    mcd = [e["mcd_db"] for e in rank]
    assert mcd == sorted(mcd) and len(rank) >= 5
    by = {n: e for e in rank for n in e["checkpoints"]}
    assert by["step-00000100"]["mcd_db"] > by["final"]["mcd_db"] + 1.0   # training helped
    assert "| rank | checkpoint | step | MCD (dB)" in (demo / "selection.md").read_text()
    assert "| rank | checkpoint" in r.stdout
    # selected: the top entry's weights, weights only
    t, meta = checkpoint.load(demo / "checkpoints" / "selected.safetensors")
    assert meta["kind"] == "selected" and meta["weights_only"]
    assert not [k for k in t if k.startswith("optim/")]
    top = rank[0]["checkpoints"][0]
    src = demo / "checkpoints" / ("averaged.safetensors" if top.startswith("averaged")
                                  else f"{top}.safetensors")
    ref, _ = checkpoint.load(src)
    assert all(np.array_equal(t[k], ref[k]) for k in t)
    # averaged: the mean of the two best single checkpoints
    avg, am = checkpoint.load(demo / "checkpoints" / "averaged.safetensors")
    singles = [e for e in rank if not e["checkpoints"][0].startswith("averaged")][:2]
    assert sorted(am["averaged_from"]) == sorted(e["checkpoints"][0] for e in singles)
    parts = [checkpoint.load(demo / "checkpoints" / f"{n}.safetensors")[0]
             for n in am["averaged_from"]]
    k = "model/decoder.layer_stack.0.slf_attn.w_qs.weight"
    assert np.allclose(avg[k], (parts[0][k].astype(np.float64) + parts[1][k]) / 2, atol=1e-7)
    # every evaluation is kept for the report
    assert (demo / "eval" / "final" / "summary.json").is_file() or \
        (demo / "eval" / "step-00000400" / "summary.json").is_file()


def test_compare_page_in_a_headless_browser(demo, tmp_path):
    if browser.chromium() is None and not browser.required():
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    (tmp_path / "s.txt").write_text(SENTENCES)
    ck = demo / "checkpoints"
    out = tmp_path / "cmp"
    pair = f"{ck / 'step-00000100.safetensors'},{ck / 'final.safetensors'}"
    r = cli("compare", "--checkpoints", pair, "--sentences", tmp_path / "s.txt", "--out", out)
    assert r.returncode == 0, r.stderr
    text = (out / "index.html").read_text()
    assert "step 100" in text and "step 400" in text
    assert "http" not in text.replace("http-equiv", "")          # offline: no CDN, no links
    page = browser.inspect(out / "index.html")
    assert page["console_errors"] == [], page["console_errors"]
    assert len(page["audio"]) == 6 and all(a["ok"] and a["duration"] > 0.3
                                           for a in page["audio"]), page["audio"]
    assert len(page["images"]) == 6 and all(i["ok"] for i in page["images"]), page["images"]
    from matplotlib.image import imread
    shot = imread(io.BytesIO(page["screenshot"]), format="png")
    assert shot.shape[0] > 500 and shot.shape[1] > 800 and shot[..., :3].std() > 0.05
    # copied elsewhere, the page still finds everything (relative paths)
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    again = browser.inspect(moved / "index.html")
    assert all(a["ok"] for a in again["audio"]) and again["console_errors"] == []


def test_report_of_the_demo_run(demo, tmp_path):
    r = cli("report", demo, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert "plateau" in r.stdout or "still improving" in r.stdout
    html = (tmp_path / "rep" / "index.html").read_text()
    for png in ("losses.png", "optimizer.png", "speed.png"):
        assert f'src="{png}"' in html
        from matplotlib.image import imread
        img = imread(tmp_path / "rep" / png)
        assert img.shape[0] >= 300 and img.shape[1] >= 800 and img[..., :3].std() > 0.05
    assert "Diagnosis" in html and "step-00000100.safetensors" in html
    # every axis is labelled, every figure has a legend
    from fastcpu import report
    figs = report.figures(report.load(demo))
    for name, fig in figs.items():
        axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
        assert all(a.get_xlabel() and a.get_ylabel() for a in axes), name
        assert any(a.get_legend() is not None for a in axes), name
    if browser.chromium() is not None:
        page = browser.inspect(tmp_path / "rep" / "index.html")
        assert page["console_errors"] == [] and all(i["ok"] for i in page["images"])


def test_the_diagnosis_names_spikes_overfitting_and_plateaus(tmp_path):
    from fastcpu import report
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"event": "start", "step": 0, "total_step": 300,
             "config": {"name": "x", "optimizer": {"grad_clip_thresh": 1.0}}}]
    rng = np.random.default_rng(0)
    for s in range(1, 301):
        loss = 3.0 / (1 + s / 30) + 0.01 * rng.random()
        norm = 50.0 if s == 150 else 0.8 + 0.1 * rng.random()
        recs.append({"event": "train", "step": s, "epoch": (s - 1) // 30,
                     "loss": {"total": loss}, "lr": 1e-3, "grad_norm": norm,
                     "time": {"step": 0.1}, "frames_per_s": 1000.0})
        if s % 30 == 0:                        # validation bottoms out at step 120, then rises
            v = 2.0 - 0.004 * s if s <= 120 else 1.52 + 0.003 * (s - 120)
            recs.append({"event": "val", "step": s, "loss": {"total": v}, "best": 0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    d = dict((t.split(":")[0], lv) for lv, t in report.diagnose(report.load(run)))
    text = " | ".join(t for _, t in report.diagnose(report.load(run)))
    assert "1 gradient-norm spike(s)" in text and "step 150" in text
    assert "validation diverging from training" in text and "step 120" in text
    assert "plateau: the validation loss last improved at step 120" in text
    assert d["plateau"] == "warning"


def test_bad_input_is_one_line(demo, tmp_path):
    final = demo / "checkpoints" / "final.safetensors"
    one_line_error(cli("evaluate", "--checkpoint", final, "--split", "test", "--out", tmp_path),
                   "no test split")
    # a corpus with other statistics / another speaker table than the checkpoint's
    from fastcpu.data import BUNDLED_CORPUS
    other = tmp_path / "other"
    shutil.copytree(BUNDLED_CORPUS, other)
    stats = json.loads((other / "stats.json").read_text())
    stats["pitch"][2] += 3.0
    (other / "stats.json").write_text(json.dumps(stats))
    one_line_error(cli("evaluate", "--checkpoint", final, "--data-dir", other, "--out",
                       tmp_path), "pitch statistics")
    shutil.copy(BUNDLED_CORPUS / "stats.json", other / "stats.json")
    (other / "speakers.json").write_text(json.dumps({"espeak_en_us": 0, "someone": 1}))
    one_line_error(cli("evaluate", "--checkpoint", final, "--data-dir", other, "--out",
                       tmp_path), "speaker 'someone'")
    # the held-out split of a corpus that has one
    (other / "speakers.json").write_text((BUNDLED_CORPUS / "speakers.json").read_text())
    (other / "test.txt").write_text("\n".join((other / "val.txt").read_text().splitlines()[:3]))
    r = cli("evaluate", "--checkpoint", final, "--data-dir", other, "--split", "test", "--out",
            tmp_path / "t")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["n_utterances"] == 3
    # select: an empty run directory, a run with one checkpoint
    (tmp_path / "empty").mkdir()
    one_line_error(cli("select", tmp_path / "empty"), "no checkpoints")
    lone = tmp_path / "lone" / "checkpoints"
    lone.mkdir(parents=True)
    shutil.copy(final, lone / "final.safetensors")
    shutil.copy(demo / "checkpoints" / "step-00000400.safetensors", lone)   # same weights
    one_line_error(cli("select", tmp_path / "lone"), "one checkpoint")
    # compare: a missing checkpoint; report: not a run
    (tmp_path / "s.txt").write_text(SENTENCES)
    one_line_error(cli("compare", "--checkpoints", f"{final},{tmp_path / 'nope.safetensors'}",
                       "--sentences", tmp_path / "s.txt", "--out", tmp_path / "c"),
                   "nope.safetensors: no such file")
    one_line_error(cli("report", tmp_path / "empty"), "metrics.jsonl: no such file")


def test_retention_never_deletes_the_best_steps_file(tmp_path):
    s = checkpoint.Series(tmp_path, keep_last=1)
    s.dir.mkdir(parents=True)
    for step in (100, 200, 300):
        checkpoint.save(s.path("step", step), {"w": np.zeros(2, np.float32)},
                        {"state": {"step": step}})
    s.retain("step", best_step=100)
    assert sorted(p.name for p in s.dir.glob("step-*")) == ["step-00000100.safetensors",
                                                            "step-00000300.safetensors"]
    s.retain("step", best_step=None)
    assert [p.name for p in s.dir.glob("step-*")] == ["step-00000300.safetensors"]


def test_a_checkpoint_of_another_symbol_table_or_mel_size_does_not_fit():
    from fastcpu import evaluate
    from fastcpu.config import Config
    from fastcpu.data import BUNDLED_CORPUS, SYMBOLS, PreprocessedCorpus
    ds = PreprocessedCorpus(BUNDLED_CORPUS, "val.txt")
    cfg = Config()
    info = {"symbols": list(SYMBOLS), "speakers": dict(ds.speakers), "stats": dict(ds.stats)}
    evaluate.check_fit("c.safetensors", cfg, info, ds)               # fits
    with pytest.raises(evaluate.EvalError, match="another symbol table"):
        evaluate.check_fit("c.safetensors", cfg, {**info, "symbols": list(SYMBOLS)[:-5]}, ds)
    cfg.model.n_mel_channels = 100
    with pytest.raises(evaluate.EvalError, match="100 mel bins"):
        evaluate.check_fit("c.safetensors", cfg, info, ds)
