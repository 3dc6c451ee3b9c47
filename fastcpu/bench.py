"""Whole training steps of FastSpeech2, fastcpu against PyTorch eager on the same CPU, same run.

    python -m fastcpu.bench --batch 16 --phonemes 60-120 --threads 2 --precision both

Builds the LJSpeech-config model in fastcpu and the PyTorch implementation of the reference
(``fastcpu.testing.torch_reference``, so PyTorch is needed for this command only) with the same
weights, makes a seeded synthetic batch of ragged lengths, and times full training steps
(forward, loss, backward, clip, Adam) with the sides alternating after warm-up, all in training
mode (dropout on) and pinned to the same thread count: fastcpu fp32 against PyTorch fp32, and
(``--precision bf16|both``) fastcpu bf16 on oneDNN against PyTorch's bf16 autocast. Prints median
step times with min-max, the ratios, the forward / backward / optimizer split, achieved GFLOP/s
against the fp32 GEMM peak measured in the same run, and each side's peak RSS (measured in
separate child processes so the sides do not mix). ``--contention N`` runs a background N-thread
NumPy matmul process during the timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastcpu.cli import add_version

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SIDES = ("fastcpu", "pytorch", "fastcpu-bf16", "pytorch-bf16")
LABELS = {"fastcpu": "fastcpu fp32", "pytorch": "PyTorch fp32", "fastcpu-bf16": "fastcpu bf16",
          "pytorch-bf16": "PyTorch bf16 autocast"}


class BenchError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- the batch

def make_batch(batch: int, phonemes: tuple, seed: int, frames_per_phoneme=(2, 11),
               max_frames: int = 1000):
    """A seeded batch with LJSpeech-like statistics: phonemes uniform in the range, durations
    uniform in ``frames_per_phoneme`` (mean ~6.5 frames, as LJSpeech), utterances capped at
    ``max_frames``."""
    rng = np.random.default_rng(seed)
    lo, hi = phonemes
    L = rng.integers(lo, hi + 1, batch)
    Lm = int(L.max())
    texts = np.zeros((batch, Lm), np.int64)
    d = np.zeros((batch, Lm), np.int64)
    for b in range(batch):
        texts[b, :L[b]] = rng.integers(1, 360, L[b])
        d[b, :L[b]] = rng.integers(frames_per_phoneme[0], frames_per_phoneme[1], L[b])
        while d[b].sum() > max_frames:
            j = rng.integers(0, L[b])
            d[b, j] = max(1, d[b, j] - 1)
    mel_lens = d.sum(1)
    T = int(mel_lens.max())
    valid = np.arange(T)[None, :] < mel_lens[:, None]
    mels = np.where(valid[..., None], rng.normal(-5, 2, (batch, T, 80)), 0).astype(np.float32)
    pv = np.arange(Lm)[None, :] < L[:, None]
    from fastcpu.data import Batch
    return Batch([f"b{i}" for i in range(batch)], [""] * batch, np.zeros(batch, np.int64), texts,
                 L, Lm, mels, mel_lens, T,
                 np.where(pv, rng.normal(0, 1, (batch, Lm)), 0).astype(np.float32),
                 np.where(pv, rng.normal(0, 1, (batch, Lm)), 0).astype(np.float32), d)


def step_flops(cfg, batch) -> float:
    """Matmul FLOPs of one training step of the reference computation on the padded batch
    (forward x 3 for forward + backward): convs, linears and attention."""
    B, L = batch.texts.shape
    T = batch.max_mel_len
    H, F, (k0, k1) = cfg.encoder_hidden, cfg.conv_filter_size, cfg.conv_kernel_size

    def fft(n, rows):
        per = 4 * 2 * rows * H * H + 4 * rows * (rows // B) * H + 2 * rows * H * F * (k0 + k1)
        return n * per

    f = fft(cfg.encoder_layer, B * L) + fft(cfg.decoder_layer, B * T)
    f += 3 * (2 * B * L * H * cfg.vp_filter_size * cfg.vp_kernel_size
              + 2 * B * L * cfg.vp_filter_size * cfg.vp_filter_size * cfg.vp_kernel_size
              + 2 * B * L * cfg.vp_filter_size)
    f += 2 * B * T * H * cfg.n_mel_channels
    e, k = cfg.postnet_embedding_dim, cfg.postnet_kernel_size
    chans = [cfg.n_mel_channels] + [e] * (cfg.postnet_n_convolutions - 1) + [cfg.n_mel_channels]
    f += sum(2 * B * T * a * b * k for a, b in zip(chans[:-1], chans[1:]))
    return 3.0 * f


# ----------------------------------------------------------------------------- the two sides

def _import_reference():
    try:
        import torch
    except ImportError:
        raise BenchError("python -m fastcpu.bench compares against PyTorch: pip install "
                         "torch==2.13.0 (or pip install -e '.[test]')") from None
    from fastcpu.testing.torch_reference import TorchFastSpeech2, torch_loss
    return torch, TorchFastSpeech2, torch_loss


class FastcpuSide:
    """fastcpu's training step; ``precision`` "bf16" runs every GEMM on oneDNN in bf16."""

    def __init__(self, cfg, state, batch, precision="fp32"):
        from fastcpu import nn
        from fastcpu.models import FastSpeech2, FastSpeech2Loss
        from fastcpu.optim import Adam
        self.name = "fastcpu" + ("" if precision == "fp32" else "-" + precision)
        self.precision = precision
        self.model = FastSpeech2(cfg.model)
        if state is not None:
            self.model.load_state_dict(state)
        self.buf = nn.flatten_parameters(self.model)
        self.opt = Adam(self.buf, cfg.optimizer, hidden=cfg.model.encoder_hidden)
        self.loss = FastSpeech2Loss()
        self.b = batch

    def step(self):
        from fastcpu import kernels
        b = self.b
        with kernels.use(self.precision):
            t0 = time.perf_counter()
            out = self.model.forward_batch(b)
            losses = self.loss(out, b.mels, b.pitches, b.energies, b.durations)
            t1 = time.perf_counter()
            losses["total"].backward()
            t2 = time.perf_counter()
            self.opt.step()
            self.opt.zero_grad()
            t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, losses["total"].item()


