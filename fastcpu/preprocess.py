"""``python -m fastcpu.preprocess``: the command; the code is ``fastcpu.data.preprocess``."""
import sys

from fastcpu.data.preprocess import main, preprocess  # noqa: F401

if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
