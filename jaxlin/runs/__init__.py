"""Runs: the jobs behind the commands and what they leave on disk.

One session (`session`) checks the output directory, resumes, locks, drives the training loop and
publishes, for every run kind (`train_run`, `sweep_run`). `rundir` owns the output directory and
its names, `checkpoints` the orbax train-state checkpoints (`checkpoint_logs` keeps the libraries'
logs off the terminal), `params_file` the portable params.npz, `outputs`, `plots` and
`figure_worker` the figures and versions a finished run writes, `tensorboard` the event files of
`--tensorboard`; `evaluation`, `predict` and `compare` are the jobs of `jaxlin evaluate`, `jaxlin
predict` and `jaxlin compare`.
"""