class TorchSide:
    """The PyTorch implementation of the reference, eager, ``torch.optim.Adam(fused=True)`` (its
    fastest CPU optimizer); ``precision`` "bf16" runs forward + loss under
    ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the one-line mixed precision of PyTorch)."""

    def __init__(self, cfg, batch, seed, precision="fp32", state=None):
        torch, TorchFastSpeech2, torch_loss = _import_reference()
        self.torch, self.loss = torch, torch_loss
        self.name = "pytorch" + ("" if precision == "fp32" else "-" + precision)
        self.precision = precision
        torch.manual_seed(seed)
        self.model = TorchFastSpeech2(cfg.model).train()
        if state is not None:
            self.model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=1e-3, betas=tuple(cfg.optimizer.betas),
                                    eps=cfg.optimizer.eps, fused=True)
        self.clip = cfg.optimizer.grad_clip_thresh
        from fastcpu.optim import Schedule                 # the same lr schedule as fastcpu's
        self.schedule, self.t = Schedule(cfg.optimizer, cfg.model.encoder_hidden), 0
        self.b = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v
                  for k, v in vars(batch).items()}

    def state(self):
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}

    def step(self):
        import contextlib
        b, torch = self.b, self.torch
        amp = (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
               else contextlib.nullcontext())
        t0 = time.perf_counter()
        with amp:
            out = self.model(b["texts"], b["text_lens"], b["mel_lens"], b["max_mel_len"],
                             b["pitches"], b["energies"], b["durations"])
            losses = self.loss(out, b["mels"], b["pitches"], b["energies"], b["durations"])
        t1 = time.perf_counter()
        losses["total"].backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.t += 1
        for g in self.opt.param_groups:
            g["lr"] = self.schedule(self.t)
        self.opt.step()
        self.opt.zero_grad()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, losses["total"].item()


