"""run.coarse_start (phasestem.recon.coarse): a thick specimen's first epoch on the centre of the detector.

The coarse model is the same experiment through a smaller window of larger pixels: for an object and probe whose
far field lies inside the crop, its patterns are the full model's patterns cropped (checked against the full
model, and the crop's geometry against the optics); the object goes to the coarse pixels and back unchanged where
it is smooth; the engine runs the coarse epochs as the run's first, says so in the log, marks them in the history
and keeps them out of the divergence references; a run resumed after them is bit-identical to the uninterrupted
one; ``auto`` is on only for multislice models of at least 10 nm, and kept only for a crystal on its zone axis
(otherwise the run is the one without a coarse start, bit for bit).
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from phasestem.dataset import FourDSTEM
from phasestem.physics.optics import angular_sampling_for
from phasestem.recon.callbacks import Callback, Checkpoints
from phasestem.recon.coarse import AUTO_EPOCHS, coarse_model, coarse_plan, coarse_verdict, coarse_window, take_coarse
from phasestem.recon.constraints import Constraints
from phasestem.recon.engine import load_checkpoint, optimize
from phasestem.recon.model import Ptychography
from phasestem.recon.params import RunConfig
from phasestem.recon.report import auto_settings
from phasestem.recon.run_state import COARSE_HISTORY_KEY, RunState
from phasestem.recon.synthetic import synthetic_scan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENERGY, SEMIANGLE = 300e3, 20.0
WINDOW, PIXEL = (64, 64), 0.25  # 1.23 mrad per detector pixel at 300 keV: crop 2·⌈1.2·20/1.23⌉ = 40


def _dataset(patterns: np.ndarray, step: float = 1.0) -> FourDSTEM:
    return FourDSTEM(patterns=patterns, energy=ENERGY, scan_step=(step, step), semiangle=SEMIANGLE,
                     angular_sampling=angular_sampling_for(ENERGY, (PIXEL, PIXEL), patterns.shape[-2:]),
                     aberrations={"C10": 40.0})


def _smooth(shape: tuple[int, int], pixel: float, q_max: float, seed: int, scale: float) -> np.ndarray:
    """A real random field (…, Ny, Nx) whose spectrum stops at ``q_max`` 1/Å, peak-scaled to ``scale``."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(shape[-2], pixel)[:, None]
    kx = np.fft.fftfreq(shape[-1], pixel)[None, :]
    spec = np.fft.fft2(rng.normal(size=shape)) * (np.hypot(ky, kx) < q_max)
    field = np.fft.ifft2(spec).real
    return (field / np.abs(field).max() * scale).astype(np.float32)


def test_the_crop_holds_the_bright_field_disk_and_a_margin():
    dk = angular_sampling_for(ENERGY, (PIXEL, PIXEL), WINDOW)
    assert coarse_window(WINDOW, dk, SEMIANGLE) == (40, 40)
    assert 40 / 2 * dk[0] >= 1.2 * SEMIANGLE > 38 / 2 * dk[0]  # the smallest even crop out to 1.2 α
    assert coarse_window(WINDOW, dk, 30.0) is None  # 1.2 α needs 60 of 64 px: nothing to gain
    assert coarse_window(WINDOW, dk, None) is None and coarse_window(WINDOW, None, SEMIANGLE) is None
    assert coarse_window((96, 64), (dk[0], dk[1]), SEMIANGLE) == (40, 40)


def _model(n_slices: int, dz: float, scan=(6, 6)) -> tuple[Ptychography, FourDSTEM]:
    ds = _dataset(np.zeros((*scan, *WINDOW), np.float32))
    return Ptychography.from_dataset(ds, n_slices=n_slices, slice_thickness=dz), ds


