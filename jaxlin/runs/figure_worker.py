"""A process that draws a run's figures, started at launch so that matplotlib is ready at the end.

Importing matplotlib takes about half a second and drawing the five figures about as long
again; a run used to pay both after training. `FigureWorker.start()` runs
`python -m jaxlin.runs.figure_worker` as soon as `jaxlin train` knows it will draw figures: it imports
matplotlib while the main process imports JAX, loads the data, compiles and trains, then
waits. At the end the main process hands it the inputs (an .npz in the run's staging
directory and a JSON line) and writes params and metrics while it draws. The figures land
in the staging directory, so the outputs still appear together, `metrics.json` last.

The worker ignores SIGINT and SIGTERM (the run decides when to stop) and exits when its
standard input closes, so it never outlives the run. If it is gone or fails, the run
draws the figures itself: `draw` returns False.

This module imports neither JAX nor NumPy nor matplotlib at import time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

INPUTS_FILE = ".figure-inputs.npz"
OPTIONAL_ARRAYS = ("images", "weights")  # None when their figures do not apply (see `outputs.figure_inputs`)


class FigureWorker:
    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.seconds = 0.0  # how long the run waited for its figures

    @classmethod
    def start(cls) -> FigureWorker | None:
        try:
            process = subprocess.Popen([sys.executable, "-m", "jaxlin.runs.figure_worker"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return None
        return cls(process)

    def draw(self, directory: Path, inputs: dict) -> bool:
        """Has the worker draw the figures into `directory`; False if it could not (the caller draws)."""
        import numpy as np

        tick = time.perf_counter()
        arrays = {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)}
        request = {k: v for k, v in inputs.items() if k not in arrays}
        request["directory"] = str(directory)
        path = Path(directory) / INPUTS_FILE
        try:
            np.savez(path, **arrays)
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = json.loads(self.process.stdout.readline() or "{}")
        except (OSError, ValueError):
            reply = {}
        finally:
            path.unlink(missing_ok=True)
            self.seconds += time.perf_counter() - tick
        return reply.get("ok") is True

    def close(self) -> None:
        """Tells the worker to go (it exits on its own; waiting for it would only add its exit time)."""
        try:
            self.process.stdin.close()
        except OSError:
            pass


# The figures drawn by a forked copy of the worker while the worker draws the others: about half the time
# each (the confusion matrix is the slowest), on a second core that the waiting run leaves free.
FORKED_FIGURES = ("example_images.png", "misclassified.png", "learning_curve.png")
OWN_FIGURES = ("confusion_matrix.png", "weights.png")


def draw_in_two(draw, *args, **kwargs) -> None:
    """`draw(*args, only=..., **kwargs)` for `FORKED_FIGURES` in a forked child and `OWN_FIGURES` here, at
    once; raises if either failed (the run then draws them itself, and says why). Where there is no
    fork, one after the other."""
    if not hasattr(os, "fork"):
        draw(*args, **kwargs)
        return
    pid = os.fork()
    if pid == 0:  # the child: draws its figures, says by its exit status whether it could
        code = 1
        try:
            draw(*args, only=FORKED_FIGURES, **kwargs)
            code = 0
        finally:
            os._exit(code)
    try:
        draw(*args, only=OWN_FIGURES, **kwargs)
    finally:
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"the forked figure drawer failed (status {status})")


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    import numpy as np

    from jaxlin.runs import plots  # the slow import, done while the run starts

    for line in sys.stdin:
        request = json.loads(line)
        directory = request.pop("directory")
        # A figure that does not apply has None for its array: None travels in the JSON, an array in the .npz.
        for name in OPTIONAL_ARRAYS:
            request.pop(name, None)
        try:
            with np.load(os.path.join(directory, INPUTS_FILE), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            optional = {name: arrays.pop(name, None) for name in OPTIONAL_ARRAYS}
            draw_in_two(plots.draw_run_figures, directory, **optional, **arrays, **request)
            reply = {"ok": True}
        except Exception as err:  # reported: the run then draws the figures itself
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    os._exit(0)  # nothing to clean up: skip the interpreter's teardown of matplotlib


if __name__ == "__main__":
    sys.exit(main())
