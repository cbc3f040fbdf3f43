"""The physics core shared by simulation, reconstruction and the learned route's physics checks.

* :mod:`.fourier` — unitary FFTs, shift ramps, Fourier shifts (imports nothing of phasestem's);
* :mod:`.multislice` — propagator (Δz, tilt), probe windows and patch gather, mixed-state multislice;
* :mod:`.operator` — :class:`~.operator.ForwardModel`, the forward operator, and transmission functions;
  :mod:`.fused` — the same operator as one autograd node with a hand-written backward;
* :mod:`.noise` — the one Poisson model and the one meaning of dose;
* :mod:`.experiment` — :class:`~.experiment.Experiment`: probe, object frame, positions, forward model and
  detector response of one scan, built from a dataset; :mod:`.upsampling` — object pixels finer than the
  detector's where the probe's band needs them.

Import from the submodules (``from phasestem.physics.operator import ForwardModel``); this package file
imports nothing, so that :mod:`phasestem.physics.optics` can use :mod:`.fourier` without a circle.
"""
