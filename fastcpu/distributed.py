"""Data-parallel training over MPI: ``mpiexec -n N python -m fastcpu.train ...``.

Every rank builds the same model from the same seed and draws the same global batches from the
same seeded sampler; rank r takes rows ``[r * B // N, (r + 1) * B // N)`` of each global
micro-batch of B = N x ``train.batch_size`` utterances, zero-padded to the *global* batch's
longest text and mel (the reference's outputs depend on padding: PostNet's convolutions and
BatchNorm statistics see padded frames), so a rank computes exactly its rows of what one
process computes on the whole batch:

- dropout masks are the global batch's rows (``nn.functional.set_data_parallel``: the counter
  RNG starts at the rank's first element); seeds come from the same stream on every rank;
- BatchNorm's training statistics are reduced over the ranks (forward: column sums and squared
  deviations; backward: the two sums dx needs);
- each loss term is weighted by the rank's share of the *global* window's frames (mel) or
  phonemes (the others), so the ranks' gradients sum to the global batch's;
- one in-place ``Allreduce`` of the flat gradient buffer, then the same clip + Adam step on
  every rank (the same bits everywhere, so the weights never drift apart).

mpi4py is imported only when the process was started by an MPI launcher with more than one
rank (``PMI_SIZE`` — MPICH's mpiexec, Slurm's srun — or ``OMPI_COMM_WORLD_SIZE`` > 1); otherwise
``world()`` is the single process and nothing here runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")       # MPICH/Hydra, Slurm's PMI; Open MPI


def launched_size() -> int:
    """Ranks the launcher started (1 when not under MPI)."""
    for v in SIZE_VARS:
        try:
            n = int(os.environ.get(v, "1"))
        except ValueError:
            continue
        if n > 1:
            return n
    return 1


class World:
    """The single process: rank 0 of 1; every reduction is the identity."""
    rank, size, local_size, nodes = 0, 1, 1, 1

    @property
    def root(self) -> bool:
        return self.rank == 0

    def sum_(self, buf: np.ndarray) -> np.ndarray:
        """Sum ``buf`` over the ranks, in place; -> buf."""
        return buf

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def bcast(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    def abort(self, status: int = 1) -> None:
        raise SystemExit(status)

    def describe(self) -> str:
        return "1 process"


class MPIWorld(World):
    def __init__(self):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        self.nodes = int(self.comm.allreduce(1 if local.Get_rank() == 0 else 0))
        local.Free()

    def sum_(self, buf):
        if buf.dtype not in (np.float32, np.float64) or not buf.flags.c_contiguous:
            raise ValueError(f"sum_: a C-contiguous float32/float64 buffer, got {buf.dtype}")
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def any(self, flag):
        return bool(self.comm.allreduce(1 if flag else 0, op=self.MPI.MAX))

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, status=1):
        self.comm.Abort(status)

    def describe(self):
        return (f"{self.size} MPI ranks on {self.nodes} node(s), {self.local_size} on this "
                f"node")


_world = None


def world() -> World:
    global _world
    if _world is None:
        _world = MPIWorld() if launched_size() > 1 else World()
    return _world


def rows(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` rows (sizes differ by at most one)."""
    return slice(rank * n // size, (rank + 1) * n // size)


def default_threads(w: World) -> int:
    """The node's cores divided by the ranks on it (at least 1): never oversubscribed."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, w.local_size))


class Silent:
    """The reporter of every rank but 0: it says and writes nothing."""
    memory_plan = None

    def __init__(self):
        self.steps_at_start = 0

    def open(self, step: int) -> None:
        self.steps_at_start = step

    def __getattr__(self, name):
        return lambda *a, **k: None


# ---------------------------------------------------------------------------- sudden deaths

FAILED_MARK = ".rank-failed"


class Watcher:
    """A rank killed outright (SIGKILL, the OOM killer) leaves no word, and the launcher then
    kills the others at once, rank 0 too. So rank 0 starts this small process in a session of
    its own (outside the launcher's cleanup), which polls the PIDs of this node's ranks and,
    if rank 0 goes without saying "done", prints one line naming the first rank that vanished.
    A rank that fails with an error says so itself (and marks the run directory, so the
    watcher stays quiet)."""

    def __init__(self, w: World, run_dir):
        import socket
        import subprocess
        import sys
        me = socket.gethostname()
        peers = w.comm.allgather((me, os.getpid(), w.rank))
        self.proc = None
        if not w.root:
            return
        local = [f"{r}:{pid}" for host, pid, r in peers if host == me]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastcpu.distributed", "--watch", str(run_dir), me,
             str(w.size), *local],
            stdin=subprocess.PIPE, start_new_session=True)

    def done(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"done\n")
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc = None


def mark_failed(run_dir) -> None:
    try:
        (Path(run_dir) / FAILED_MARK).write_text(str(os.getpid()))
    except OSError:
        pass


def _running(pid: int) -> bool:
    try:                                   # a zombie (dead, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _watch(run_dir: str, host: str, size: int, ranks: list) -> int:
    import select
    import sys
    alive = {int(r): int(p) for r, p in (x.split(":") for x in ranks)}
    first = None
    mark = Path(run_dir) / FAILED_MARK
    if mark.exists():
        mark.unlink()
    while True:
        gone = [(r, pid) for r, pid in alive.items() if not _running(pid)]
        for r, pid in gone:
            del alive[r]
        if gone and first is None:      # the launcher kills the rest when one dies: the first
            first = max(gone)           # seen (several at once: not rank 0, whose pipe tells)
        ready, _, _ = select.select([sys.stdin], [], [], 0.005)
        if ready:
            line = sys.stdin.readline()
            if line.strip() == "done":
                return 0
            if not line:                              # rank 0 is gone without a word
                break
    if mark.exists():                                 # a rank said why itself
        mark.unlink()
        return 0
    ckpts = Path(run_dir) / "checkpoints"
    r, pid = first if first is not None else (0, "?")
    if r == 0 and size > len(ranks):
        # this node saw only rank 0 go: with ranks elsewhere, the first death may be there
        print(f"error: rank 0 (pid {pid} on {host}) was stopped without a word; the other "
              f"{size - len(ranks)} of the {size} ranks run on other nodes, where one was "
              f"probably killed (SIGKILL, out of memory?): see the launcher's output; the "
              f"checkpoints in {ckpts} are intact", file=sys.stderr, flush=True)
        return 1
    print(f"error: rank {r} (pid {pid} on {host}) ended without a word — killed (SIGKILL, "
          f"out of memory?); the launcher stopped the job; the checkpoints in {ckpts} are "
          f"intact", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 4 and sys.argv[1] == "--watch":
        sys.exit(_watch(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]))
