"""A weights-only inference file from a checkpoint.

    python -m fastcpu.export runs/demo/checkpoints/best.safetensors demo.safetensors

Keeps the model's tensors and what synthesis needs (the run config and the ``synthesis`` record:
speakers, pitch/energy statistics, front end, symbols); drops the Adam moments (two thirds of a
full checkpoint) and the training state. ``python -m fastcpu.synthesize --checkpoint`` takes the
result like a full checkpoint; ``--init-from`` fine-tunes from it; it cannot resume a run. A
checkpoint written before checkpoints carried the synthesis record gets it from its corpus
when that is still readable (else the export says what is missing).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def export(src, dst, log=print) -> Path:
    import fastcpu
    from fastcpu import checkpoint
    from fastcpu.synthesize import SynthError, load_model, synthesis_info
    src, dst = Path(src), Path(dst)
    if not dst.name.endswith(".safetensors"):
        raise SynthError(f"{dst}: the output must be a .safetensors file")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise SynthError(f"{dst}: the destination is the source file; give another path")
    model, cfg, meta = load_model(src)           # checks that it is FastSpeech2 of its config
    tensors, _ = checkpoint.load(src)
    info = synthesis_info(cfg, meta, src, log=log)
    keep = {k: v for k, v in tensors.items() if k.startswith("model/")}
    out = {"kind": "export", "weights_only": True, "config": meta["config"], "synthesis": info,
           "exported_from": src.name, "exported_at": time.time(),
           "fastcpu_version": fastcpu.__version__}
    if "state" in meta:
        out["step"] = int(meta["state"].get("step", 0))
    checkpoint.save(dst, keep, out)
    a, b = src.stat().st_size, dst.stat().st_size
    log(f"wrote {dst}: {b / 1e6:.1f} MB ({b / a:.0%} of {src.name}), "
        f"{len(keep)} tensors, no optimizer state")
    return dst


def main(argv=None) -> int:
    from fastcpu.cli import add_version
    from fastcpu.synthesize import SynthError
    ap = argparse.ArgumentParser(prog="python -m fastcpu.export",
                                 description=__doc__.split("\n\n")[0])
    add_version(ap)
    ap.add_argument("checkpoint", help="a fastcpu checkpoint (.safetensors)")
    ap.add_argument("out", help="the inference file to write (.safetensors)")
    a = ap.parse_args(argv)
    try:
        export(a.checkpoint, a.out, log=lambda m: print(m, file=sys.stderr)
               if m.startswith("note") else print(m))
    except SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