def gemm_peaks(threads: int, seconds=1.5) -> dict:
    """fp32 GEMM GFLOP/s of NumPy's BLAS and of torch (M=8192, K=2304, N=1024: a conv's shape)."""
    M, K, N = 8192, 2304, 1024
    a = np.random.default_rng(0).random((M, K), dtype=np.float32)
    w = np.random.default_rng(1).random((K, N), dtype=np.float32)
    out = {}

    def best(fn):
        fn()
        ts, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(ts) < 3:
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return 2 * M * K * N / min(ts) / 1e9

    c = np.empty((M, N), np.float32)
    out["numpy"] = best(lambda: np.matmul(a, w, out=c))
    try:
        import torch
        ta, tw = torch.from_numpy(a), torch.from_numpy(w)
        out["torch"] = best(lambda: ta @ tw)
    except ImportError:
        pass
    return out


# ----------------------------------------------------------------------------- peak RSS child

def _child_rss(side: str, args) -> dict:
    """Run 3 steps of one side in a fresh process; its peak RSS (VmHWM)."""
    cmd = [sys.executable, "-m", "fastcpu.bench", "--child", side, "--batch", str(args.batch),
           "--phonemes", args.phonemes, "--threads", str(args.threads), "--seed",
           str(args.seed), "--config", args.config, "--allow-openblas-env"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"RSS child for {side} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _make_side(name, cfg, batch, seed, state=None):
    kind, _, precision = name.partition("-")
    if kind == "fastcpu":
        return FastcpuSide(cfg, state, batch, precision or "fp32")
    return TorchSide(cfg, batch, seed, precision or "fp32", state)


def _run_child(args, cfg, batch) -> int:
    import resource

    from fastcpu import runtime
    with runtime.threads(args.threads), runtime.keep_memory():
        side = _make_side(args.child, cfg, batch, args.seed)
        if isinstance(side, TorchSide):
            side.torch.set_num_threads(args.threads)
        for _ in range(3):
            side.step()
    # VmHWM: the high-water mark of this address space. (ru_maxrss would carry the parent's mark
    # across fork + exec, so a child of a big bench process would report the parent's size.)
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"side": args.child, "peak_rss_bytes": rss}))
    return 0


CONTENTION_CODE = """
import sys, time
import numpy as np
a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    a @ a
"""


