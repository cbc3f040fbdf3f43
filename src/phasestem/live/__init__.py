"""Live ptychography at the microscope: ``phasestem live`` reads a detector's stream, records it, shows virtual
images, a direct phase and the AD phase growing while the scan runs, and ends with the reconstruction
``phasestem reconstruct`` would give of the recording. Nothing the detector sent is lost, whenever the scan ends.

Modules, each with one job:

- :mod:`.merlin`    the Quantum Detectors Merlin stream (its TCP data port): arm, whole frames as they arrive, close
- :mod:`.recording` the stream written to the run folder as it arrives (phasestem's own 4D-STEM HDF5)
- :mod:`.receiver`  the thread that takes the frames off the stream into memory and the recording; the drain on a
                    stop; rate, lag and the stall alarm from the frames' own clock
- :mod:`.views`     virtual bright field, annular dark field and centre of mass per frame; the iCoM phase
- :mod:`.feed`      the engine callback that puts arrived frames into the fit, counts its epochs, and the page's
                    snapshots
- :mod:`.replay`    a rehearsal: a ``.mib`` replayed by LiberTEM-live's simulator
- :mod:`.session`   one live run from arming to ``results.h5``

The extra ``phasestem[live]`` installs LiberTEM-live, whose simulator a rehearsal (``--replay``) runs.
"""
