"""The one base of jaxlin's errors: what a user can fix, reported as one line with its exit code.

Every error a run reports to its user (bad settings, data, downloads, models, checkpoints, the output
directory, images, divergence) derives from `JaxlinError`; the command line prints
`jaxlin: error: <message>` and exits with the error's `exit_code`, and a multi-process run lets every
process know when one of them fails with one (`runtime.distributed.failing_together`).
"""

from __future__ import annotations


class JaxlinError(Exception):
    """A problem the user can fix; `exit_code` is what the command line exits with."""

    exit_code = 2


class ConfigError(JaxlinError, ValueError):
    """A setting that cannot produce a sensible run (also importable as `jaxlin.config.ConfigError`)."""
