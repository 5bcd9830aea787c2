"""The train job in-process: evaluation steps, resumed records, what metrics.json records."""

import json

from jaxlin.config import Config
from jaxlin.run import train_and_evaluate


def _config(tmp_path, data_dir, **changes) -> Config:
    return Config(data_dir=str(data_dir), output_dir=str(tmp_path / "run"), num_steps=40, eval_every=20,
                  batch_size=50).replace(**changes)


def test_no_evaluation_steps_still_gives_final_metrics(tiny_data_dir, tmp_path):
    lines = []
    metrics = train_and_evaluate(_config(tmp_path, tiny_data_dir), progress=False, log=lines.append, eval_steps=[])
    assert metrics["evaluations"] == [] and metrics["final_test_accuracy"] > 0.9
    assert not any("before training" in line for line in lines)
    assert any(line.startswith("Accuracy on test-set:") and "(after 40 steps)" in line for line in lines)


def test_evaluations_that_do_not_start_at_zero_are_not_called_before_training(tiny_data_dir, tmp_path):
    lines = []
    metrics = train_and_evaluate(_config(tmp_path, tiny_data_dir), progress=False, log=lines.append,
                                 eval_steps=[10, 40])
    assert [e["step"] for e in metrics["evaluations"]] == [10, 40]
    assert not any("before training" in line for line in lines)


def test_a_resume_measures_an_evaluation_whose_record_was_lost(tiny_data_dir, tmp_path):
    config = _config(tmp_path, tiny_data_dir, checkpoint_every=20)
    first = train_and_evaluate(config, progress=False, log=lambda line: None)
    records_path = tmp_path / "run" / "metrics.jsonl"
    # As if killed after the checkpoint at step 40 was written but before its record was.
    lines = records_path.read_text().splitlines()
    records_path.write_text("\n".join(lines[:-1]) + '\n{"step": 40, "test_acc')
    (tmp_path / "run" / "metrics.json").unlink()
    again = train_and_evaluate(config, progress=False, log=lambda line: None, mode="resume", explicit=set())
    assert again["resumed_from_step"] == 40
    strip = lambda records: [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in records]
    assert strip(again["evaluations"]) == strip(first["evaluations"])
    assert [json.loads(line)["step"] for line in records_path.read_text().splitlines()] == [0, 20, 40]
