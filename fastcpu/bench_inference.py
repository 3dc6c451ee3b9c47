"""``python -m fastcpu.bench --inference``: synthesis speed, fastcpu against PyTorch eager.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastcpu.bench --inference

Three stages, each side in its own fresh process (alternating, ``--rounds`` times), 2 threads by
default:

- **acoustic**: the LJSpeech-config FastSpeech2 from phoneme ids to mel for ``--sentences``
  sentences of ``--phonemes`` (default 16 of 20-150) in one batch, predicted durations, pitch and
  energy; fastcpu against the PyTorch implementation of the reference with the same (seeded,
  random) weights. The duration predictor's output bias is set to log(6) so each phoneme lasts
  about 5 frames (LJSpeech's mean is ~6.5): random weights would otherwise predict almost none.
- **hifigan**: the HiFi-GAN V1 generator on the mels the acoustic stage made (each at its own
  length), fastcpu against a PyTorch generator with the same random weights (weight norm
  removed, as for inference).
- **text2wav**: fastcpu's whole path — front end (espeak-ng), acoustic model, fast Griffin-Lim
  (32 iterations) — on real sentences of the bundled corpus's kind.

Separate processes keep the sides' thread pools apart: PyTorch's OpenMP workers spin after each
op and, in one process, slow NumPy's OpenBLAS (which the vocoder's GEMMs use) several-fold — a
cost a synthesis process never pays, since it does not import torch. Prints the medians (min-max),
the ratio fastcpu/PyTorch, and the real-time factor (seconds of audio per second of compute).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("acoustic", "hifigan", "text2wav")
HOP, SR = 256, 22050
FRAMES_PER_PHONEME = 5


def _texts(n, phonemes, seed):
    rng = np.random.default_rng(seed)
    lo, hi = phonemes
    lens = rng.integers(lo, hi + 1, n)
    texts = np.zeros((n, int(lens.max())), np.int64)
    for i, n_ph in enumerate(lens):
        texts[i, :n_ph] = rng.integers(1, 360, n_ph)
    return texts, lens


def prepare(work: Path, cfg_name: str, sentences: int, phonemes, seed: int) -> None:
    """Seeded weights of both models (from the PyTorch implementations) and the inputs."""
    import torch

    from fastcpu.config import load_config
    from fastcpu.models import hifigan
    from fastcpu.startup import config_path
    from fastcpu.testing.torch_hifigan import random_generator
    from fastcpu.testing.torch_reference import TorchFastSpeech2
    cfg = load_config(config_path(cfg_name))
    torch.manual_seed(seed)
    m = TorchFastSpeech2(cfg.model)
    lin = m.variance_adaptor.duration_predictor.linear_layer
    with torch.no_grad():
        lin.weight.mul_(0.05)
        lin.bias.fill_(float(np.log(FRAMES_PER_PHONEME + 1)))
    np.savez(work / "acoustic.npz", **{k: v.detach().numpy() for k, v in m.state_dict().items()})
    g = random_generator(seed, scale=0.3)
    np.savez(work / "hifigan.npz", **hifigan.fold_weight_norm(
        {k: v.detach().numpy() for k, v in g.state_dict().items()}))
    texts, lens = _texts(sentences, phonemes, seed)
    np.savez(work / "inputs.npz", texts=texts, lens=lens)


def _fastcpu_acoustic(work, cfg):
    from fastcpu.autograd import no_grad
    from fastcpu.models import FastSpeech2
    model = FastSpeech2(cfg.model)
    model.load_state_dict(dict(np.load(work / "acoustic.npz")))
    model.eval()
    inp = np.load(work / "inputs.npz")

    def run():
        with no_grad():
            o = model.infer(inp["texts"], inp["lens"])
        return [o.postnet_mel.numpy()[i, :int(o.mel_lens[i])] for i in range(len(inp["lens"]))]
    return run


def _torch_acoustic(work, cfg):
    import torch

    from fastcpu.testing.torch_reference import TorchFastSpeech2
    model = TorchFastSpeech2(cfg.model)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(work /
                                                                        "acoustic.npz").items()})
    model.eval()
    inp = np.load(work / "inputs.npz")
    texts, lens = torch.from_numpy(inp["texts"]), torch.from_numpy(inp["lens"])

    def run():
        with torch.inference_mode():
            out = model(texts, lens)
        post, mel_pad = out[1], out[6]
        n = (~mel_pad).sum(1)
        return [post[i, :int(n[i])].numpy() for i in range(len(n))]
    return run


def _mels(work):
    z = np.load(work / "mels.npz")
    return [z[f"m{i}"] for i in range(len(z.files))]


def _fastcpu_hifigan(work, cfg):
    from fastcpu.models import hifigan
    gen = hifigan.Generator(dict(np.load(work / "hifigan.npz")))
    mels = _mels(work)
    return lambda: gen.vocode(mels)


def _torch_hifigan(work, cfg):
    import torch

    from fastcpu.testing.torch_hifigan import TorchGenerator
    g = TorchGenerator()
    g.remove_weight_norm()
    g.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(work / "hifigan.npz").items()})
    g.eval()
    mels = [torch.from_numpy(np.ascontiguousarray(m.T))[None] for m in _mels(work)]

    def run():
        with torch.inference_mode():
            return [g(m)[0, 0].numpy() for m in mels]
    return run


def _fastcpu_text2wav(work, cfg):
    from fastcpu import text
    from fastcpu.autograd import no_grad
    from fastcpu.data import SYMBOL_TO_ID
    from fastcpu.data import features as F
    from fastcpu.data.sentences import generate
    from fastcpu.models import FastSpeech2
    model = FastSpeech2(cfg.model)
    model.load_state_dict(dict(np.load(work / "acoustic.npz")))
    model.eval()
    n = len(np.load(work / "inputs.npz")["lens"])
    lines = generate(n, seed=1)
    fe = text.Espeak()

    def run():
        ids = [[SYMBOL_TO_ID["@" + p] for p in fe(t).phones] for t in lines]
        texts, lens = text.pad_ids(ids)
        with no_grad():
            o = model.infer(texts, lens)
        mels = o.postnet_mel.numpy()
        return [F.griffin_lim(mels[i, :int(o.mel_lens[i])], 32, normalise=False, momentum=0.99)
                for i in range(len(ids))]
    return run


MAKERS = {("acoustic", "fastcpu"): _fastcpu_acoustic, ("acoustic", "pytorch"): _torch_acoustic,
          ("hifigan", "fastcpu"): _fastcpu_hifigan, ("hifigan", "pytorch"): _torch_hifigan,
          ("text2wav", "fastcpu"): _fastcpu_text2wav}


def child(stage: str, side: str, work: Path, cfg_name: str, threads: int, reps: int) -> int:
    """One side of one stage in this process: a warm-up call, then ``reps`` timed calls."""
    from fastcpu import runtime
    from fastcpu.config import load_config
    from fastcpu.startup import config_path
    cfg = load_config(config_path(cfg_name))
    if side == "pytorch":
        import torch
        torch.set_num_threads(threads)
    with runtime.threads(threads):
        run = MAKERS[(stage, side)](work, cfg)
        out = run()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - t0)
    if stage == "acoustic" and side == "fastcpu" and not (work / "mels.npz").exists():
        np.savez(work / "mels.npz", **{f"m{i}": m for i, m in enumerate(out)})
    frames = sum(len(m) for m in out) if stage == "acoustic" else None
    samples = sum(len(w) for w in out) if stage != "acoustic" else None
    print(json.dumps({"times": times, "frames": frames, "samples": samples}))
    return 0


def _spawn(stage, side, work, args, reps):
    cmd = [sys.executable, "-m", "fastcpu.bench", "--inference", "--child-stage", stage,
           "--child-side", side, "--workdir", str(work), "--config", args.config,
           "--threads", str(args.threads), "--steps", str(reps), "--allow-openblas-env"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{stage}/{side} child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(args) -> int:
    """The parent: prepare the inputs, alternate the sides' processes, print the table."""
    from fastcpu import __version__, runtime
    phonemes = tuple(int(v) for v in (args.phonemes or "20-150").split("-"))
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: python -m fastcpu.bench compares against PyTorch: pip install "
              "torch==2.13.0 (or pip install -e '.[test]')", file=sys.stderr)
        return 2
    stages = args.stages.split(",") if args.stages else list(STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"error: --stages: unknown {bad[0]!r}; use some of {','.join(STAGES)}",
              file=sys.stderr)
        return 2
    rec = {"fastcpu_version": __version__, "threads": args.threads, "config": args.config,
           "sentences": args.batch, "phonemes": list(phonemes), "runtime": runtime.info(),
           "stages": {}}
    with tempfile.TemporaryDirectory(prefix="fastcpu-bench-inf-") as tmp:
        work = Path(tmp)
        prepare(work, args.config, args.batch, phonemes, args.seed)
        _spawn("acoustic", "fastcpu", work, args, 1)          # writes the mels
        for stage in stages:
            sides = ["fastcpu", "pytorch"] if (stage, "pytorch") in MAKERS else ["fastcpu"]
            reps = args.steps if stage == "acoustic" else 1
            got = {s: [] for s in sides}
            info = {}
            for r in range(args.rounds):
                for s in (sides if r % 2 == 0 else sides[::-1]):
                    res = _spawn(stage, s, work, args, reps)
                    got[s] += res["times"]
                    info[s] = res
                    print(f"  {stage:8s} {s:8s} round {r + 1}: "
                          f"{', '.join(f'{t:.3f}' for t in res['times'])} s", flush=True)
            if stage == "acoustic":
                audio = info["fastcpu"]["frames"] * HOP / SR
            else:
                audio = info["fastcpu"]["samples"] / SR
            rec["stages"][stage] = {s: {"median_s": float(np.median(v)), "min_s": min(v),
                                        "max_s": max(v), "rtf": audio / float(np.median(v))}
                                    for s, v in got.items()}
            rec["stages"][stage]["audio_s"] = audio
    print(table(rec))
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1, default=str) + "\n")
    return 0


def table(rec) -> str:
    lines = [f"fastcpu {rec['fastcpu_version']}, {rec['threads']} threads, "
             f"{rec['sentences']} sentences of {rec['phonemes'][0]}-{rec['phonemes'][1]} "
             f"phonemes, config {rec['config']}; each side in its own process",
             f"{'stage':9s} {'audio':>7s} {'fastcpu s (min-max)':>22s} "
             f"{'PyTorch s (min-max)':>22s} {'ratio':>6s} {'fastcpu x real time':>20s}"]
    for stage, r in rec["stages"].items():
        f, p = r["fastcpu"], r.get("pytorch")
        ft = f"{f['median_s']:.3f} ({f['min_s']:.3f}-{f['max_s']:.3f})"
        pt = f"{p['median_s']:.3f} ({p['min_s']:.3f}-{p['max_s']:.3f})" if p else "-"
        ratio = f"{f['median_s'] / p['median_s']:.2f}x" if p else "-"
        lines.append(f"{stage:9s} {r['audio_s']:6.1f}s {ft:>22s} {pt:>22s} {ratio:>6s} "
                     f"{f['rtf']:19.1f}x")
    return "\n".join(lines)
