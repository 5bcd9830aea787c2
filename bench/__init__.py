"""Benchmark harness: jaxlin's training loop against the TensorFlow reference and peers.

Run `python -m bench` from any directory once jaxlin is installed (results go to ./jaxlin-bench/);
`python -m bench --help` for options.
Each contender runs in its own subprocess (`bench.worker`), so frameworks never share
a process (or a GPU), and a missing framework is reported as skipped.
"""
