"""What :func:`phasestem.recon.engine.optimize` does around its epochs, as callbacks.

A :class:`Callback` is told, in the order of the engine's list:

* ``on_start(loop)``: before the measured data are prepared (a resume restores the checkpoint here);
* ``after_loss(loop)``: an epoch's mean loss is known (``loop.mean_loss``), before the constraints run and the
  epoch is recorded (the divergence check);
* ``on_record(loop)``: the epoch is recorded (``loop.record``, the model's ``epoch`` and loss history); a callback
  may add scalars to the record (metrics against a truth, ``loss_ptyrad``) or act on the model (a prior's pull,
  :mod:`phasestem.recon.prior`), before any ``on_epoch_end`` logs or checkpoints the epoch;
* ``on_epoch_end(loop)``: the epoch is complete (logged, checkpointed, written out);
* ``on_end(loop)``: every epoch of the call ran;
* ``on_close(loop)``: always, last (also after an error or when the caller stops early).

``loop`` is the engine's :class:`~phasestem.recon.engine.Loop`: the model, the dataset, the validated run and
loss settings, the rank, the optimiser and the :class:`~phasestem.recon.run_state.RunState`. The engine's own
list is :class:`DivergenceGuard`, :class:`EpochLog`, :class:`ProgressBar`; the keyword front-end
(:func:`phasestem.recon.engine.optimize_with_options`) adds :class:`Checkpoints`, :class:`Figures` and
:class:`LogFile` from its ``checkpoint_path``/``out_dir``/``log_file`` options, and its ``prior``; the parameter-file
run (:func:`phasestem.recon.run.run_reconstruction`) adds the per-epoch report (:mod:`phasestem.recon.report`) and
the live snapshots (:mod:`phasestem.recon.live`). The learned trainer (:mod:`phasestem.learn.trainer`) calls the
same names (``on_start``, ``on_epoch_end``, ``on_end``) on its callbacks.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ..base.errors import PhasestemError
from ..base.runtime import log_to_file
from .checkpoint import load_checkpoint, save_checkpoint
from .live import MAX_SIDE as LIVE_MAX_SIDE
from .live import write_snapshot
from .optimizers import clear_moments
from .run_state import snapshot

log = logging.getLogger("phasestem.recon")

#: largest |object phase| (rad, per slice) or object amplitude a run may reach before it counts as diverged
PHYSICAL_LIMIT = 1e3


class DivergenceError(PhasestemError, FloatingPointError):
    """The reconstruction diverged; the model holds the last good state."""


class NonFiniteLossError(DivergenceError):
    """The loss became NaN or Inf; the model holds the last good state."""


class Callback:
    """No-op hooks; subclasses override the ones they need."""

    def on_start(self, loop) -> None:
        pass

    def on_epoch_start(self, loop) -> None:
        """Before an epoch's batches: ``loop.epoch`` is the epoch about to run; ``loop.fit_positions`` may be set to
        the flat indices it fits (a live scan's positions received so far)."""

    def after_loss(self, loop) -> None:
        pass

    def on_record(self, loop) -> None:
        pass

    def on_epoch_end(self, loop) -> None:
        pass

    def on_end(self, loop) -> None:
        pass

    def on_close(self, loop) -> None:
        pass


def divergence_reason(model, mean_loss: float, best: float, start: float, factor: float) -> str | None:
    """Why the epoch just run counts as diverged (None if it does not): a non-finite loss, a loss above both
    ``factor`` × ``best`` and the starting loss ``start`` (near-exact fits of noise-free data may fluctuate by
    large factors far below the start), or non-finite / non-physical object values."""
    if not math.isfinite(mean_loss):
        return f"the loss became {mean_loss}"
    if factor > 0 and math.isfinite(best) and mean_loss > factor * best and mean_loss > start:
        return (f"the loss rose to {mean_loss:.4g}, more than {factor:g} × its best {best:.4g} and above its "
                f"start {start:.4g}")
    with torch.no_grad():
        for name in ("obj_phase", "obj_amplitude", "probe"):
            p = getattr(model, name)
            if not bool(torch.isfinite(p).all()):
                return f"{name} holds NaN/Inf"
        peak = max(float(model.obj_phase.abs().max()), float(model.obj_amplitude.abs().max()))
    if peak > PHYSICAL_LIMIT:
        return f"the object reached non-physical values (|phase| or amplitude {peak:.3g} > {PHYSICAL_LIMIT:g})"
    return None


#: step-size back-offs (each halves every learning rate) a run may take before only the divergence check is left
MAX_BACKOFFS = 4


class DivergenceGuard(Callback):
    """Back off, then stop a diverging run.

    Back-off: an epoch whose (finite) loss exceeds ``run.backoff_factor`` × the best so far, and the best by a tenth
    of the way back to the run's starting loss, restores the best epoch's parameters, clears the optimiser's moments
    and halves every learning rate from the next epoch on (``RunState.lr_backoff``), at most :data:`MAX_BACKOFFS`
    times, with a warning line each time; the epoch count goes on. A solver step too long
    for the data (lsq's Gauss–Newton fraction on a specimen the model cannot yet explain, e.g. an unmodelled
    mistilt) thus shortens instead of running away. L-BFGS (its own line search) is left alone.

    Stop (:class:`DivergenceError`): a non-finite loss, an epoch loss above ``run.divergence_factor`` × the best so
    far (and above the start), or non-physical object values. The model is first restored to the best epoch's state
    (the last epoch's when the loss is not finite) and that state is checkpointed to ``checkpoint_path`` when given
    (rank 0)."""

    def __init__(self, checkpoint_path: str | Path | None = None):
        self.checkpoint_path = checkpoint_path
        self.improved = False

    def _back_off(self, loop) -> bool:
        """Restore the best state and halve the learning rates when the loss rose past ``run.backoff_factor``."""
        model, state, run = loop.model, loop.state, loop.run
        factor = run.backoff_factor
        if (factor <= 0 or run.optimizer == "lbfgs" or state.backoffs >= MAX_BACKOFFS or state.best is None
                or not math.isfinite(loop.mean_loss) or not math.isfinite(state.best_loss)
                or loop.mean_loss <= factor * state.best_loss):
            return False
        start = state.start_loss if state.start_loss is not None and math.isfinite(state.start_loss) else math.inf
        if start < math.inf and loop.mean_loss <= state.best_loss + 0.1 * (start - state.best_loss):
            return False  # near-exact fits of noise-free data fluctuate by large factors far below the start
        best_epoch, params = state.best
        model.load_state_dict(params)
        if loop.optimizer is not None:  # moments of the run-away steps would push the same way again
            clear_moments(loop.optimizer)
        state.backoffs += 1
        state.lr_backoff *= 0.5
        log.warning("the loss rose to %.4g in epoch %d, more than %g × its best %.4g (epoch %d): restored that "
                    "epoch's state and halved every learning rate (× %g now; back-off %d of %d)", loop.mean_loss,
                    loop.epoch, factor, state.best_loss, best_epoch, state.lr_backoff, state.backoffs, MAX_BACKOFFS)
        return True

    def after_loss(self, loop) -> None:
        model, state, factor = loop.model, loop.state, loop.run.divergence_factor
        if self._back_off(loop):
            self.improved = False
            return
        reason = divergence_reason(model, loop.mean_loss, state.best_loss, state.start_loss, factor)
        if reason is not None:
            snapshot = loop.snapshot
            if state.best is not None and math.isfinite(loop.mean_loss):  # back to the best epoch, not the last
                epoch, snapshot = state.best
                model.history.rewind(epoch)
            model.load_state_dict(snapshot)
            state.best = (model.epoch, snapshot)
            msg = (f"{reason} in epoch {loop.epoch}; stopped and restored the state after epoch {model.epoch}. "
                   "Lower the learning rates (or run.lr_scale) or check the data and optics.")
            if self.checkpoint_path is not None and loop.rank == 0:
                save_checkpoint(self.checkpoint_path, model, run_state=state.to_checkpoint(model))
                msg += f" Last good state saved to {self.checkpoint_path}."
            log.error(msg)
            raise (NonFiniteLossError if not math.isfinite(loop.mean_loss) else DivergenceError)(msg)
        self.improved = loop.mean_loss <= state.best_loss
        state.best_loss = min(state.best_loss, loop.mean_loss)

    def on_epoch_end(self, loop) -> None:
        if self.improved and loop.run.divergence_factor > 0:
            loop.state.best = (loop.epoch, snapshot(loop.model.state_dict()))


def refined(model, kind: str, held: frozenset[str] = frozenset()) -> dict:
    """The parameters a run of solver ``kind`` refines: name → schedule, in the model's order; ``held``:
    parameters the run holds fixed whatever their schedule."""
    out = {}
    for name, p in model.named_parameters():
        sched = model.schedules.get(name)
        if sched is not None and name not in held and p.requires_grad and sched.resolved_lr(name, kind) > 0:
            out[name] = sched
    return out


def refined_parameters(refining: dict, kind: str, lr_scale: float) -> str:
    """The run log's "refines" line for :func:`refined`'s ``refining``: each parameter's learning rate and epochs."""
    parts = []
    for name, sched in refining.items():
        end = "" if sched.end is None else f"–{sched.end}"
        parts.append(f"{name} {sched.resolved_lr(name, kind) * lr_scale:g}"
                     + (f" (epochs {sched.start}{end})" if sched.start > 1 or sched.end is not None else ""))
    return f"{kind} refines: {', '.join(parts) or 'nothing'}"


class EpochLog(Callback):
    """One log line per epoch: the loss, its terms, the held-out loss, the constraints applied and the time (the
    engine logs what the run refines before its first epoch: :func:`refined_parameters`)."""

    def on_epoch_end(self, loop) -> None:
        record, terms = loop.record, sorted(loop.terms)
        log.info("%s %d loss %.6g %s%s%s (%.2f s)", loop.unit, loop.epoch, loop.mean_loss,
                 " ".join(f"{k}={record[k]:.4g}" for k in terms),
                 f" heldout={record['heldout']:.7g}" if "heldout" in record else "",
                 f" constraints: {','.join(loop.applied)}" if loop.applied else "", record["seconds"])


class ProgressBar(Callback):
    """A tqdm bar over the call's epochs (rank 0, ``run.progress``)."""

    def __init__(self):
        self.bar = None

    def on_start(self, loop) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=loop.n_epochs, desc=f"{loop.run.optimizer} epochs",
                        disable=not loop.run.progress or loop.rank != 0, leave=False)

    def on_epoch_end(self, loop) -> None:
        self.advance(loop.mean_loss)

    def advance(self, loss: float) -> None:
        """One epoch done with mean loss ``loss`` (also the epochs of a coarse start, run in a call of their own)."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4g}")

    def on_close(self, loop) -> None:
        if self.bar is not None:
            self.bar.close()


class Checkpoints(Callback):
    """``path`` every ``every`` epochs and after the call's last (rank 0; ``every`` 0: only the divergence's last
    good state, through :class:`DivergenceGuard`); ``resume``: first restore model, optimiser and run state from
    ``path`` (:func:`~phasestem.recon.checkpoint.load_checkpoint`)."""

    def __init__(self, path: str | Path, every: int = 0, resume: bool = False):
        self.path, self.every, self.resume = Path(path), int(every), resume

    def on_start(self, loop) -> None:
        if self.resume:
            loop.state = load_checkpoint(self.path, loop.model)

    def on_epoch_end(self, loop) -> None:
        if loop.rank == 0 and self.every and loop.epoch % self.every == 0:
            save_checkpoint(self.path, loop.model, loop.optimizer, run_state=loop.state.to_checkpoint(loop.model))

    def on_end(self, loop) -> None:
        if loop.rank == 0 and self.every:
            save_checkpoint(self.path, loop.model, loop.optimizer, run_state=loop.state.to_checkpoint(loop.model))


class Figures(Callback):
    """``out_dir/epoch_NNNN.png`` (the model's inspect figure) every ``every`` epochs (rank 0)."""

    def __init__(self, out_dir: str | Path, every: int):
        self.out_dir, self.every = Path(out_dir), int(every)

    def on_epoch_end(self, loop) -> None:
        if loop.rank == 0 and self.every and loop.epoch % self.every == 0:
            import matplotlib.pyplot as plt

            plt.close(loop.model.inspect(loop.dataset, path=self.out_dir / f"epoch_{loop.epoch:04d}.png"))


class LogFile(Callback):
    """The ``phasestem.recon`` log (INFO and up) also into ``path`` during the call (rank 0 only;
    :func:`phasestem.base.runtime.log_to_file`)."""

    def __init__(self, path: str | Path):
        self.path, self.context = Path(path), None

    def on_start(self, loop) -> None:
        if loop.rank == 0:
            self.context = log_to_file(log, self.path)
            self.context.__enter__()

    def on_close(self, loop) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None


class LiveSnapshots(Callback):
    """Replaces ``path`` with a :func:`~phasestem.recon.live.snapshot` (the live page of ``phasestem serve``) after
    every epoch, once its record is complete, with ``extra(model)``'s arrays where given (a live run's stream,
    :mod:`phasestem.live`). A snapshot that cannot be written is logged once and the run goes on."""

    def __init__(self, path: str | Path, n_epochs: int, max_side: int = LIVE_MAX_SIDE, extra=None):
        self.path, self.n_epochs, self.max_side, self.extra = Path(path), n_epochs, max_side, extra
        self.failed: list[OSError] = []

    def on_record(self, loop) -> None:
        try:
            write_snapshot(self.path, loop.model, self.n_epochs, self.max_side,
                           None if self.extra is None else self.extra(loop.model))
        except OSError as exc:
            if not self.failed:
                log.warning("live snapshot %s not written (%s); the run goes on without it", self.path, exc)
            self.failed.append(exc)