@pytest.mark.parametrize("slices, dz, setting, optimizer, expected", [
    (10, 12.0, "auto", "lsq", AUTO_EPOCHS),  # 12 nm, multislice: on
    (10, 9.0, "auto", "lsq", 0),  # 9 nm: off
    (1, 150.0, "auto", "lsq", 0),  # one slice: off
    (1, 150.0, 2, "adam", 2),  # asked for: on
    (10, 12.0, "auto", "lbfgs", 0),
    (10, 12.0, 0, "lsq", 0),
])
def test_auto_starts_coarse_on_thick_multislice_models_only(slices, dz, setting, optimizer, expected):
    model, ds = _model(slices, dz)
    epochs, window, why = coarse_plan(setting, model, ds, optimizer)
    assert epochs == expected and (window == (40, 40)) == (expected > 0), why
    assert ("off" in why) == (expected == 0), why
    if expected:  # the crop (6 × 6 × 40² float32, held three times) over a memory budget: off, saying so
        epochs, _, why = coarse_plan(setting, model, ds, optimizer, budget=lambda: 3 * 4 * 36 * 40 * 40 - 1)
        assert epochs == 0 and "over the memory budget" in why
    if expected:  # a run of n epochs keeps its last on the whole detector; a run of one has no coarse start
        assert coarse_plan(setting, model, ds, optimizer, run_epochs=2)[:2] == (1, (40, 40))
        assert coarse_plan(setting, model, ds, optimizer, run_epochs=1) == (0, None, "off: the run has one epoch")
    model.history.epoch = 3
    assert coarse_plan(setting, model, ds, optimizer)[0] == 0  # never on a model that has run already


def test_the_coarse_model_follows_the_default_tilt_rule_at_its_own_pixel():
    """15 nm: 1 mrad walks the beam 0.15 Å through it, over half the full model's 0.25 Å pixel (the tilt is
    refined by default) and under half the coarse model's 0.4 Å (held there); a rate the user gave is kept."""
    model, _ = _model(10, 15.0)
    assert model.schedules["tilt"].lr is None and model.schedules["tilt"].resolved_lr("tilt", "lsq") > 0
    assert coarse_model(model, (40, 40)).schedules["tilt"].lr == 0.0
    model.set_learning_rates(tilt=0.05)
    assert coarse_model(model, (40, 40)).schedules["tilt"].lr == 0.05


def test_coarse_patterns_are_the_full_patterns_cropped_for_a_far_field_inside_the_crop():
    """Two slices of a weak, smooth object (spectrum below 0.25/Å, far inside what the 40-px crop holds beyond the
    20 mrad disk) and the nominal probe: the coarse model's patterns equal the central 40 × 40 of the full
    model's, pixel by pixel, to 1e-3 of the brightest; moving one position's probe by 0.5 Å changes them by far
    more. The coarse model's pixel is 64/40 × 0.25 Å and its probe keeps Σ|ψ|² = 1."""
    full, _ = _model(2, 20.0, scan=(3, 3))
    with torch.no_grad():
        full.obj_phase.copy_(torch.from_numpy(_smooth(tuple(full.obj_phase.shape), PIXEL, 0.25, 1, 0.05)))
    coarse = coarse_model(full, (40, 40))
    assert coarse.sampling == pytest.approx((0.4, 0.4))
    assert float(coarse.get_probe().detach().abs().square().sum()) == pytest.approx(1.0, abs=1e-4)
    index = torch.arange(9)
    with torch.no_grad():
        want = torch.fft.fftshift(full.forward(index), dim=(-2, -1))[:, 12:52, 12:52]
        got = torch.fft.fftshift(coarse.forward(index), dim=(-2, -1))
    err = float((got - want).abs().max() / want.max())
    assert err < 1e-3, err
    with torch.no_grad():
        coarse.positions[4] += 0.5
        moved = torch.fft.fftshift(coarse.forward(index), dim=(-2, -1))
    assert float((moved - want).abs().max() / want.max()) > 30 * err


