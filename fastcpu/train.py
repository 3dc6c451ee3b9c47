"""Train FastSpeech2 on the CPU.

    python -m fastcpu.train                                   # configs/demo.yaml, bundled corpus
    python -m fastcpu.train --config configs/ljspeech.yaml --data-dir PREPROCESSED_DIR
    python -m fastcpu.train --resume-from runs/demo            # newest good checkpoint there

The run lives in ``<output_dir>/<name>/``: ``metrics.jsonl`` (one JSON object per step,
validation, checkpoint and event), ``tb/`` (TensorBoard), ``samples/`` (mel images and
Griffin-Lim audio of validation utterances), ``checkpoints/`` and ``config.yaml`` (the resolved
config). Every config value can be overridden with ``--set section.key=value``; the common ones
also have flags. Bad flags, keys, types, values or data fail at start-up with one line and exit
status 2.

Checkpoints (safetensors + JSON, atomic, checksummed): ``step-N`` every ``train.save_step``,
``epoch-N`` at each epoch end (the newest ``train.keep_last`` of those kinds are kept), ``best``,
``final``, ``interrupted`` (Ctrl+C, SIGTERM or SIGHUP: the step finishes, the state is saved,
exit 128 + N; a second signal stops at once) and ``emergency`` (an exception: one consistent
state is saved and the error re-raised). Each holds model, Adam moments, sampler position, RNG
states, counters and the resolved config, so ``--resume-from`` continues bit for bit (same
threads). One run per directory: a lock names its owner, and starting where a run already is
needs ``--resume auto`` or ``--overwrite``.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

import fastcpu
from fastcpu.faults import Faults
from fastcpu.startup import (EXIT_USAGE, MEL_TERMS, TERMS, RunLock, UsageError,  # noqa: F401
                             build_parser, check_data, claim_run_dir, detach, dry_run, fine_tune,
                             list_configs, load_run_config, open_data, resolve_resume)


class NonFiniteStop(RuntimeError):
    """``train.max_nonfinite`` non-finite steps in a row."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SecondSignal(BaseException):
    """A second stop signal: leave at once (no checkpoint of a half-done step)."""


