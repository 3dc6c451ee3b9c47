"""Pictures a person reads: a mel spectrogram pair (target over prediction) with a time axis in
seconds, a frequency axis in Hz and a colour bar; a run's loss curves. Matplotlib, drawn with
its Agg canvas (no pyplot state, no display needed)."""
from __future__ import annotations

import numpy as np


def _canvas(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


def to_png(fig) -> bytes:
    import io
    buf = io.BytesIO()
    _canvas(fig).print_png(buf)
    return buf.getvalue()


def to_rgb(fig) -> np.ndarray:
    """uint8 [H, W, 3] of a drawn figure."""
    return np.asarray(_canvas(fig).buffer_rgba())[..., :3].copy()


def mel_figure(target: np.ndarray, prediction: np.ndarray, title: str = ""):
    """Two log-mel spectrograms [T, 80], target above prediction, one colour scale."""
    from matplotlib.figure import Figure

    from fastcpu.data import features as F
    lo = float(min(target.min(), prediction.min()))
    hi = float(max(target.max(), prediction.max()))
    frames = max(len(target), len(prediction))
    seconds = frames * F.HOP / F.SR
    fig = Figure(figsize=(max(6.0, min(14.0, 2.0 + seconds * 2.5)), 5.2), dpi=100,
                 layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, mel, name in ((axes[0], target, "target (from the corpus)"),
                          (axes[1], prediction, "prediction (after PostNet)")):
        _mel_axes(ax, mel, lo, hi)
        ax.set_title(name, fontsize=10, loc="left")
        im = ax.images[0]
    axes[1].set_xlabel("time (s)")
    fig.colorbar(im, ax=list(axes), label="log-mel (natural log)", shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def mel_one(mel: np.ndarray, title: str = ""):
    """One log-mel spectrogram [T, 80] with time (s) and frequency (Hz) axes and a colour bar."""
    from matplotlib.figure import Figure

    from fastcpu.data import features as F
    seconds = len(mel) * F.HOP / F.SR
    fig = Figure(figsize=(max(6.0, min(14.0, 2.0 + seconds * 2.5)), 3.2), dpi=100,
                 layout="constrained")
    ax = fig.subplots()
    _mel_axes(ax, mel, float(mel.min()), float(mel.max()))
    ax.set_xlabel("time (s)")
    fig.colorbar(ax.images[0], ax=ax, label="log-mel (natural log)")
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    return fig


def _mel_axes(ax, mel, lo, hi):
    from fastcpu.data import features as F
    centres = F._mel_to_hz(np.linspace(F._hz_to_mel(F.FMIN), F._hz_to_mel(F.FMAX),
                                       F.N_MELS + 2))[1:-1]
    ticks_hz = [t for t in (0, 500, 1000, 2000, 4000, 8000) if t <= F.FMAX]
    ax.imshow(np.asarray(mel, np.float32).T, origin="lower", aspect="auto",
              interpolation="nearest", cmap="viridis", vmin=lo, vmax=hi,
              extent=(0, len(mel) * F.HOP / F.SR, -0.5, F.N_MELS - 0.5))
    ax.set_yticks(np.interp(ticks_hz, centres, np.arange(F.N_MELS)),
                  [f"{t / 1000:g}k" if t >= 1000 else f"{t}" for t in ticks_hz])
    ax.set_ylabel("frequency (Hz)")


YLABELS = {"total": "sum of the five terms", "mel": "L1 (log-mel)",
           "postnet_mel": "L1 (log-mel)", "pitch": "MSE (normalised pitch)",
           "energy": "MSE (normalised energy)", "duration": "MSE (log(1 + frames))"}


def loss_figure(train: dict, val: dict, title: str = ""):
    """Loss curves of a run: ``train`` / ``val`` map term -> (steps, values); total and the five
    terms, the training curves with their running mean."""
    from matplotlib.figure import Figure
    terms = ["total", "mel", "postnet_mel", "pitch", "energy", "duration"]
    fig = Figure(figsize=(11, 6.5), dpi=100, layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, term in zip(axes, terms):
        if term in train:
            s, v = (np.asarray(x, float) for x in train[term])
            ax.plot(s, v, color="#9bb7d4", lw=0.8, label="train (each step)")
            if len(v) >= 10:
                k = max(5, len(v) // 40)
                mean = np.convolve(v, np.ones(k) / k, mode="valid")
                ax.plot(s[k - 1:], mean, color="#1f5fa0", lw=1.6, label=f"train (mean of {k})")
        if term in val:
            s, v = val[term]
            ax.plot(s, v, "o-", color="#d0542c", lw=1.6, ms=4, label="validation")
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(YLABELS[term])
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
