"""The command line: ``python -m fastcpu`` (or the ``fastcpu`` script) lists the commands and
runs one (``fastcpu train ...`` is ``python -m fastcpu.train ...``); every command has
``--version``; a closed pipe (``... | head``) ends a command quietly."""
from __future__ import annotations

import importlib
import os
import sys

# name -> (module, what it does)
COMMANDS = {
    "train": ("fastcpu.train", "train FastSpeech2 (the bundled corpus and demo config by default)"),
    "synthesize": ("fastcpu.synthesize", "text to speech from a trained checkpoint"),
    "export": ("fastcpu.export", "a weights-only inference file from a checkpoint"),
    "evaluate": ("fastcpu.evaluate", "score a checkpoint over a split (MCD, duration, pitch, "
                                     "energy, loss), or two wav folders"),
    "select": ("fastcpu.select", "rank a run's checkpoints by a metric; write the selected one"),
    "compare": ("fastcpu.compare", "an HTML page to listen to checkpoints side by side"),
    "report": ("fastcpu.report", "an HTML report of a run: curves, checkpoints, diagnosis"),
    "monitor": ("fastcpu.monitor", "watch a run: progress, losses, liveness, memory, disk"),
    "preprocess": ("fastcpu.preprocess", "wavs + MFA TextGrids -> the reference's feature layout"),
    "build-corpus": ("fastcpu.data.espeak_corpus", "make an aligned corpus with espeak-ng"),
    "convert": ("fastcpu.convert", "checkpoints: reference .pth.tar <-> fastcpu .safetensors; HiFi-GAN files"),
    "warmup": ("fastcpu.warmup", "compile every kernel ahead of the first run (~30 s)"),
    "bench": ("fastcpu.bench", "time a training step against PyTorch on this CPU"),
}
EXIT_PIPE = 141                       # 128 + SIGPIPE, what a shell shows for a closed pipe


def version_string() -> str:
    import fastcpu
    return f"fastcpu {fastcpu.__version__}"


def add_version(ap) -> None:
    ap.add_argument("--version", action="version", version=version_string())


def entry(main, argv=None) -> int:
    """Run a command's ``main``; a reader that closed the pipe ends it without a traceback."""
    try:
        rc = main(argv)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)        # no second error when Python
        os.dup2(devnull, sys.stdout.fileno())             # flushes stdout at exit
        return EXIT_PIPE


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"{version_string()}: FastSpeech2 trained natively fast on CPUs", "",
             "usage: python -m fastcpu COMMAND [ARGS...]   (or: fastcpu COMMAND ...)", "",
             "commands:"]
    lines += [f"  {n:<{width}}  {what}" for n, (_, what) in COMMANDS.items()]
    lines += ["", "python -m fastcpu COMMAND --help describes one."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(version_string())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(argv[1:])


def script() -> None:
    """The ``fastcpu`` console script."""
    sys.exit(entry(main))