# ---------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, cfg, root, train, val, run_dir: Path, resume=None, fault=None,
                 step_delay=0.0, out=None):
        from fastcpu import checkpoint, nn
        from fastcpu.data import Batcher
        from fastcpu.models import FastSpeech2, FastSpeech2Loss
        from fastcpu.optim import Adam
        from fastcpu.reporting import Reporter
        from fastcpu import distributed, text
        from fastcpu.data.dataset import synthesis_record
        self.cfg, self.root, self.train_set, self.val_set = cfg, root, train, val
        self.synthesis = synthesis_record(train)
        self.run_dir = run_dir
        self.world = distributed.world()
        self.report = Reporter(run_dir, cfg, out) if self.world.root else distributed.Silent()
        self.sample_sentences = text.sample_sentences(cfg.train.sample_sentences,
                                                      self.synthesis, self.report.say)
        nn.init.manual_seed(cfg.train.seed)
        self.model = FastSpeech2(cfg.model)
        fine_tune(self.model, cfg.train, resume is None, self.report.say)
        self.buffer = nn.flatten_parameters(self.model)
        self.opt = Adam(self.buffer, cfg.optimizer, cfg.model.decoder_hidden)
        self.loss_fn = FastSpeech2Loss()
        self.loss_weights = cfg.loss.weights()
        # the global batch: train.batch_size utterances a rank (one process: the batch)
        self.global_batch = cfg.train.batch_size * self.world.size
        self.batcher = Batcher(len(train), train.text_lengths(), self.global_batch,
                               cfg.train.group_size, cfg.train.seed)
        self.ckpts = checkpoint.Series(run_dir, cfg.train.keep_last)
        self.state = checkpoint.TrainState()
        self.faults = fault if isinstance(fault, Faults) else Faults(fault)
        self.step_delay, self.stop_signal, self.in_update = step_delay, None, False
        self.last_val_step, self.last_val = -1, None
        if resume is not None:
            self._load(*resume)

    @property
    def step(self) -> int:
        return self.state.step

    # -- state ------------------------------------------------------------------------------
    def snapshot(self):
        """(counters, BatchNorm running statistics) as they are now: a failed step's forward
        may already have updated the statistics."""
        from fastcpu import nn
        st = dataclasses.replace(self.state, sampler=self.batcher.state_dict(),
                                 rng=nn.init.get_state())
        params = set(self.buffer.names)
        return st, {k: v.copy() for k, v in self.model.state_dict().items() if k not in params}

    def save(self, kind: str, state=None, reason=None, epoch=None) -> Path:
        from fastcpu import runtime
        from fastcpu.config import to_dict
        st = state or self.snapshot()[0]
        if kind != "emergency":
            self.faults.at("in-save", st.step)
        if not self.world.root:                  # rank 0 writes; the others hold the same state
            return self.ckpts.path(kind, st.step, epoch)
        weights_only = kind == "best" and not self.cfg.train.best_with_optimizer
        meta = {"kind": kind, "state": st.to_meta(), "config": to_dict(self.cfg),
                "fastcpu_version": fastcpu.__version__, "threads": runtime.num_threads(),
                "ranks": self.world.size,
                "precision": self.cfg.train.precision,
                "optimizer_step": self.opt.t, "saved_at": time.time(),
                "synthesis": self.synthesis}
        if reason:
            meta["reason"] = reason
        if weights_only:            # for selection and synthesis; a run resumes from the others
            meta["weights_only"] = True
            del meta["optimizer_step"]
        path = self.ckpts.save(kind, self.model, None if weights_only else self.opt, meta,
                               epoch)
        self.report.log_event({"event": "checkpoint", "kind": kind, "step": st.step,
                               "path": str(path)})
        return path

    def _load(self, path, tensors, meta):
        from fastcpu import checkpoint, nn, runtime
        try:
            checkpoint.apply_training_state(tensors, meta, self.model, self.opt)
        except (KeyError, ValueError) as e:
            raise UsageError(f"{path}: does not fit this model ({e})") from None
        self.state = checkpoint.TrainState.from_meta(meta["state"])
        self.batcher.load_state_dict(self.state.sampler)
        nn.init.set_state(self.state.rng)
        say = self.report.say
        if meta.get("precision", "fp32") != self.cfg.train.precision:
            say(f"note: checkpoint was trained in {meta.get('precision', 'fp32')}, this run "
                f"uses {self.cfg.train.precision} (weights and moments are fp32 either way)")
        if meta.get("source") == "reference":
            say(f"note: {path} was converted from a reference checkpoint: training continues "
                f"at step {self.step} with its weights and Adam moments; the data order starts "
                f"a new epoch (the reference does not record its own)")
        elif meta.get("ranks", 1) != self.world.size:
            say(f"note: checkpoint was written by {meta.get('ranks', 1)} process(es), this run "
                f"has {self.world.size}: the same global batches and the same maths, but sums "
                f"in another order — correct, not bit-identical to an uninterrupted run")
        elif meta.get("threads") != runtime.num_threads():
            say(f"note: checkpoint was written with {meta.get('threads')} threads, this run "
                f"uses {runtime.num_threads()}: the continuation is correct but not "
                f"bit-identical to an uninterrupted run")
        self.report.log_event({"event": "resume", "from": str(path), "step": self.step})

    # -- data -------------------------------------------------------------------------------
    def load_batch(self, dataset, idx):
        """The batch ``idx`` — data-parallel: this rank's rows of it, padded to the whole
        batch's longest text and mel, with the whole batch's frame and phoneme counts; None for
        a rank without rows (a short last validation batch)."""
        from fastcpu import distributed
        from fastcpu.data import collate
        w = self.world
        if w.size == 1:
            return collate([dataset.load(int(i)) for i in idx])
        idx = np.asarray(idx)
        share = distributed.rows(len(idx), w.rank, w.size)
        if share.start == share.stop:
            return None
        lengths = dataset.text_lengths()
        b = collate([dataset.load(int(i)) for i in idx[share]],
                    pad_to=(lengths[idx].max(), dataset.frames[idx].max()))
        b.offset = share.start
        b.global_counts = (int(dataset.frames[idx].sum()), int(lengths[idx].sum()))
        return b

    # -- one step ---------------------------------------------------------------------------
    def forward_loss(self, b):
        if self.world.size > 1:
            from fastcpu.nn import functional as F
            F.set_data_parallel(b.offset, len(b), self.world.sum_)
        out = self.model.forward_batch(b)
        return self.loss_fn(out, b.mels, b.pitches, b.energies, b.durations)

    def accumulate(self, batches, step_no, times=None):
        """Forward + backward of an accumulation window into the buffer, each micro-batch's loss
        terms weighted by its share of the window's frames (mel) / phonemes (the others): the
        gradient of the large batch, however ragged. -> (loss terms of the window, frames)."""
        times = times if times is not None else {"forward": 0.0, "backward": 0.0}
        counts = [b.global_counts or (b.frames, b.phones) for b in batches]
        frames = sum(f for f, _ in counts)            # the whole window's, on every rank
        phones = sum(p for _, p in counts)
        sums = dict.fromkeys(TERMS, 0.0)
        for k, b in enumerate(batches):
            t = time.perf_counter()
            terms = self.forward_loss(b)
            wf, wp = b.frames / frames, b.phones / phones
            w = self.faults.weights(step_no, {"mel": wf, "postnet_mel": wf, "pitch": wp,
                                              "energy": wp, "duration": wp})
            total = None
            for name in TERMS:
                sums[name] += terms[name].item() * w[name]
                part = terms[name] * (w[name] * self.loss_weights[name])
                total = part if total is None else total + part
            times["forward"] += time.perf_counter() - t
            self.faults.after_forward(step_no, k == len(batches) - 1)
            t = time.perf_counter()
            total.backward()
            times["backward"] += time.perf_counter() - t
        if self.world.size > 1:                       # the ranks' shares: the window's loss
            v = self.world.sum_(np.array([sums[k] for k in TERMS]))
            sums = dict(zip(TERMS, map(float, v)))
        return sums, frames

    def train_step(self):
        from fastcpu import profile
        times = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        t0 = time.perf_counter()
        batches, epoch_end = [], None
        with profile.span("data", "data"):
            for _ in range(self.cfg.optimizer.grad_acc_step):
                idx, ended = self.batcher.next()
                epoch_end = ended if ended is not None else epoch_end
                batches.append(self.load_batch(self.train_set, idx))
        times["data"] = time.perf_counter() - t0
        step_buffers = self.snapshot()[1]            # restored if this step is skipped
        if not self.model.training:
            self.model.train()
        with profile.span("zero_grad", "optimizer"):
            self.opt.zero_grad()
        step_no = self.step + 1
        sums, frames = self.accumulate(batches, step_no, times)
        if self.world.size > 1:
            with profile.span("allreduce", "optimizer"):
                self.world.sum_(self.buffer.grad)      # the global batch's gradient
        loss = sum(sums.values())
        rec = {"event": "train", "step": step_no, "epoch": self.batcher.epoch,
               "loss": {"total": loss, **sums}, "frames": frames}
        if not self.cfg.loss.is_default():
            rec["loss"]["weighted"] = sum(self.loss_weights[k] * v for k, v in sums.items())
        if not math.isfinite(loss):
            return self._skip(rec, "non-finite loss", times, t0, step_buffers), epoch_end
        t = time.perf_counter()
        self.in_update = True
        with profile.span("clip_adam", "optimizer"):
            norm, lr, stepped = self.opt.step()
        self.in_update = False
        times["optimizer"] = time.perf_counter() - t
        if not stepped:
            return self._skip(rec, f"non-finite gradient norm ({norm})", times, t0,
                              step_buffers), epoch_end
        st = self.state
        st.nonfinite, st.step = 0, step_no
        times["step"] = time.perf_counter() - t0
        rec.update(lr=lr, grad_norm=float(norm), time=times,
                   frames_per_s=frames / times["step"])
        st.train_avg = loss if st.train_avg is None else 0.9 * st.train_avg + 0.1 * loss
        return rec, epoch_end

    def _skip(self, rec, why, times, t0, step_buffers):
        # nothing of a non-finite step is kept: no update, and the BatchNorm running statistics
        # its forward pass touched (possibly with NaN) are put back
        self.opt.zero_grad()
        self.model.load_state_dict(step_buffers, strict=False)
        self.state.nonfinite += 1
        self.state.step = rec["step"]
        times["step"] = time.perf_counter() - t0
        rec.update(event="skip", reason=why, time=times, in_a_row=self.state.nonfinite)
        rec["loss"] = {k: (v if math.isfinite(v) else str(v)) for k, v in rec["loss"].items()}
        return rec

    # -- validation -------------------------------------------------------------------------
    def validate(self):
        """Teacher-forced loss over the validation split (no gradients, eval mode), each term
        averaged over all its frames/phonemes. None if interrupted by a signal."""
        from fastcpu.autograd import no_grad
        from fastcpu.data import Batcher
        vb = Batcher(len(self.val_set), self.val_set.text_lengths(), self.global_batch,
                     1, 0, drop_last=False, shuffle=False)
        sums, frames, phones = dict.fromkeys(TERMS, 0.0), 0, 0
        self.model.eval()
        first = None
        try:
            with no_grad():
                for idx in vb.epoch_batches(0):
                    if self.stop_requested():
                        return None
                    b = self.load_batch(self.val_set, idx)
                    if first is None:                 # (one process: the batch itself)
                        first = b if self.world.size == 1 else idx
                    if b is None:                     # a rank without rows of this batch
                        continue
                    terms = self.forward_loss(b)
                    for k in TERMS:
                        sums[k] += terms[k].item() * (b.frames if k in MEL_TERMS else b.phones)
                    frames, phones = frames + b.frames, phones + b.phones
        finally:
            self.model.train()
        if self.world.size > 1:                       # every rank's share of the split
            v = self.world.sum_(np.array([sums[k] for k in TERMS] + [frames, phones], float))
            sums, frames, phones = dict(zip(TERMS, map(float, v[:-2]))), v[-2], v[-1]
        if self.world.size > 1 and first is not None and self.world.root:
            from fastcpu.data import collate                # the sample: the first batch whole
            first = collate([self.val_set.load(int(i)) for i in first])
        vals = {k: sums[k] / (frames if k in MEL_TERMS else phones) for k in TERMS}
        out = {"total": sum(vals.values()), **vals}
        if not self.cfg.loss.is_default():          # the objective (best) with loss weights
            out["weighted"] = sum(self.loss_weights[k] * v for k, v in vals.items())
        return out, first

    def run_validation(self, why: str) -> bool:
        t0 = time.perf_counter()
        self.faults.at("in-validation", self.step)
        res = self.validate()
        st = self.state
        if res is None:
            st.pending_val = True
            return False
        vals, first = res
        st.pending_val, self.last_val_step = False, self.step
        self.last_val = vals["total"]
        objective = vals.get("weighted", vals["total"])
        improved = objective < st.best_val
        rec = {"event": "val", "step": self.step, "epoch": self.batcher.epoch, "why": why,
               "loss": vals, "seconds": time.perf_counter() - t0}
        if improved:
            st.best_val, st.bad_vals, st.best_step = objective, 0, self.step
        else:
            st.bad_vals += 1
        rec["best"] = st.best_val
        r = self.cfg.train.divergence_ratio
        if r and st.train_avg and vals["total"] > r * st.train_avg:
            rec["warning"] = (f"validation loss {vals['total']:.4f} is more than {r}x the "
                              f"training loss {st.train_avg:.4f}: diverging / overfitting?")
        self.report.validation(rec, improved)
        if improved:
            self.save("best")
        teacher = first is not None and (why == "end" or self.step % self.cfg.train.synth_step == 0)
        if teacher or self.sample_sentences:    # free-running sentences at every validation
            self.report.sample(self.model, first if teacher else None, self.step,
                               self.sample_sentences)
        return True

    # -- the loop ---------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        """A stop signal here — data-parallel: on any rank (one tiny reduction, so every rank
        stops after the same step; a rank that was not signalled takes SIGTERM's part)."""
        if self.world.size > 1 and self.world.any(self.stop_signal is not None) and \
                self.stop_signal is None:
            self.stop_signal = "SIGTERM"
        return self.stop_signal is not None

    def _on_signal(self, signum, frame):         # no I/O in a signal handler
        if self.stop_signal is not None:          # a second signal: stop now
            raise SecondSignal(signal.Signals(signum).name)
        self.stop_signal = signal.Signals(signum).name

    def run(self) -> int:
        """Train; -> exit status: 0 done, 128 + N after signal N (SIGINT 130, SIGTERM 143,
        SIGHUP 129) with the state saved as ``interrupted``."""
        from fastcpu import checkpoint, profile
        handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        self.report.open(self.step)
        if self.world.root:                       # rank 0 alone writes (and cleans) files
            checkpoint.remove_stale_temps(self.ckpts.dir, self.report.say)
        good, after = self.snapshot(), False
        prof = profile.StepProfiler(self.cfg.train.profile_steps, lambda p: self.report.profile(
            p, self.cfg.train.profile_steps, self.step))
        try:
            if self.state.pending_val:
                self.run_validation("resumed")
            while not self.stop_requested() and not self._done():
                good, after = self.snapshot(), False     # weights untouched until the update
                with prof.step():
                    rec, epoch_end = self.train_step()
                good, after = self.snapshot(), True      # the update and its counters together
                self.report.step(rec, self.step)
                if not self._after_step(rec, epoch_end):
                    break
            self.report.end_progress()                   # the bar stays where it ended
            return self._finish()
        except SecondSignal as e:
            prof.close()
            return self._stop_now(str(e))
        except BaseException as e:
            prof.close()
            self._emergency(e, *good, after)
            if isinstance(e, OSError):               # a full disk, a vanished directory, ...
                print(f"error: {e.filename or self.run_dir}: {e.strerror or e}", file=sys.stderr)
                return 1
            raise
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            self.report.close(self.state.best_val, self.last_val)

    def _done(self) -> bool:
        c = self.cfg.train
        return self.step >= c.total_step or 0 < c.num_epochs <= self.batcher.epochs_done()

    def _after_step(self, rec, epoch_end) -> bool:
        """Everything a finished step triggers; False to stop the loop."""
        c, st = self.cfg.train, self.state
        self.faults.after_update(self.step)
        if rec["event"] == "skip" and st.nonfinite >= c.max_nonfinite:
            raise NonFiniteStop(f"{st.nonfinite} non-finite steps in a row "
                                f"(train.max_nonfinite={c.max_nonfinite})")
        if self.step_delay:
            time.sleep(self.step_delay)
        finished_epoch = epoch_end is not None and rec["event"] != "skip"
        if self.step % c.val_step == 0 or finished_epoch:
            if not self.run_validation("epoch" if finished_epoch else "step"):
                return False
        if self.step % c.save_step == 0:
            self.save("step")
        if epoch_end is not None and c.epoch_save and (epoch_end + 1) % c.epoch_save == 0:
            self.save("epoch", epoch=epoch_end)
        if c.early_stop_patience and st.bad_vals >= c.early_stop_patience:
            self.report.say(f"early stopping: no validation improvement in {st.bad_vals} "
                            f"validations")
            self.report.log_event({"event": "early_stop", "step": self.step})
            return False
        return True

    def _finish(self) -> int:
        say, log = self.report.say, self.report.log_event
        if self.stop_signal is not None:
            say(f"{self.stop_signal}: saving the state after step {self.step} (send again to "
                f"stop at once)")
            path = self.save("interrupted", reason=self.stop_signal)
            say(f"interrupted by {self.stop_signal} at step {self.step}; saved {path}")
            log({"event": "end", "status": "interrupted", "step": self.step})
            return 128 + signal.Signals[self.stop_signal].value
        if not self.state.pending_val and self.step > self.report.steps_at_start and \
                self.last_val_step != self.step:
            self.run_validation("end")
        path = self.save("final")
        if self.cfg.train.slim_after_final and self.world.root:
            n = self.ckpts.slim_periodic()
            if n:
                say(f"note: {n} step/epoch checkpoint(s) now keep the weights only (train."
                    f"slim_after_final): the finished run resumes from final")
        say(f"done: {self.step} steps; final checkpoint {path}")
        log({"event": "end", "status": "done", "step": self.step})
        return 0

    def _stop_now(self, name: str) -> int:
        from fastcpu import checkpoint
        newest = next(iter(checkpoint.find(self.run_dir, resumable=True)), None)
        self.report.say(f"second {name}: stopped at once, nothing saved for the step under way; "
                        f"newest checkpoint: {newest or 'none'}")
        self.report.log_event({"event": "end", "status": "stopped", "signal": name,
                               "step": self.step})
        return 128 + signal.Signals[name].value

    def _emergency(self, exc, good, good_buffers, after_update=False):
        say, log = self.report.say, self.report.log_event
        if self.in_update:
            say(f"error during the optimizer update: the weights may be half-updated, so no "
                f"emergency checkpoint is written (the newest good one is in {self.ckpts.dir})")
            log({"event": "end", "status": "error", "error": repr(exc)})
            return
        # one consistent state: before the failed step (its update never happened: the counters
        # and BatchNorm statistics are rolled back to its start), or after a step whose update
        # was done (the failure came later: validation, a sample, a checkpoint, a log write)
        self.opt.zero_grad()
        self.model.load_state_dict(good_buffers, strict=False)
        which = (f"the state after step {good.step} (the error came after its update)"
                 if after_update else f"the last good state (step {good.step})")
        try:
            path = self.save("emergency", state=good, reason=repr(exc))
            say(f"{type(exc).__name__}: saved {which} to {path}")
        except Exception as e2:                      # never mask the original error
            say(f"could not write the emergency checkpoint: {e2!r}")
        log({"event": "end", "status": "error", "error": repr(exc), "step": good.step})


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(__doc__).parse_args(argv)
    if args.list_configs:
        return list_configs()
    from fastcpu import distributed
    w = distributed.world()
    lock = watcher = run_dir = None
    try:
        resume = resolve_resume(args.resume_from) if args.resume_from else None
        cfg = load_run_config(args, resume[2] if resume else None)
        run_dir = Path(cfg.train.output_dir) / cfg.name
        if args.detach:
            return detach(args, argv, cfg, *open_data(cfg)[:2], run_dir)
        if not args.dry_run:                        # one owner, and no silent mixing of runs
            if w.root:                              # (data-parallel: rank 0 decides for all)
                try:
                    lock = RunLock(run_dir).acquire()
                    decision = ("ok", claim_run_dir(run_dir, args))
                except UsageError as e:
                    decision = ("error", str(e))
            target = w.bcast(decision if w.root else None)
            if target[0] == "error":
                raise UsageError(target[1])
            target = target[1]
            if target and resume is None:
                resume = resolve_resume(target)
                cfg = load_run_config(args, resume[2])
        root, train, val = open_data(cfg)
        if w.size > 1 and not args.dry_run:
            watcher = distributed.Watcher(w, run_dir)
        return _run(args, cfg, root, train, val, run_dir, resume, Faults(args.debug_fault))
    except UsageError as e:
        if w.root:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        if w.size == 1:
            raise
        # data parallel: the other ranks wait in a reduction this rank will never join; one
        # line, then the launcher ends them all (rank 0 has written the emergency checkpoint
        # if the error was its own; the newest periodic checkpoint is kept either way)
        print(f"error: rank {w.rank} of {w.size}: {type(e).__name__}: {e}", file=sys.stderr,
              flush=True)
        if run_dir is not None:
            distributed.mark_failed(run_dir)
        w.abort(1)
    finally:
        if watcher is not None:                    # a controlled end: nothing to report
            watcher.done()
        if lock is not None:
            lock.release()


