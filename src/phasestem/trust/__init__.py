"""Trust in the learned route, earned on the CPU (issue 81): the verdict's calibration by simulation at the run's
own geometry and dose (:mod:`phasestem.trust.calibration`). A front module: it composes the simulator, AD's
recorded recipe (:mod:`phasestem.learn.hybrid`) and a restorer; the scoring itself is
:mod:`phasestem.learn.verdict`."""