def test_a_smooth_object_goes_to_the_coarse_pixels_and_back_unchanged():
    """Phase and amplitude per slice, the tilt, position refinements and decisions go to the coarse model and
    back; a field smooth on the coarse pixels (below an eighth of their Nyquist) comes back to 2 % of its peak
    over the scanned field (a frame misplaced by a quarter of a coarse pixel, 0.1 Å, is off by 4.5 %), and
    ``model.epoch`` and the history become the coarse model's."""
    full, _ = _model(3, 40.0)
    shape = tuple(full.obj_phase.shape)
    phase = _smooth(shape, PIXEL, 0.15, 2, 1.0)
    with torch.no_grad():
        full.obj_phase.copy_(torch.from_numpy(phase))
        full.obj_amplitude.copy_(torch.from_numpy(1 - np.abs(_smooth(shape, PIXEL, 0.15, 3, 0.2))))
        full.tilt.copy_(torch.tensor([1.5, -2.0]))
    full.history.decided["obj_clamp"] = True
    coarse = coarse_model(full, (40, 40))
    assert torch.equal(coarse.tilt, full.tilt) and coarse.history.decided == {"obj_clamp": True}
    with torch.no_grad():
        coarse.positions[7] += torch.tensor([0.3, -0.2])
        full.obj_phase.zero_()
        full.obj_amplitude.fill_(1.0)
    coarse.history.epoch, coarse.history.losses = 1, [{"epoch": 1, "loss": 0.5}]
    take_coarse(full, coarse)
    oy, ox = full.experiment.origin_px
    field = (slice(None), slice(None), slice(oy, oy + 21), slice(ox, ox + 21))  # the scanned 5 Å
    err = float((full.obj_phase.detach()[field] - torch.from_numpy(phase)[field]).abs().max())
    assert err < 0.02, err
    assert float(full.obj_amplitude.detach()[field].max()) <= 1.0 + 1e-6
    moved = full.positions.detach() - full.initial_positions
    assert torch.allclose(moved[7], torch.tensor([0.3, -0.2]), atol=1e-5) and float(moved[6].abs().max()) < 1e-5
    assert full.epoch == 1 and full.loss_history == [{"epoch": 1, "loss": 0.5, COARSE_HISTORY_KEY: 40.0}]
    assert RunState.new(full).best_loss == math.inf  # the coarse loss is no reference for the full detector


@pytest.fixture(scope="module")
def thick():
    """A 4 × 12 Å = 4.8 nm scan of phasestem's simulator (plumbing only: 64² patterns at 0.25 Å, 20 mrad)."""
    return synthetic_scan(window=WINDOW, sampling=PIXEL, scan_shape=(5, 5), scan_step=1.0, semiangle=SEMIANGLE,
                            c10=40.0, n_slices=4, slice_thickness=12.0, max_phase=0.4, seed=4)


RUN = RunConfig(n_epochs=6, batch_size=10, coarse_start=2, progress=False, lr_decay="cosine", seed=1)


def _fresh(ds) -> Ptychography:
    return Ptychography.from_dataset(ds, n_slices=4, slice_thickness=12.0)


def test_the_coarse_epochs_are_the_runs_first_and_say_so(thick, caplog):
    caplog.set_level("INFO", logger="phasestem.recon")
    model = _fresh(thick)
    losses = list(optimize(model, thick, 6, RUN))
    assert len(losses) == 6 and model.epoch == 6 and [h["epoch"] for h in model.loss_history] == [1, 2, 3, 4, 5, 6]
    assert [COARSE_HISTORY_KEY in h for h in model.loss_history] == [True, True, False, False, False, False]
    assert "coarse start: 2 epoch(s) on the central 40 × 40 of 64 × 64 detector px" in caplog.text
    assert all(math.isfinite(x) for x in losses) and model.loss_history[-1]["loss"] < model.loss_history[2]["loss"]
    model.history.notes.clear()  # only the coarse start's row: what results.h5's provenance/ records of it
    (row,) = auto_settings(model, SimpleNamespace(run=RunConfig(n_epochs=6, coarse_start="auto")))
    assert (row.field, row.value, row.source) == ("run.coarse_start", 2, "YAML")
    assert row.note == "auto: 2 epoch(s) on the central 40 detector px"
    truth = thick.truth["phase"]
    got = model.phase_in_dataset_frame(truth.shape)
    rows = slice(4, 17)
    assert np.corrcoef(got[rows, rows].ravel(), truth[rows, rows].ravel())[0, 1] > 0.8


def test_a_run_resumed_after_its_coarse_epochs_is_bit_identical(thick, tmp_path):
    """The checkpoint after epoch 3 (two coarse epochs and one on the full detector) is kept, the run finishes,
    and a new model resumed from the kept checkpoint for the last 3 epochs ends torch.equal to a run never
    checkpointed, with the same loss history."""
    ref = _fresh(thick)
    list(optimize(ref, thick, 6, RUN))
    ckpt = tmp_path / "checkpoint.pt"
    run = optimize(_fresh(thick), thick, 6, RUN, callbacks=[Checkpoints(ckpt, 3)])
    for _ in range(3):
        next(run)
    kept = ckpt.read_bytes()
    list(run)
    ckpt.write_bytes(kept)
    resumed = _fresh(thick)
    state = load_checkpoint(ckpt, resumed)
    assert resumed.epoch == 3
    list(optimize(resumed, thick, 3, RUN, state=state))
    for name, value in ref.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    keep = [{k: v for k, v in h.items() if k != "seconds"} for h in ref.loss_history]
    assert keep == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.loss_history]


