"""Runs: the jobs behind the commands and what they leave on disk. One session (`session`) checks the
output directory, resumes, locks, drives the training loop and publishes, for every run kind
(`train_run`, `sweep_run`); `rundir` owns the output directory, `checkpoints` the orbax train-state
checkpoints, `params_file` the portable params.npz, `plots` and `figure_worker` the figures."""