def start_contention(threads: int, seconds: float = 3600.0):
    """A background process doing NumPy (OpenBLAS) matmuls on ``threads`` threads, as a second
    job on the same cores would; it ends by itself after ``seconds``."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-c", CONTENTION_CODE, str(seconds)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ----------------------------------------------------------------------------- main

def parse_range(text):
    try:
        lo, hi = (int(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {text!r}")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastcpu.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="utterances per step (default 16)")
    ap.add_argument("--phonemes", type=parse_range, default=None,
                    help="phonemes per utterance, LO-HI (default 60-120; --inference 20-150)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="ljspeech",
                    help="model config: a YAML file or a bundled config's name (default "
                         "ljspeech)")
    add_version(ap)
    ap.add_argument("--json", help="also write the full record to this file")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--allow-openblas-env", action="store_true",
                    help="run even with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE set")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32",
                    help="fp32: fastcpu fp32 vs PyTorch fp32; bf16: fastcpu bf16 (oneDNN) vs "
                         "PyTorch bf16 autocast; both: all four (default fp32)")
    ap.add_argument("--contention", type=int, default=0, metavar="N",
                    help="run a background process doing N-thread NumPy matmuls during the "
                         "timing, for every side alike (default 0: none)")
    ap.add_argument("--inference", action="store_true",
                    help="synthesis instead of training: acoustic model, HiFi-GAN and text->wav "
                         "against PyTorch (--batch sentences; see fastcpu.bench_inference)")
    ap.add_argument("--stages", help="--inference: some of acoustic,hifigan,text2wav (default "
                                     "all)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="--inference: processes per side and stage, alternating (default 2)")
    ap.add_argument("--child", choices=list(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--child-stage", help=argparse.SUPPRESS)
    ap.add_argument("--child-side", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("batch", "threads", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.contention < 0:
        ap.error("--contention must be >= 0")
    set_vars = [v for v in OPENBLAS_VARS if os.environ.get(v)]
    if set_vars and not args.allow_openblas_env:
        print(f"error: {', '.join(set_vars)} set. They pin OpenBLAS to an older kernel and cut "
              f"NumPy's GEMM speed by ~45%, which would make this comparison with PyTorch's MKL "
              f"meaningless. Rerun with them unset:\n  env -u OPENBLAS_CORETYPE -u "
              f"OPENBLAS_L2_SIZE python -m fastcpu.bench ...\nor pass --allow-openblas-env to "
              f"measure anyway.", file=sys.stderr)
        return 2
    if args.inference:
        from fastcpu import bench_inference
        if args.child_stage:
            return bench_inference.child(args.child_stage, args.child_side, Path(args.workdir),
                                         args.config, args.threads, args.steps)
        return bench_inference.run(args)
    if args.phonemes is None:
        args.phonemes = "60-120"
    from fastcpu.config import ConfigError, load_config
    from fastcpu.startup import UsageError, config_path
    try:
        cfg = load_config(config_path(args.config))
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lo, hi = (int(v) for v in args.phonemes.split("-"))
    batch = make_batch(args.batch, (lo, hi), args.seed)
    if args.child:
        return _run_child(args, cfg, batch)
    try:
        return _bench(args, cfg, batch)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _sides_for(precision):
    return {"fp32": ["fastcpu", "pytorch"], "bf16": ["fastcpu-bf16", "pytorch-bf16"],
            "both": ["fastcpu", "pytorch", "fastcpu-bf16", "pytorch-bf16"]}[precision]


def _bench(args, cfg, batch) -> int:
    from fastcpu import __version__, runtime
    from fastcpu.kernels import gemm
    names = _sides_for(args.precision)
    if "fastcpu-bf16" in names and not gemm.bf16_status().startswith("ok"):
        raise BenchError(f"fastcpu bf16: {gemm.bf16_status()}")
    real = batch.frames
    padded = args.batch * batch.max_mel_len
    print(f"batch {args.batch}, phonemes {args.phonemes}: {real} real frames of {padded} "
          f"(max {batch.max_mel_len}, padding {100 * (1 - real / padded):.0f}%), "
          f"{args.threads} threads, {args.steps} timed steps each after {args.warmup} warm-up"
          + (f", contention: a {args.contention}-thread NumPy matmul process"
             if args.contention else ""), flush=True)
    bg = None
    with runtime.threads(args.threads), runtime.keep_memory():
        first = TorchSide(cfg, batch, args.seed, "fp32")
        state = first.state()
        sides = []
        for n in names:
            side = first if n == "pytorch" else _make_side(n, cfg, batch, args.seed, state)
            if isinstance(side, TorchSide):
                side.torch.set_num_threads(args.threads)
            sides.append(side)
        torch = first.torch
        info = runtime.info()
        print(runtime.format_info(info))
        tcfg = torch.__config__
        torch_info = {"version": torch.__version__, "threads": torch.get_num_threads(),
                      "parallel_info": tcfg.parallel_info(), "config": tcfg.show()}
        blas = [ln.strip(" -") for ln in torch_info["config"].splitlines()
                if "Math Kernel Library Version" in ln or "Deep Neural Network Library" in ln]
        print(f"torch {torch_info['version']}, {torch_info['threads']} threads; "
              + "; ".join(blas), flush=True)
        peaks = gemm_peaks(args.threads)
        try:
            if args.contention:
                bg = start_contention(args.contention)
            for _ in range(args.warmup):
                for side in sides:
                    side.step()
            times = {s.name: [] for s in sides}
            for i in range(args.steps):
                for side in sides:                            # A B C D A B C D ...
                    times[side.name].append(side.step())
                print(f"  step {i + 1}: " + "  ".join(
                    f"{LABELS[n]} {sum(t[-1][:3]):.2f} s (loss {t[-1][3]:.4f})"
                    for n, t in times.items()), flush=True)
        finally:
            if bg is not None:
                bg.kill()
                bg.wait()
    rss = {}
    if not args.no_rss:
        for n in names:
            rss[n] = _child_rss(n, args)["peak_rss_bytes"]
    flops = step_flops(cfg.model, batch)
    rec = _summarise(times, flops, peaks, rss)
    rec.update(batch=args.batch, phonemes=args.phonemes, threads=args.threads,
               precision=args.precision, contention=args.contention,
               real_frames=real, padded_frames=padded, runtime=info, fastcpu=__version__,
               torch=torch_info, gemm_peaks=peaks, step_flops=flops,
               onednn_isa=info.get("gemm", {}).get("onednn_isa"),
               machine=platform.processor() or platform.machine(),
               command="python -m fastcpu.bench " + " ".join(
                   a for a in sys.argv[1:] if a))
    print(_table(rec))
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1, default=str))
    return 0


def _summarise(times, flops, peaks, rss):
    rec = {"sides": {}, "ratios": {}, "ratios_pairwise": {}}
    for name, rows in times.items():
        a = np.array([r[:3] for r in rows])
        tot = a.sum(1)
        rec["sides"][name] = {
            "step_median": float(np.median(tot)), "step_min": float(tot.min()),
            "step_max": float(tot.max()), "forward": float(np.median(a[:, 0])),
            "backward": float(np.median(a[:, 1])), "optimizer": float(np.median(a[:, 2])),
            "gflops": flops / float(np.median(tot)) / 1e9, "peak_rss": rss.get(name)}
    for prec, (ours, theirs) in {"fp32": ("fastcpu", "pytorch"),
                                 "bf16": ("fastcpu-bf16", "pytorch-bf16")}.items():
        if ours in times:
            f = np.array([sum(r[:3]) for r in times[ours]])
            t = np.array([sum(r[:3]) for r in times[theirs]])
            rec["ratios"][prec] = float(np.median(f) / np.median(t))
            rec["ratios_pairwise"][prec] = float(np.median(f / t))
    first = next(iter(rec["ratios"]))
    rec["ratio_of_medians"] = rec["ratios"][first]              # (older readers)
    rec["ratio_pairwise_median"] = rec["ratios_pairwise"][first]
    rec["gemm_peak"] = max(peaks.values())
    return rec


def _table(rec) -> str:
    s = rec["sides"]
    peak = rec["gemm_peak"]
    names = list(s)
    lines = ["| | " + " | ".join(LABELS[n] for n in names) + " |",
             "|---|" + "---|" * len(names)]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(s[n]) for n in names) + " |")
    row("step median (min–max)", lambda d: f"{d['step_median']:.2f} s ({d['step_min']:.2f}–"
                                           f"{d['step_max']:.2f})")
    row("forward + loss", lambda d: f"{d['forward']:.2f} s")
    row("backward", lambda d: f"{d['backward']:.2f} s")
    row("clip + Adam", lambda d: f"{d['optimizer'] * 1e3:.0f} ms")
    row("model GFLOP/s* (% of fp32 GEMM peak)",
        lambda d: f"{d['gflops']:.0f} ({100 * d['gflops'] / peak:.0f}%)")
    if all(d["peak_rss"] for d in s.values()):
        row("peak RSS", lambda d: f"{d['peak_rss'] / 2**30:.2f} GiB")
    for prec, r in rec["ratios"].items():
        lines.append(f"\nfastcpu / PyTorch, {prec}: {r:.2f}x (ratio of medians; median of "
                     f"per-pair ratios {rec['ratios_pairwise'][prec]:.2f}x)")
    lines.append("fp32 GEMM peak in this run: " + ", ".join(
        f"{k} {v:.0f} GFLOP/s" for k, v in rec["gemm_peaks"].items())
        + f"; oneDNN ISA {rec.get('onednn_isa')}; model FLOPs/step "
        f"{rec['step_flops'] / 1e12:.2f} TFLOP (padded batch)."
        "\n*model GFLOP/s = the reference computation's matmul FLOPs on the padded batch"
        " (direct convs) / step time: an effective rate, comparable between the sides."
        " fastcpu does fewer FLOPs (no padded rows in the FFT blocks, fast-FIR convs),"
        " so its figure can exceed the GEMM peak.")
    return "\n".join(lines)


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