def _run(args, cfg, root, train, val, run_dir, resume, fault) -> int:
    from fastcpu import distributed, kernels, reporting, runtime
    from fastcpu.config import to_dict
    from fastcpu.kernels import gemm
    if cfg.train.precision == "bf16" and not gemm.bf16_status().startswith("ok"):
        raise UsageError(f"train.precision bf16: {gemm.bf16_status()}")
    w = distributed.world()
    threads = cfg.train.threads or (distributed.default_threads(w) if w.size > 1 else None)
    with runtime.threads(threads), runtime.keep_memory(), kernels.use(cfg.train.precision):
        if args.dry_run:
            return dry_run(cfg, root, train, val, run_dir, resume)
        check_data(train, val)
        import yaml
        if w.root:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        tr = Trainer(cfg, root, train, val, run_dir, resume=resume, fault=fault,
                     step_delay=args.debug_step_delay)
        mem = tr.report.memory_plan = reporting.memory_plan(cfg, len(tr.buffer), train)
        tr.report.say(reporting.banner(cfg, root, train, val, len(tr.buffer), mem, run_dir,
                                       resume and resume[0]))
        tr.report.log_event({"event": "start", "step": tr.step,     # a new segment (monitor)
                             "total_step": cfg.train.total_step, "config": to_dict(cfg),
                             "runtime": runtime.info(), "memory": mem,
                             "resumed_from": str(resume[0]) if resume else None})
        try:
            return tr.run()
        except NonFiniteStop as e:
            print(f"error: stopped: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
