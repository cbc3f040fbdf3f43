"""The ``losses`` section of a reconstruction's parameter file: which loss terms run, at which weights (the terms
themselves: :mod:`phasestem.recon.losses`)."""
from __future__ import annotations

import math
from typing import ClassVar

from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from ...base.configfile import FiniteModel
from ..losses import BUILTIN, DEFAULT_WEIGHTS, TERMS, LossTerm


class LossConfig(FiniteModel):
    """Loss terms: exactly the terms named here run, at their weights (a term left out is off); with none named,
    the data choose: detector counts (a dose in the file, integer patterns, or whole numbers only) get gaussian 0.5 +
    poisson 0.5, anything else the Gaussian term on amplitudes alone at weight 1. The run log names the terms that
    ran and why. A term added with :func:`phasestem.recon.losses.register_term` is named here by its name and
    weight like the four below (no field to add); a name no term has is refused, naming the registered ones.
    In a program: ``LossConfig(poisson=1.0)`` is the Poisson term alone; :meth:`weight` is what a term runs at."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, frozen=True)
    #: floor inside the power / logarithm of the terms
    eps: ClassVar[float] = 1e-8
    _weights: dict[str, float] = PrivateAttr(default_factory=dict)  # every registered term's, resolved
    _terms: dict[str, LossTerm] = PrivateAttr(default_factory=dict)  # the active ones (they travel with it)

    gaussian: float | None = Field(None, ge=0, description="weight of the Gaussian term on intensity^power; left out "
                                   "(null): 0 when another term is named; when none is, 1 (0.5 on counted data)")
    poisson: float | None = Field(None, ge=0, description="weight of the Poisson deviance (negative log-likelihood "
                                  "minus its value at the data); for counted data gaussian 0.5 + poisson 0.5 (robust "
                                  "to model mismatch and right at low counts: what counted data naming no term get); "
                                  "left out (null): 0")
    pacbed: float | None = Field(None, ge=0, description="weight of the PACBED consistency term; left out (null): 0")
    sparsity: float | None = Field(None, ge=0, description="weight of the L1 sparsity of the object phase; left out "
                                   "(null): 0")
    power: float = Field(0.5, gt=0, le=1, description="exponent p of the Gaussian and PACBED terms (0.5 = "
                         "amplitudes)")

    @model_validator(mode="after")
    def _resolve_weights(self):
        for name, weight in (self.model_extra or {}).items():
            if name not in TERMS:
                raise ValueError(f"losses.{name}: no such loss term (registered: {', '.join(TERMS)})")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise ValueError(f"losses.{name}: a weight must be a finite number, got {weight!r}")
            if weight < 0:
                raise ValueError(f"losses.{name}: a weight must be ≥ 0, got {weight}")
        self._weights = {n: float((self.given or DEFAULT_WEIGHTS).get(n, 0.0)) for n in TERMS}
        self._terms = {n: TERMS[n] for n, w in self._weights.items() if w > 0}
        if not any(t.data_term for t in self.terms.values()):
            raise ValueError("losses: no data term; give gaussian or poisson a weight > 0 (pacbed and sparsity only "
                             "add to one)")
        return self

    @property
    def given(self) -> dict[str, float]:
        """The weights named, by term."""
        values = {**{n: getattr(self, n) for n in BUILTIN}, **(self.model_extra or {})}
        return {n: float(w) for n, w in values.items() if w is not None}

    @property
    def named(self) -> bool:
        """Whether any term was named (none: :data:`~phasestem.recon.losses.DEFAULT_WEIGHTS`, or the data's)."""
        return bool(self.given)

    def weight(self, name: str) -> float:
        """The weight ``name`` runs at: as named, 0 when another term is, the default's when none is."""
        return self._weights.get(name, 0.0)

    @property
    def terms(self) -> dict[str, LossTerm]:
        """The terms that run, in the table's order (the same on every process of a run)."""
        return self._terms

    def active(self) -> list[str]:
        """The names of :attr:`terms`."""
        return list(self.terms)

    def needs_phase(self) -> bool:
        return any(t.needs_phase for t in self.terms.values())

    def describe(self) -> str:
        """The terms that run with their weights, e.g. ``gaussian 0.5, poisson 0.5``."""
        return ", ".join(f"{n} {self.weight(n):g}" for n in self.active())
