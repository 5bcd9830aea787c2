"""jaxlin: the TensorFlow MNIST linear-model tutorial as a JAX library, command line and benchmark.

The public API, imported lazily (so that `import jaxlin` and the command line's argument checks do
not import JAX):

    Config                   every setting, validated in one place (`jaxlin.config`)
    load_datasets, Datasets  the tutorial's splits from IDX files (`jaxlin.data.datasets`)
    get_model, Model         init/apply models (`jaxlin.models`)
    fit, FitResult           train a model in the fused loop, in memory (`jaxlin.training.trainer`)
    LoopHooks, Progress      what `fit` reports and asks between chunks (`jaxlin.training.loop`)
    train_and_evaluate       a `jaxlin train` run with its output directory (`jaxlin.runs.train_run`)
    run_sweep, Grid          a `jaxlin sweep` run (`jaxlin.runs.sweep_run`, `jaxlin.training.sweep`)
    evaluate                 test-set metrics of params (`jaxlin.training.evaluate`)
    load_params, save_params the portable params.npz (`jaxlin.runs.params_file`)
    JaxlinError              the base of the errors a user can fix (`jaxlin.errors`)

Training from Python (`fit`, `train_and_evaluate`, `run_sweep`) keeps JAX's persistent compilation cache
on, as the command line does, unless JAXLIN_COMPILE_CACHE=0 or JAX's own cache is configured
(`jaxlin.runtime.compile_cache`, docs/library.md). Examples of extending jaxlin are in examples/.
"""

# No `from __future__ import annotations` and `importlib` under a private name: the package's namespace
# holds the public API, its submodules and private names only (`dir(jaxlin)` lists the API, see `__dir__`).
import importlib as _importlib

_EXPORTS = {
    "Config": "jaxlin.config",
    "load_datasets": "jaxlin.data.datasets",
    "Datasets": "jaxlin.data.datasets",
    "get_model": "jaxlin.models",
    "Model": "jaxlin.models",
    "fit": "jaxlin.training.trainer",
    "FitResult": "jaxlin.training.trainer",
    "LoopHooks": "jaxlin.training.loop",
    "Progress": "jaxlin.training.loop",
    "train_and_evaluate": "jaxlin.runs.train_run",
    "run_sweep": "jaxlin.runs.sweep_run",
    "Grid": "jaxlin.training.sweep",
    "evaluate": "jaxlin.training.evaluate",
    "load_params": "jaxlin.runs.params_file",
    "save_params": "jaxlin.runs.params_file",
    "JaxlinError": "jaxlin.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxlin' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    """The public API (`__all__`), whether or not a name was looked up yet, and nothing else."""
    return list(__all__)
