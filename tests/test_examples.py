"""Every file in examples/ runs as a script with a tiny step count, from a directory of its own.

The list is the folder's (a glob), so an example added there is tested without a line here; one that
imports Flax or Equinox is skipped when that library is missing.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
JAXLIN = str(Path(sys.executable).with_name("jaxlin"))
# What an example prints when it worked: these, or (any other) its accuracy.
MARKERS = {"time_a_model.py": r"plain_jax_model:TinyMLP, batch 100, adam: [\d,.]+ us/step",
           "plain_jax_model.py": r"plain_jax_model:TinyMLP: test accuracy \d+\.\d\d% after 3 steps",
           "custom_optimizer.py": r"warm-up cosine SGD .*test accuracy \d+\.\d\d% after 3 steps",
           "arrays_dataset.py": r"train 2500, validation 500, test 1000; .*test accuracy \d+\.\d\d% after 3 steps"}
ACCURACY = r"(?i)accuracy"
OPTIONAL = ("flax", "equinox")


def _needs(path: Path) -> list[str]:
    """The optional libraries an example imports that are not installed here."""
    text = path.read_text()
    return [name for name in OPTIONAL if re.search(rf"^\s*(import|from) {name}\b", text, re.MULTILINE)
            and importlib.util.find_spec(name) is None]


def _env(data_dir: Path, **extra) -> dict:
    return {**os.environ, "JAXLIN_DATA_DIR": str(data_dir), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def test_the_examples_folder_has_the_examples_the_readme_lists():
    listed = set(re.findall(r"\]\((\w+\.py)\)", (EXAMPLES / "README.md").read_text()))
    mine = {"plain_jax_model.py", "custom_optimizer.py", "arrays_dataset.py", "time_a_model.py"}
    assert mine <= {p.name for p in EXAMPLES.glob("*.py")} and mine <= listed


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_an_example_runs_in_a_few_steps(example, tiny_data_dir, tmp_path):
    missing = _needs(example)
    if missing:
        pytest.skip(f"{example.name} needs {', '.join(missing)}")
    done = subprocess.run([sys.executable, str(example), "--steps", "3"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=_env(tiny_data_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(MARKERS.get(example.name, ACCURACY), done.stdout), done.stdout


@pytest.mark.slow
def test_the_example_model_and_optimizer_from_the_command_line(tiny_data_dir, tmp_path):
    """`--model plain_jax_model:TinyMLP --optimizer custom_optimizer:make`, the modules found on PYTHONPATH."""
    done = subprocess.run([JAXLIN, "train", "--model", "plain_jax_model:TinyMLP", "--optimizer",
                           "custom_optimizer:make", "--learning-rate", "0.003", "--num-steps", "3", "--eval-every",
                           "3", "--output-dir", str(tmp_path / "run"), "--no-progress", "--no-figures"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=_env(tiny_data_dir, PYTHONPATH=str(EXAMPLES)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "optimizer custom_optimizer:make" in done.stdout and "(after 3 steps)" in done.stdout, done.stdout
    assert (tmp_path / "run" / "params.npz").is_file()
