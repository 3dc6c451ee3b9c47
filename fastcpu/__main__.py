"""``python -m fastcpu``: the list of commands, and a way to run each (``fastcpu.cli``)."""
import sys

from fastcpu.cli import entry, main

sys.exit(entry(main))