class _FlushDenormal(Callback):
    """Records, after every epoch on the full detector, whether the CPU flushes denormal floats to zero."""

    def __init__(self):
        self.flushed = []

    def on_epoch_end(self, loop) -> None:
        tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32
        self.flushed.append(float(tiny * 2) == 0.0)


def test_the_full_epochs_after_a_coarse_start_flush_denormals_as_every_run_does(thick):
    """The coarse start's own optimize call ends inside the run's; the run's full-detector epochs must still
    flush (without it they ran 30 % slower on the CPU: benchmarks/independent, dev_tilt); the run's end switches
    it off."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    torch.set_flush_denormal(False)
    seen = _FlushDenormal()
    list(optimize(_fresh(thick), thick, 4, RUN, callbacks=[seen]))
    assert seen.flushed == [True, True]  # the 2 epochs after the 2 coarse ones
    assert float(torch.tensor([1e-39], dtype=torch.float32) * 2) > 0  # and off again after the run


def _stack_model(stack: np.ndarray) -> Ptychography:
    model, _ = _model(stack.shape[0], 30.0, scan=(10, 10))
    with torch.no_grad():
        model.obj_phase.copy_(torch.as_tensor(stack[None], dtype=torch.float32))
    return model


def test_auto_keeps_a_coarse_start_for_a_crystal_and_straightens_a_mistilted_one():
    """coarse_verdict on the object a coarse epoch left: straight lattice columns through 6 slices (a crystal on its
    zone axis) keep it; the same columns sheared by 0.3 px per slice (1.5 px over the specimen: a mistilt) keep it
    straightened; independent atoms (no lattice) drop it."""
    shape = _model(6, 30.0, scan=(10, 10))[0].object_shape
    straight, sheared = _lattice_stacks(shape)
    atoms = _smooth((6, *shape), PIXEL, 1.5, seed=5, scale=0.4)
    verdict, why = coarse_verdict(_stack_model(straight))
    assert verdict == "keep" and why.startswith("a crystal on its zone axis"), why
    verdict, why = coarse_verdict(_stack_model(sheared))
    assert verdict == "straighten" and why.startswith("a mistilted crystal"), why
    verdict, why = coarse_verdict(_stack_model(atoms))
    assert verdict == "drop" and why.startswith("not a crystal"), why


def _lattice_stacks(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Lattice columns 1.25 Å apart through 6 slices, straight and sheared by (0.3, −0.1) px per slice."""
    from phasestem.physics.fourier import fourier_shift

    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    lattice = 0.2 * (np.cos(2 * np.pi * yy / 5.0) + np.cos(2 * np.pi * xx / 5.0))
    straight = np.stack([lattice] * 6)
    walk = torch.arange(6, dtype=torch.float32)[:, None] * torch.tensor([0.3, -0.1])
    return straight, fourier_shift(torch.as_tensor(straight, dtype=torch.float32), walk).real.numpy()


@pytest.fixture(scope="module")
def thick12():
    """A 4 × 30 Å = 12 nm random-atom scan (phasestem's simulator: plumbing only), thick enough for ``auto``."""
    return synthetic_scan(window=WINDOW, sampling=PIXEL, scan_shape=(5, 5), scan_step=1.0, semiangle=SEMIANGLE,
                            c10=40.0, n_slices=4, slice_thickness=30.0, max_phase=0.4, seed=4)


def _auto_run(ds, setting) -> tuple[Ptychography, list[float]]:
    model = Ptychography.from_dataset(ds, n_slices=4, slice_thickness=30.0)
    return model, list(optimize(model, ds, 3, RUN.model_copy(update={"coarse_start": setting})))


