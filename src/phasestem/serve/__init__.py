"""``phasestem serve``: the browser workspace over the same commands.

Browse the files and 4D-STEM data under a root folder, calibrate, queue ``phasestem`` commands as jobs in run
folders (:mod:`.jobs`), watch a reconstruction converge live and compare runs. Token and path confinement:
:mod:`.security`; the application: :mod:`.app`; the pages: ``static/``. Needs the ``serve`` extra
(``pip install 'phasestem[serve]'``: Starlette and uvicorn).
"""
