"""The engine's mini-batch step (forward, loss, backward, preconditioning, update), run eagerly, compiled or
captured as a CUDA graph (``run.compile``).

The step itself is graph-safe: no host synchronisation and no shape that depends on tensor values between the
batch's indices (on the device, moved once per epoch by the engine) and the updated parameters — the
preconditioner's floors, the object-mode weights and the window corners stay on the device, and the loss of each
batch is summed on the device (read once at the end of the epoch). A batch of another size (the last one of an
epoch) gets its own compiled specialisation or its own graph, so no padding changes the numbers.

* ``auto`` (the default): ``cuda_graph`` where a graph can hold the step (:func:`resolve_compile`: a CUDA device,
  one process, not lbfgs, the data on the device), falling back to ``none`` with a warning if the capture fails;
  ``none`` elsewhere.
* ``none``: eager; the fastest on a CPU.
* ``compile``: the model's forward pass and the loss through :func:`torch.compile` (mode ``reduce-overhead`` on
  CUDA: its CUDA graphs; ``default`` elsewhere); the fused multislice node
  (:mod:`phasestem.physics.fused`) runs eagerly inside it (dynamo loses the node's gradient), and the
  preconditioning and the update stay eager.
* ``cuda_graph`` (CUDA only): forward, loss, backward and preconditioning captured as one CUDA graph per batch
  size, replayed on static input buffers (the batch's indices and patterns are copied into them); the update (a
  few element-wise kernels per parameter) runs eagerly after each replay, as the learning rates change between
  epochs. A graph is captured again when what it read changes: the active parameters, a parameter's storage, the
  whole-scan curvature's presence, the object pre-blur, the detector blur or the probe support. (Capturing the
  update too, with its learning rates and step counts on the device, was measured on an H100 and not kept: 8 %
  faster at one slice, 4–14 % slower with 8 slices or 4 probe modes, as its device-side scalars added more kernels
  than the launches it saved; docs/benchmarks.md.)
"""
from __future__ import annotations

import logging
from typing import Literal

import torch

from ..base.errors import ConfigError
from ..physics.fused import run_eagerly_under_compile
from .losses import total_loss
from .optimizers import all_reduce_grads
from .precondition import ScanCurvature, precondition_gradients
from .settings.losses import LossConfig

COMPILE_MODES = ("auto", "none", "compile", "cuda_graph")
#: how a batch step runs once ``run.compile`` is resolved (:func:`resolve_compile`)
StepMode = Literal["none", "compile", "cuda_graph"]
#: captures tried before cuda_graph gives up. On one H100, 2 of about 40 runs of the GPU equality tests (each captures
#: several graphs) had a capture invalidated ("operation failed due to a previous error during capture"), with the
#: same code and data passing in the other runs; cause not found
CAPTURE_ATTEMPTS = 3
log = logging.getLogger("phasestem.recon")


def resolve_compile(mode: str, device: torch.device, optimizer: str, world: int, on_device: bool) -> tuple[str, str]:
    """(the step ``run.compile`` runs, why): ``auto`` is ``cuda_graph`` where a graph can hold the step — a CUDA
    device, one process, a solver other than lbfgs and the data on the device (streamed data are read by a
    prefetch thread while a graph may be captured) — and ``none`` elsewhere; any other mode is itself."""
    if mode != "auto":
        return mode, "as given"
    why = ("not a CUDA device" if device.type != "cuda" else "lbfgs" if optimizer == "lbfgs"
           else f"{world} processes" if world > 1 else "the data are streamed from the file" if not on_device
           else "")
    return ("none", why) if why else ("cuda_graph", "a CUDA device, one process, the data on the device")


