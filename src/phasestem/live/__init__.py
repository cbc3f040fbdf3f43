"""Live ptychography at the microscope: ``phasestem live`` reads a detector's stream through LiberTEM-live,
records it, shows virtual images, a direct phase and the AD phase growing while the scan runs, and ends with
the reconstruction ``phasestem reconstruct`` would give of the recording.

Modules, each with one job:

- :mod:`.merlin`    the Quantum Detectors Merlin stream (``libertem-live``, ``libertem-qd-mpx``): arm, frames, close
- :mod:`.recording` the stream written to the run folder as it arrives (phasestem's own 4D-STEM HDF5)
- :mod:`.receiver`  the thread that takes the frames off the stream into memory and the recording
- :mod:`.views`     virtual bright field, annular dark field and centre of mass per frame; the iCoM phase
- :mod:`.feed`      the engine callback that puts arrived frames into the fit, and the page's snapshots
- :mod:`.session`   one live run from arming to ``results.h5``

The extra ``phasestem[live]`` installs the stream's libraries.
"""
