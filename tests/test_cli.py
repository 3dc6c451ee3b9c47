"""The command line as a user meets it: `python -m fastcpu`, --version everywhere, the bundled
configs by name, quiet broken pipes."""
import subprocess
import sys

import pytest

import fastcpu
from fastcpu.cli import COMMANDS


def run(*args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          **kw)


def test_python_m_fastcpu_lists_every_command():
    r = run("-m", "fastcpu")
    assert r.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in r.stdout, name
    r = run("-m", "fastcpu", "nosuch")
    assert r.returncode == 2 and "unknown command 'nosuch'" in r.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_version_both_ways(name):
    for args in (["-m", "fastcpu", name, "--version"], ["-m", COMMANDS[name][0], "--version"]):
        r = run(*args)
        assert r.returncode == 0 and r.stdout.strip() == f"fastcpu {fastcpu.__version__}", args
    r = run("-m", "fastcpu", "--version")
    assert r.stdout.strip() == f"fastcpu {fastcpu.__version__}"


def test_configs_by_name_and_list_configs(tmp_path):
    r = run("-m", "fastcpu.train", "--list-configs")
    assert r.returncode == 0
    for name in ("demo", "ljspeech", "stable", "tiny"):
        assert f"  {name} " in r.stdout
    assert all(len(line) <= 100 for line in r.stdout.splitlines()[1:])   # 0: the directory
    r = run("-m", "fastcpu.train", "--config", "stable", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("-m", "fastcpu.train", "--config", "nosuch", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: --config nosuch: no such file, and not a bundled config "
                                "(those are: demo, ljspeech, stable, tiny; --list-configs "
                                "describes them)")


def test_a_closed_pipe_ends_a_command_quietly():
    cmd = f"{sys.executable} -m fastcpu.train --help | head -1"
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.startswith("usage:") and "Traceback" not in r.stderr, r.stderr
    cmd = (f"{sys.executable} -c 'import sys; from fastcpu.cli import entry; "
           f"sys.exit(entry(lambda a: [print(i) for i in range(100000)] and 0))' | head -2")
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True,
                       text=True, timeout=120)
    assert r.stdout == "0\n1\n" and r.stderr == "" and r.returncode == 141