def test_an_auto_coarse_start_not_kept_leaves_the_run_as_without_one(thick12, caplog):
    """Random atoms are no crystal: the first coarse epoch runs, is not kept (logged), no loss of it is yielded, and
    the run ends torch.equal to the run without a coarse start, with the same 'auto' decisions."""
    caplog.set_level("INFO", logger="phasestem.recon")
    auto, auto_losses = _auto_run(thick12, "auto")
    assert "coarse start: 2 epoch(s) on the central 40 × 40" in caplog.text  # 3 epochs: the last on the full detector
    assert "coarse start (auto): not kept, the run starts on the full detector: not a crystal" in caplog.text
    off, off_losses = _auto_run(thick12, 0)
    assert auto_losses == off_losses and len(auto_losses) == 3
    for name, value in off.state_dict().items():
        assert torch.equal(auto.state_dict()[name], value), name
    assert not any(COARSE_HISTORY_KEY in h for h in auto.loss_history) and auto.epoch == 3
    assert auto.history.decided == off.history.decided and auto.history.notes == off.history.notes
    assert auto.history.coarse_note.startswith("not kept: not a crystal") and off.history.coarse_note == ""
    resumed = Ptychography.from_dataset(thick12, n_slices=4, slice_thickness=30.0)
    resumed.load_checkpoint_state(auto.state_for_checkpoint())  # the reason travels with the checkpoint
    assert resumed.history.coarse_note == auto.history.coarse_note


def test_an_auto_coarse_start_kept_is_the_runs_first_epochs(thick12, monkeypatch, caplog):
    """Where coarse_verdict keeps it (here forced: the simulator's random atoms are no crystal), judged once, after
    the first coarse epoch, the coarse epochs are yielded as the run's first, marked in the history, and counted in
    the run's epochs."""
    import phasestem.recon.coarse as coarse

    calls = []
    monkeypatch.setattr(coarse, "coarse_verdict", lambda model: calls.append(model.epoch) or ("keep", "for the test"))
    caplog.set_level("INFO", logger="phasestem.recon")
    model, losses = _auto_run(thick12, "auto")
    assert calls == [1]
    assert "coarse start (auto): kept: for the test" in caplog.text
    assert model.history.coarse_note == "kept: for the test"
    assert len(losses) == 3 and model.epoch == 3
    assert [COARSE_HISTORY_KEY in h for h in model.loss_history] == [True, True, False]
    assert losses[:2] == [h["loss"] for h in model.loss_history[:2]]


def test_a_mistilted_crystals_coarse_start_is_straightened_on_the_coarse_model(thick12, monkeypatch, caplog):
    """'straighten' moves the coarse model's slice shear into the tilt (transfer_slice_shear on the coarse model,
    after its first epoch), the full model takes that tilt, obj_shear: auto is decided on for the run (the
    straightened slices would measure no walk at its first epoch), and the log and the note say so."""
    import phasestem.recon.coarse as coarse
    import phasestem.recon.shear as shear

    moved = []

    def transfer(model, *args):
        moved.append(tuple(float(v) for v in model.sampling))
        with torch.no_grad():
            model.tilt.add_(torch.tensor([0.5, -0.25], device=model.tilt.device))
        return 0.5, -0.25

    monkeypatch.setattr(coarse, "coarse_verdict", lambda model: ("straighten", "a mistilted crystal (test)"))
    monkeypatch.setattr(shear, "transfer_slice_shear", transfer)
    caplog.set_level("INFO", logger="phasestem.recon")
    run = RUN.model_copy(update={"coarse_start": "auto"})
    model = Ptychography.from_dataset(thick12, n_slices=4, slice_thickness=30.0)
    model.schedules["tilt"].lr = 0.0  # the tilt moves only by the transfer
    epochs = optimize(model, thick12, 3, run)
    losses = [next(epochs)]  # the first coarse epoch, judged and straightened
    assert len(moved) == 1 and moved[0][0] == pytest.approx(float(model.sampling[0]) * 64 / 40)  # the coarse pixel
    assert model.tilt.detach().cpu().tolist() == pytest.approx([0.5, -0.25])
    losses += list(epochs)
    note = ("a mistilted crystal (test); its slices straightened, the tilt +0.50, -0.25 mrad; "
            "constraints.obj_shear auto: on")
    assert f"coarse start (auto): kept: {note}" in caplog.text and model.history.coarse_note == f"kept: {note}"
    assert model.history.decided["obj_shear"] is True
    assert model.history.notes["obj_shear"] == "on: the coarse start found a mistilted crystal (test) (epoch 1)"
    assert "constraints.obj_shear auto (epoch 2)" not in caplog.text  # decided already, not measured again
    assert len(losses) == 3
    (row,) = [r for r in auto_settings(model, SimpleNamespace(run=run, constraints=Constraints()))
              if r.field == "run.coarse_start"]
    assert row.value == 2 and row.note == f"auto: 2 epoch(s) on the central 40 detector px; kept: {note}"
