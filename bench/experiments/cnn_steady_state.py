"""The CNN's `jaxlin train` steady-state row alone, as the full plan times it (lengths 10 and 310, 5 rounds), with
PyTorch eager's, TF2's and the fused loop's throughput beside it. From the repo root, with the bench's environment
(TensorFlow, PyTorch): `JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/cnn_steady_state.py [OUT.json]`."""
import dataclasses, json, os, sys
from bench import runner
plan = dataclasses.replace(runner.FULL, cases=[("cnn", 100, 20)], steady_lengths=[("cnn", (10, 310))], steady_repeats=5,
                           sweep=[], num_models=[], device_counts=[], tta_repeats=0, e2e_repeats=0, peak=False)
results = runner.run(plan, os.environ["JAXLIN_DATA_DIR"], ["torch_eager", "tf2_function", "jaxlin_fused"], native_blas=False)
json.dump(results, open(sys.argv[1] if len(sys.argv) > 1 else "cnn-steady.json", "w"), indent=1, default=str)
