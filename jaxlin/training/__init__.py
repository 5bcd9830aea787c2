"""Training, as compiled programs and the host loop around them: the update, the fused chunk and
the per-step path (`trainer`), the sweep's vmapped and wide chunks (`sweep`), mixed precision
(`precision`), batch order (`sampler`), when the host wakes up (`schedule`), evaluation (`evaluate`),
the train state (`state`) and the one loop that drives any kind of run (`loop`). Nothing here
writes files: `runs` does."""
