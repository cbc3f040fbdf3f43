"""The engine's own SGD and Adam (``recon.optimizers``): torch's steps and state layout, without torch.optim."""
from __future__ import annotations

import pytest
import torch

from phasestem.recon.optimizers import SGD, Adam


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 7, generator=g, requires_grad=True),
            torch.randn(3, 4, generator=g, dtype=torch.complex64, requires_grad=True)]


def _steps(opt, params, grads, lrs):
    for g_list, lr in zip(grads, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr * (2.0 if group.get("name") == "b" else 1.0)
        for p, g in zip(params, g_list, strict=True):
            p.grad = g.clone()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _grads(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(5, 7, generator=g), torch.randn(3, 4, generator=g, dtype=torch.complex64)]
            for _ in range(n)]


MAKERS = {
    "adam": (lambda groups: Adam(groups), lambda groups: torch.optim.Adam(groups)),
    "sgd": (lambda groups: SGD(groups), lambda groups: torch.optim.SGD(groups, lr=1e-3)),
    "sgd-momentum": (lambda groups: SGD(groups, momentum=0.9), lambda groups: torch.optim.SGD(groups, lr=1e-3,
                                                                                                momentum=0.9)),
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_steps_are_torchs_bit_for_bit_with_rates_changed_between_steps(kind):
    ours_make, torch_make = MAKERS[kind]
    ours, theirs = _params(0), _params(0)
    grads, lrs = _grads(6, 1), [0.01, 0.03, 0.02, 0.005, 0.05, 0.01]
    _steps(ours_make([{"params": [ours[0]], "name": "a"}, {"params": [ours[1]], "name": "b"}]), ours, grads, lrs)
    _steps(torch_make([{"params": [theirs[0]], "name": "a"}, {"params": [theirs[1]], "name": "b"}]), theirs, grads,
           lrs)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], _params(0)[0])  # they moved


@pytest.mark.parametrize("kind", list(MAKERS))
def test_state_dicts_of_torch_and_ours_go_on_in_ours(kind):
    """A checkpoint's optimiser state written by torch's optimiser (phasestem before these) goes on in ours, and ours
    in ours, taking the uninterrupted run's steps."""
    ours_make, torch_make = MAKERS[kind]
    grads, lrs = _grads(6, 2), [0.01] * 6
    ref = _params(3)
    _steps(torch_make([{"params": ref}]), ref, grads, lrs)
    for first in (torch_make, ours_make):
        p = _params(3)
        opt = first([{"params": p}])
        _steps(opt, p, grads[:3], lrs[:3])
        saved = opt.state_dict()
        q = [t.detach().clone().requires_grad_(True) for t in p]
        resumed = ours_make([{"params": q}])
        resumed.load_state_dict(saved)
        _steps(resumed, q, grads[3:], lrs[3:])
        for a, b in zip(q, ref, strict=True):
            assert torch.equal(a, b)


def test_a_state_for_other_parameters_is_refused():
    p = _params(4)
    opt = Adam([{"params": p}])
    _steps(opt, p, _grads(1, 5), [0.01])
    with pytest.raises(ValueError, match="other parameter groups"):
        Adam([{"params": p[:1]}, {"params": p[1:]}]).load_state_dict(opt.state_dict())
    other = [torch.zeros(2, 2, requires_grad=True), torch.zeros(3, 4, dtype=torch.complex64, requires_grad=True)]
    with pytest.raises(ValueError, match=r"exp_avg has shape \(5, 7\), the parameter \(2, 2\)"):
        Adam([{"params": other}]).load_state_dict(opt.state_dict())
