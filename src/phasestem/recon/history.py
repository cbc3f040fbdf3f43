"""A reconstruction's history (``Ptychography.history``): what the engine and its rules record, epoch by epoch, on
the model they fit; checkpoints and ``results.h5`` store it, a held-out stop or a divergence rewinds it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RunHistory:
    """``epoch``: completed epochs; ``losses``: one record per epoch (``epoch``, ``loss``, ``seconds``, the terms);
    ``geometry``: per epoch {"epoch", "slice_thickness" (), "tilt" (2,) or (N, 2)}; ``decided``: an 'auto' rule's
    decision by name (e.g. {"obj_shear": True}); ``notes``: why each 'auto' setting is on or off; ``coarse_note``:
    what the coarse start did."""

    epoch: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)
    geometry: list[dict[str, torch.Tensor]] = field(default_factory=list)
    decided: dict[str, bool] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    coarse_note: str = ""

    def record(self, record: dict, slice_thickness: torch.Tensor, tilt: torch.Tensor) -> None:
        """Epoch ``record["epoch"]`` done: its losses and geometry (a rewound run's later geometry replaced)."""
        epoch = self.epoch = int(record["epoch"])
        self.losses.append(record)
        self.geometry = [g for g in self.geometry if int(g["epoch"]) < epoch]
        self.geometry.append({"epoch": torch.tensor(epoch), "slice_thickness": slice_thickness.detach().cpu().clone(),
                              "tilt": tilt.detach().cpu().clone()})

    def rewind(self, epoch: int) -> None:
        """Back to the end of ``epoch`` (a restored state's): the later epochs' records dropped."""
        self.epoch = int(epoch)
        self.losses = [h for h in self.losses if int(h["epoch"]) <= epoch]
        self.geometry = [g for g in self.geometry if int(g["epoch"]) <= epoch]

    def to_checkpoint(self) -> dict:
        """The checkpoint's entries (their names as checkpoints have always had them)."""
        return {"epoch": self.epoch, "loss_history": [dict(h) for h in self.losses],
                "geometry_history": [dict(g) for g in self.geometry], "decided": dict(self.decided),
                "auto_reasons": dict(self.notes), "coarse_note": self.coarse_note}

    @classmethod
    def from_checkpoint(cls, state: dict) -> RunHistory:
        return cls(int(state["epoch"]), [dict(h) for h in state["loss_history"]],
                   [dict(g) for g in state.get("geometry_history", [])],
                   {str(k): bool(v) for k, v in state.get("decided", {}).items()},
                   {str(k): str(v) for k, v in state.get("auto_reasons", {}).items()},
                   str(state.get("coarse_note", "")))