def check_compile(mode: str, device: torch.device, optimizer: str, world: int) -> None:
    """Refuse a ``run.compile`` the run cannot use, in one line (``auto`` is resolved first:
    :func:`resolve_compile`)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"run.compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode != "cuda_graph":
        return
    if device.type != "cuda":
        raise ConfigError(f"run.compile: cuda_graph needs a CUDA device, the run is on {device.type!r}; use "
                          "compile or none")
    if optimizer == "lbfgs":
        raise ConfigError("run.compile: cuda_graph cannot run lbfgs (its line search evaluates the loss a varying "
                          "number of times per step); use compile or none, or another optimizer")
    if world > 1:
        raise ConfigError(f"run.compile: cuda_graph runs in one process (this run has {world}: the gradient sum "
                          "across processes is not captured); use compile or none, or run.n_processes: 1")


def _forward_loss(model, losses: LossConfig, share, meas, meas_p, pacbed_p, counts: float, n_total: int):
    """(total loss, terms) of the batch ``share`` (B,) against ``meas``/``meas_p`` (B, h, w); the terms are not
    detached here (see :func:`~phasestem.recon.losses.total_loss`)."""
    inten = model(share)
    phase = model.obj_phase if losses.needs_phase() else None
    return total_loss(losses, inten, meas, meas_p, pacbed_p, phase, counts, n_total, detach=False)


class BatchStep:
    """One mini-batch step of the engine for one run; ``mode`` is ``run.compile`` as :func:`resolve_compile` gives
    it (an unresolved ``auto`` runs eagerly), ``fallback`` whether a ``cuda_graph`` that cannot be captured goes on
    eagerly (auto's) instead of refusing.

    :meth:`gradients` leaves the (preconditioned, rank-summed) gradients in the parameters' ``.grad`` and returns
    (loss, terms) as device tensors; :meth:`__call__` also steps the optimiser (every solver but L-BFGS, which
    calls :meth:`gradients` from its closure)."""

    def __init__(self, model, losses: LossConfig, optimizer: str, precondition_reg: float, world: int,
                 mode: StepMode = "none", fallback: bool = False):
        check_compile(mode, model.device, optimizer, world)
        self.model, self.losses, self.optimizer, self.mode = model, losses, optimizer, mode
        self.fallback = fallback  # run.compile auto: a graph that cannot be captured leaves the step eager
        self.reg, self.world = precondition_reg, world
        self.opt = None
        self.scan: ScanCurvature | None = None
        self._forward = _forward_loss
        if mode == "compile":
            run_eagerly_under_compile()
            self._forward = torch.compile(_forward_loss, dynamic=False,
                                          mode="reduce-overhead" if model.device.type == "cuda" else "default")
        self._graphs: dict[tuple, _Captured] = {}
        self._scan_static: ScanCurvature | None = None

    def begin_epoch(self, opt, scan: ScanCurvature | None) -> None:
        """The optimiser and the whole-scan curvature of the coming epoch."""
        self.opt, self.scan = opt, scan

    def gradients(self, data, share: torch.Tensor, idx: torch.Tensor, n_total: int, meas, meas_p,
                  scan: ScanCurvature | None = None):
        """Gradients of batch ``idx`` (B,) on the device, of which this rank evaluates ``share``; (loss, terms)."""
        model = self.model
        self.opt.zero_grad(set_to_none=True)
        if self.mode == "compile" and model.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # reduce-overhead's graphs: a new step, outputs are reused
        if len(share):
            loss, parts = self._forward(model, self.losses, share, meas, meas_p, data.pacbed_p, data.counts, n_total)
            parts = {k: v.detach() for k, v in parts.items()}
            loss.backward()
        else:
            loss, parts = torch.zeros((), device=model.device), {}
        if self.world > 1:
            all_reduce_grads(self.opt)
        if self.optimizer == "lsq":
            precondition_gradients(model, idx, n_total, self.losses, self.reg, self.scan if scan is None else scan)
        return loss.detach(), parts

    def __call__(self, data, share: torch.Tensor, idx: torch.Tensor, n_total: int, meas, meas_p):
        """One step: gradients, then the optimiser's update; (loss, terms) as device tensors."""
        loss = None
        if self.mode == "cuda_graph":
            try:
                loss, parts = self._replay(data, share, idx, n_total, meas, meas_p)
            except ConfigError as exc:
                if not self.fallback:
                    raise
                log.warning("run.compile auto: %s; the run goes on with the eager step (none)",
                            str(exc).removeprefix("run.compile: ").removesuffix("; use compile or none"))
                self.mode, self._graphs = "none", {}
        if loss is None:
            loss, parts = self.gradients(data, share, idx, n_total, meas, meas_p)
        self.opt.step()
        return loss, parts

    # ---- CUDA graphs -------------------------------------------------------------------------
    def _key(self, share, n_total: int, meas) -> tuple[tuple, tuple]:
        """(the batch's shape, what else the graph reads): a graph is replayed only where both match."""
        model = self.model
        params = tuple((name, p.requires_grad, p.data_ptr()) for name, p in model.named_parameters())
        support = model.probe_support
        return ((len(share), n_total),
                (meas is not None, self.scan is not None, params, float(model.obj_preblur), float(model.detector_blur),
                 None if support is None else support.data_ptr()))

    def _static_scan(self) -> ScanCurvature | None:
        """The epoch's whole-scan curvature copied into buffers that every graph reads."""
        if self.scan is None:
            return None
        if self._scan_static is None:
            self._scan_static = self.scan.clone()
        else:
            self._scan_static.copy_(self.scan)
        return self._scan_static

    def _replay(self, data, share, idx, n_total: int, meas, meas_p):
        scan = self._static_scan()
        key = self._key(share, n_total, meas)
        graph = self._graphs.get(key)
        if graph is None:
            # graphs of another state (parameter storage, schedule, …) will not be replayed again: free them
            self._graphs = {k: g for k, g in self._graphs.items() if k[1] == key[1]}
            graph = self._graphs[key] = _Captured(self, data, share, idx, n_total, meas, meas_p, scan)
        return graph.replay(share, idx, meas, meas_p)


class _Captured:
    """The gradients of one batch size as a CUDA graph over static buffers (see the module docstring)."""

    def __init__(self, step: BatchStep, data, share, idx, n_total: int, meas, meas_p, scan):
        self.step = step
        self.share, self.idx = share.clone(), idx.clone()
        self.meas = None if meas is None else meas.clone()
        self.meas_p = meas_p.clone()
        params = [p for p in step.model.parameters() if p.requires_grad]

        def run():
            return step.gradients(data, self.share, self.idx, n_total, self.meas, self.meas_p, scan)

        for attempt in range(1, CAPTURE_ATTEMPTS + 1):
            try:
                self.loss, self.parts = self._capture(step, run)
                break
            except RuntimeError as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # CUDA's errors run to 5 lines
                if attempt == CAPTURE_ATTEMPTS:
                    raise ConfigError(f"run.compile: cuda_graph could not capture the batch step in {attempt} tries "
                                      f"({reason}); use compile or none") from exc
                log.warning("run.compile: the CUDA graph capture of the batch step failed (%s); capturing it again "
                            "(try %d of %d)", reason, attempt + 1, CAPTURE_ATTEMPTS)
        self.grads = {p: p.grad for p in params}

    def _capture(self, step: BatchStep, run):
        """Warm up on a side stream (cuFFT plans, the allocator, autograd's own buffers), then capture ``run`` into a
        new graph; (loss, terms) of the graph."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        step.opt.zero_grad(set_to_none=True)  # the backward allocates the gradients inside the graph's pool
        with torch.cuda.graph(self.graph):
            return run()

    def replay(self, share, idx, meas, meas_p):
        """Copy the batch into the static buffers, replay, attach the gradients; (loss, terms) (copies)."""
        self.share.copy_(share)
        self.idx.copy_(idx)
        if self.meas is not None:
            self.meas.copy_(meas)
        self.meas_p.copy_(meas_p)
        self.graph.replay()
        for p, g in self.grads.items():
            p.grad = g
        return self.loss.clone(), {k: v.clone() for k, v in self.parts.items()}
