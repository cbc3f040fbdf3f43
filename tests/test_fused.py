"""The fused forward operator (one autograd node, hand-written backward) against autograd
through the composed physics steps, and its window bookkeeping."""
import os
import subprocess
import sys

import pytest
import torch

from phasestem.physics import fused as fused_op
from phasestem.physics.multislice import PolarTransmission, WindowIndex, gather_patches
from phasestem.physics.operator import ForwardModel, farfield_intensity

F64 = torch.float64
C128 = torch.complex128


def _problem(K, M, S, per_position_tilt, wrap, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = (16, 12)
    sampling = (0.3, 0.25)
    Ny, Nx = 30, 28
    obj = torch.polar(1 + 0.1 * torch.rand(K, S, Ny, Nx, dtype=F64, generator=g),
                      torch.randn(K, S, Ny, Nx, dtype=F64, generator=g))
    probe = torch.randn(M, *n, dtype=C128, generator=g)
    B = 5
    if wrap:  # centres near the object's corner: windows continue on the other side
        pos = torch.rand(B, 2, dtype=F64, generator=g) * torch.tensor([4 * sampling[0], 4 * sampling[1]], dtype=F64)
    else:
        pos = (torch.tensor([9.0, 7.0], dtype=F64) + 6 * torch.rand(B, 2, dtype=F64, generator=g)) * torch.tensor(
            sampling, dtype=F64)
    tilt = torch.randn(B, 2, dtype=F64, generator=g) if per_position_tilt else torch.randn(2, dtype=F64, generator=g)
    weights = torch.rand(K, dtype=F64, generator=g) + 0.1 if K > 1 else None
    return ForwardModel(n, sampling, 200e3, centred=False), obj, probe, pos, tilt, weights


@pytest.mark.parametrize("K,M,S,per_tilt,pos_grad,wrap", [
    (1, 1, 1, False, False, False),
    (1, 1, 1, False, False, True),
    (2, 3, 3, False, False, False),
    (2, 3, 3, True, True, False),
    (1, 2, 4, True, False, True),
    (3, 1, 2, False, True, True),
])
@pytest.mark.parametrize("chunk_bytes", [1 << 30, 1])  # whole batch at once / one position per chunk
def test_fused_operator_equals_autograd_through_the_composed_steps(K, M, S, per_tilt, pos_grad, wrap, chunk_bytes,
                                                                   monkeypatch):
    monkeypatch.setattr(fused_op, "CPU_CHUNK_BYTES", chunk_bytes)
    fm, obj, probe, pos, tilt, weights = _problem(K, M, S, per_tilt, wrap)
    dz = torch.tensor(7.0, dtype=F64)
    leaves = [obj, probe] + ([dz, tilt] if S > 1 else [])
    leaves += ([weights] if weights is not None else []) + ([pos] if pos_grad else [])
    for t in leaves:
        t.requires_grad_(True)
    fused = fm(obj, probe, pos, dz, tilt, weights)
    composed = farfield_intensity(fm.exit_waves(obj, probe, pos, dz, tilt), weights)
    assert fused.grad_fn is not None and "Fused" in type(fused.grad_fn).__name__
    torch.testing.assert_close(fused, composed, rtol=1e-12, atol=1e-12 * composed.abs().max().item())
    weight = torch.rand(fused.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad((fused * weight).sum(), leaves)
    want = torch.autograd.grad((composed * weight).sum(), leaves)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * b.abs().max().item())


@pytest.mark.parametrize("K,M,S,per_tilt,wrap", [
    (1, 1, 1, False, False),
    (2, 3, 3, True, False),
    (1, 2, 4, False, True),
    (3, 1, 2, True, True),
])
@pytest.mark.parametrize("chunk_bytes", [1 << 30, 1])
@pytest.mark.parametrize("learn", ["both", "phase", "amplitude"])
def test_amplitude_and_phase_made_complex_on_the_windows_equal_the_whole_object_polar(K, M, S, per_tilt, wrap,
                                                                                     chunk_bytes, learn, monkeypatch):
    """The object as amplitude and phase (transmission made on the windows, gradients from the windows) gives the
    intensities and gradients of autograd through a·cos φ + i·a·sin φ of the whole object, in both window paths
    (slices inside the object; the periodic index where windows wrap) and both backward forms (held per chunk / per
    slice). At zero amplitude the derivative e^{iφ} is kept (autograd's ``torch.polar`` gives 0 there, through sgn)."""
    monkeypatch.setattr(fused_op, "CPU_CHUNK_BYTES", chunk_bytes)
    fm, obj, probe, pos, tilt, weights = _problem(K, M, S, per_tilt, wrap)
    amp, phase = obj.abs().clone(), obj.angle().clone()
    amp[..., 3:5, 4:6] = 0.0  # a pixel of zero amplitude still gets its amplitude gradient
    dz = torch.tensor(7.0, dtype=F64)
    wanted = {"both": [amp, phase], "phase": [phase], "amplitude": [amp]}[learn]
    leaves = [*wanted, probe] + ([dz, tilt] if S > 1 else []) + ([weights] if weights is not None else [])
    for t in leaves:
        t.requires_grad_(True)
    got_i = fm(PolarTransmission(amp, phase), probe, pos, dz, tilt, weights)
    want_i = fm(torch.complex(amp * torch.cos(phase), amp * torch.sin(phase)), probe, pos, dz, tilt, weights)
    torch.testing.assert_close(got_i, want_i, rtol=1e-12, atol=1e-12 * want_i.abs().max().item())
    weight = torch.rand(got_i.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad((got_i * weight).sum(), leaves)
    want = torch.autograd.grad((want_i * weight).sum(), leaves)
    for a, b in zip(got, want, strict=True):
        assert float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * b.abs().max().item())
    exit_polar = fm.exit_waves(PolarTransmission(amp[0], phase[0]), probe, pos, dz, tilt)  # (S, Ny, Nx) form
    torch.testing.assert_close(exit_polar, fm.exit_waves(torch.polar(amp[0], phase[0]), probe, pos, dz, tilt))


def test_fused_gradcheck_with_frozen_positions_mode_weights_and_per_position_tilt(monkeypatch):
    monkeypatch.setattr(fused_op, "CPU_CHUNK_BYTES", 2 * 2 * 6 * 6 * 16)  # two positions per chunk
    fm = ForwardModel((6, 6), (0.4, 0.4), 200e3)
    g = torch.Generator().manual_seed(1)
    obj = (torch.randn(2, 2, 11, 11, dtype=C128, generator=g) * 0.2 + 1).requires_grad_()
    probe = torch.randn(2, 6, 6, dtype=C128, generator=g).requires_grad_()
    positions = torch.tensor([[1.13, 1.32], [2.07, 0.61], [0.2, 3.9]], dtype=F64)  # frozen: separable ramps path
    tilt = torch.randn(3, 2, dtype=F64, generator=g).requires_grad_()
    dz = torch.tensor(3.0, dtype=F64, requires_grad=True)
    weights = torch.tensor([0.6, 0.4], dtype=F64, requires_grad=True)

    def f(o, p, t, d, w):
        return fm(o, p, positions, dz=d, tilt=t, object_weights=w)

    assert torch.autograd.gradcheck(f, (obj, probe, tilt, dz, weights), eps=1e-6, atol=1e-6, fast_mode=True)


def test_a_retained_graph_gives_the_same_gradients_twice():
    fm, obj, probe, pos, tilt, weights = _problem(2, 2, 2, False, False)
    obj.requires_grad_(True)
    probe.requires_grad_(True)
    out = fm(obj, probe, pos, 5.0, tilt, weights).square().sum()
    first = torch.autograd.grad(out, [obj, probe], retain_graph=True)
    second = torch.autograd.grad(out, [obj, probe])
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_window_index_slice_and_flat_paths_agree():
    obj = torch.randn(2, 3, 20, 18, dtype=torch.complex64)
    corners = torch.tensor([[0, 0], [4, 7], [8, 6]])
    inside = WindowIndex(corners, (12, 11), (20, 18))
    assert inside.slices is not None
    flat = WindowIndex(corners, (12, 11), (20, 18))
    flat.slices = None  # force the index path on the same windows
    iy = (corners[:, 0, None] + torch.arange(12)) % 20
    ix = (corners[:, 1, None] + torch.arange(11)) % 18
    flat.flat, flat.n = (iy[:, :, None] * 18 + ix[:, None, :]).reshape(-1), 3
    a, b = inside.gather(obj), flat.gather(obj)
    assert a.shape == (3, 2, 3, 12, 11)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1], obj[..., 4:16, 7:18])
    for where in (inside, flat):  # the window axis elsewhere: (3, B, 2, …), on CPU each leading plane contiguous
        moved = where.gather(obj.transpose(0, 1), dim=1)
        assert moved.shape == (3, 3, 2, 12, 11) and (where is flat or moved[2].is_contiguous())
        torch.testing.assert_close(moved, a.permute(2, 0, 1, 3, 4), rtol=0, atol=0)
    ta, tb = torch.zeros_like(obj), torch.zeros_like(obj)
    inside.add_into(ta, a)
    flat.add_into(tb, a)
    torch.testing.assert_close(ta, tb)
    count = torch.zeros(20, 18)  # how many windows cover each pixel, counted by hand
    for y, x in corners.tolist():
        count[y : y + 12, x : x + 11] += 1
    assert count.max() == 3
    torch.testing.assert_close(ta, obj * count)


def test_windows_beyond_the_object_wrap_periodically():
    obj = torch.arange(30 * 28, dtype=torch.float32).reshape(30, 28)
    where = WindowIndex(torch.tensor([[-3, 25]]), (6, 5), (30, 28))
    assert where.slices is None
    rows = [(-3 + i) % 30 for i in range(6)]
    cols = [(25 + j) % 28 for j in range(5)]
    torch.testing.assert_close(where.gather(obj)[0], obj[rows][:, cols])
    torch.testing.assert_close(gather_patches(obj, torch.tensor([[-3, 25]]), (6, 5))[0], obj[rows][:, cols])


def test_allocator_setting_is_applied_once_and_can_be_switched_off():
    code = ("from phasestem.base.runtime import retain_freed_memory as r; a = r(); b = r(); "
            "print(a, b)")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = on.stdout.split()
    assert first == second  # idempotent
    if sys.platform.startswith("linux"):
        assert first == "True"
    env = dict(os.environ, PHASESTEM_KEEP_FREED_MEMORY="0")
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert off.stdout.split() == ["False", "False"]
