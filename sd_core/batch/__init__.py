"""`sd-core batch`: many generations from a JOBS file, on this machine or on a Ray cluster.

Every job is an A1111 request body checked by the server's own code (`checks.py` over `sd_core.server.generate.plan`)
and run by it (`worker.py` over `generate.run`), so a batch image is the image the server would return for that body.
`sources.py` reads JOBS, `naming.py` gives jobs their hash, seed and file names, `manifest.py` records what was made
(the resume record), `runner.py` plans tasks and runs them locally, `ray_runner.py` on Ray (the `ray` extra, imported
nowhere else), `progress.py` prints the progress line, `command.py` has the options and `run_batch`.
"""
