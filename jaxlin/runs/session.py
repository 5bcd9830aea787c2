"""One session of any run kind: check the directory, resume, lock, drive the loop, publish.

`jaxlin train` (`train_run.TrainRun`) and `jaxlin sweep` (`sweep_run.SweepRun`) are run kinds:
what differs between them (the compiled trainer, the record's fields, what a finished run
writes) is theirs; everything else is here, once, and so is the same for both: several
processes (process 0 checks and writes, the others follow; a failure on one is known to all;
every process stops after the chunk they agree on), `--overwrite` and `--resume` (the newest
checkpoint that verifies; damaged ones set aside), records streamed to `metrics.jsonl`,
checkpoints through orbax (`checkpoints.CheckpointStore`), stop messages with the command that
resumes, and outputs published as a whole (`rundir.RunDir.publish`).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import jax

from jaxlin.config import NUM_CLASSES, Config, ConfigError
from jaxlin.data.datasets import DATA_DIR_ENV, MNIST_IMAGE_SHAPE, Datasets, load_datasets, resolve_data_dir
from jaxlin.errors import JaxlinError
from jaxlin.models import Model, get_model
from jaxlin.runs.checkpoints import CheckpointStore, CheckpointWriteError, DamagedCheckpoint
from jaxlin.runs import rundir
from jaxlin.runs.params_file import CheckpointError
from jaxlin.runs.rundir import CHECKPOINT_DIR, FollowerRunDir, Layout, RunDir, RunDirGone, check_writable
from jaxlin.runs.tensorboard import INSTALL_HINT, TENSORBOARD_DIR, Curve, EventLog, require_writer
from jaxlin.runtime.devices import Placement
from jaxlin.runtime.distributed import check_same_everywhere, failing_together, is_primary, max_over_processes, sync
from jaxlin.runtime import timing
from jaxlin.runtime.profiling import PROFILE_DIR, ProfileSteps, StepTrace
from jaxlin.runtime.signals import StopRequest
from jaxlin.training.loop import ChunkTrainer, Loop, LoopHooks, Progress
from jaxlin.training.schedule import StepSchedule, checkpoint_schedule

MODES = ("new", "overwrite", "resume")
DEFAULT_DATASET = Config().dataset
# What a run reports in one line (see cli): in a multi-process run, the processes agree on them.
USER_ERRORS = (JaxlinError, OSError)


class Stopped(Exception):
    """The run stopped on a signal after saving what it could; `exit_code` is 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def build_model(config: Config, data: Datasets | dict | None = None) -> Model:
    """The model `config` names, for the data's image shape and class count: `data` is the loaded
    `Datasets`, or a checkpoint record's ``"data"`` entry (see `data_fields`); MNIST's without either."""
    image_shape, num_classes = data_sizes(data)
    return get_model(config.model, config.hidden_sizes, config.activation, num_classes=num_classes,
                     image_shape=image_shape)


def data_fields(data: Datasets) -> dict:
    """What a checkpoint record says of the data: its sizes, so that the model can be rebuilt before it is
    loaded, and what it is (its `Datasets.fingerprint`), so that a run resumes only on the same data."""
    return {"image_shape": list(data.image_shape), "num_classes": data.num_classes, "name": data.name,
            "source": data.source, "fingerprint": data.fingerprint}


def check_same_data(record: dict, data: Datasets, out: Path, step: int, log=None) -> None:
    """Refuses (ConfigError) to resume the run whose checkpoint `record` is in `out` on other data than it
    trained on; a record without a fingerprint (an older jaxlin's) is accepted with a note."""
    recorded = recorded_data(record)
    fingerprint = recorded.get("fingerprint") if isinstance(recorded, dict) else None
    if fingerprint is None:
        if log:
            log(f"jaxlin: note: checkpoint {step} in {out} does not record which data it trained on (written by an "
                f"older jaxlin); resuming on {data.name} from {data.source} unchecked")
        return
    if fingerprint != data.fingerprint:
        was = f"{recorded.get('name', 'data')} from {recorded.get('source') or 'somewhere unrecorded'}"
        raise ConfigError(f"--resume: the run in {out} trained on other data ({was}, sha256 {str(fingerprint)[:12]}) "
                          f"than this command loads ({data.name} from {data.source}, sha256 "
                          f"{data.fingerprint[:12]}); resume it on its own data, or start a new run")


def data_sizes(data: Datasets | dict | None) -> tuple[tuple[int, int, int], int]:
    """(image_shape, num_classes) of loaded data or of a record's `data_fields` (records of a jaxlin
    before other data sets: MNIST's); a record's entry that is not one is a ConfigError."""
    if isinstance(data, Datasets):
        return data.image_shape, data.num_classes
    if data is None:
        return MNIST_IMAGE_SHAPE, NUM_CLASSES
    try:
        shape, classes = tuple(data["image_shape"]), data["num_classes"]
        if len(shape) != 3 or not all(type(d) is int and d >= 1 for d in (*shape, classes)):
            raise ValueError(shape, classes)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"the run record's data sizes are not readable ({err})") from err
    return shape, classes


def recorded_data(record: dict) -> dict | None:
    """A checkpoint record's data sizes (None in records of a jaxlin before other data sets)."""
    return record.get("data")


def resume_command(command: str, out: Path) -> str:
    """The command line that continues the run in `out` (see `rundir.resume_command`)."""
    return rundir.resume_command(command, out, several_processes=jax.process_count() > 1)


@dataclasses.dataclass
class Outcome:
    """What a finished session hands to the user: `write(staging)` fills the directory that is
    published, `result` is returned, and the lines are logged before and after publishing."""

    result: dict
    write: Callable[[Path], None]
    before: list[str] = dataclasses.field(default_factory=list)
    after: list[str] = dataclasses.field(default_factory=list)


class RunKind:
    """What one kind of run adds to the session (see `train_run.TrainRun`, `sweep_run.SweepRun`).

    A subclass sets `command` (the name stamped into its checkpoint records, and the jaxlin command
    that resumes it), `noun` (how messages name it) and `layout` (the files it writes, see `rundir`),
    and implements the methods below that raise NotImplementedError."""

    command: str
    noun: str = "run"
    layout: Layout

    def shared_settings(self) -> dict:
        """This kind's settings beside the Config (a sweep's grid), which every process must be given alike."""
        return {}

    def check(self, config: Config) -> None:
        """Settings this kind refuses, before data is loaded."""

    def record_check(self, out: Path, config: Config | None = None,
                     model: Model | None = None) -> Callable[[int, dict], None]:
        """The check `CheckpointStore.find_usable` applies to a verified record of this kind (the session
        has checked the kind): its model is one this command line rebuilds, and (given `config`) the
        settings asked for continue it. Raises ConfigError (or DamagedCheckpoint for a record it cannot
        read)."""
        raise NotImplementedError

    def resumed_settings(self, record: dict, step: int, out: Path, config: Config, explicit: set[str]) -> Config:
        """The checkpoint's config with the explicitly given settings applied (refusing any that would
        not continue the same run)."""
        raise NotImplementedError

    def plan(self, config: Config, data: Datasets, model: Model) -> tuple[Placement, str]:
        """The devices and the plan's description; refuses a plan that cannot run (memory)."""
        raise NotImplementedError

    def trainer(self, config: Config, data: Datasets, model: Model, placement: Placement):
        """The compiled `loop.ChunkTrainer`."""
        raise NotImplementedError

    def evals(self, config: Config) -> StepSchedule:
        """The steps whose evaluations are recorded (see `schedule.eval_schedule`)."""
        raise NotImplementedError

    def record_fields(self, config: Config, model: Model) -> dict:
        """What a checkpoint's record holds beside its kind and the progress."""
        return {"config": config.to_dict(), "model": model.spec}

    def on_record(self, record: dict) -> str | None:
        """A line to log for an evaluation record, if any."""
        return None

    def tensorboard_curves(self, config: Config) -> list[Curve]:
        """The TensorBoard runs that its records become with --tensorboard (see `runs.tensorboard`)."""
        raise NotImplementedError

    def finish(self, session: Session, trainer: ChunkTrainer, state, loop: Loop, evaluations: list[dict]) -> Outcome:
        """What a finished run writes and returns, from its final `state` and every record (this
        session's and earlier ones'). Called on every process (collectives are allowed); nothing may
        be written here: `Outcome.write` fills the directory that is published."""
        raise NotImplementedError


def record_kind(record: dict) -> str:
    """The command whose run wrote a checkpoint's record (records written before the kind was stamped
    into them: a sweep's holds its grid)."""
    kind = record.get("kind")
    if kind is None:
        return "sweep" if "grid" in record else "train"
    return str(kind)


def _record_check(kind: RunKind, out: Path, config: Config | None = None, model: Model | None = None,
                  data: Datasets | None = None, log=None):
    """`kind.record_check` behind the check that the record is of this kind: another kind's checkpoints
    are refused, never set aside or adopted; given `data`, one trained on other data is refused too."""
    own = kind.record_check(out, config, model)

    def check(step: int, record: dict) -> None:
        recorded = record_kind(record)
        if recorded != kind.command:
            raise ConfigError(f"{out} holds a jaxlin {recorded} run, not a {kind.command} run; continue it with "
                              f"{rundir.resume_command(recorded, out)}")
        own(step, record)
        if data is not None:
            check_same_data(record, data, out, step, log)

    return check


def saved_config(record: dict, out: Path, step: int) -> Config:
    """The config of a verified checkpoint record; DamagedCheckpoint when it cannot be read."""
    try:
        return Config.from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedCheckpoint(f"{out / CHECKPOINT_DIR / str(step)}: unreadable run record ({err})") from err


def parse_progress(record: dict, out: Path, step: int) -> Progress:
    try:
        return Progress(**record["progress"])
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedCheckpoint(f"{out / CHECKPOINT_DIR / str(step)}: unreadable run record ({err})") from err


def latest_record(kind: RunKind, out: Path) -> tuple[int, dict]:
    """(step, record) of the newest checkpoint in `out` that verifies, by looking only: the run that
    takes the directory's lock restores, verifies and sets damaged checkpoints aside."""
    if not (out / CHECKPOINT_DIR).is_dir():
        start = "start it with --overwrite" if RunDir(out, kind.layout).run_files() else "drop --resume to start"
        raise ConfigError(f"--resume: no checkpoints in {out} (nothing to resume; {start})")
    store = CheckpointStore(out, read_only=True)
    try:
        usable = store.find_usable(_record_check(kind, out))
    finally:
        store.close()
    return usable.step, usable.record


@dataclasses.dataclass
class Session:
    """One session's settings and what it has found so far (the kinds read it when they finish)."""

    kind: RunKind
    config: Config
    mode: str
    stop: StopRequest
    progress: bool
    log: Callable[[str], None]
    started: float
    data: Datasets | None = None
    model: Model | None = None
    placement: Placement | None = None
    plan_text: str = ""
    data_seconds: float = 0.0
    resumed_from: int | None = None
    tensorboard: bool = False  # --tensorboard: event files beside metrics.jsonl
    profile: ProfileSteps | None = None  # --profile: the steps to trace


def run(kind: RunKind, config: Config, mode: str = "new", explicit: set[str] | None = None,
        stop: StopRequest | None = None, progress: bool = True, dry_run: bool = False,
        data: Datasets | None = None, log=print, *, tensorboard: bool = False,
        profile: ProfileSteps | None = None) -> dict | None:
    """A run of `kind`; returns its result (None for a dry run or nothing to do).

    mode: "new" refuses a directory that holds a run, "overwrite" replaces that run's files,
    "resume" continues from its latest checkpoint, taking the settings not in `explicit` from it.
    `data` skips loading when the caller already has it. `tensorboard` writes its records as
    TensorBoard event files too (a resumed run that has them goes on writing them anyway);
    `profile` traces those steps (see `runtime.profiling`). Raises `Stopped` after SIGINT or
    SIGTERM (caught by `stop`, or by a handler of its own).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if stop is None:
        with StopRequest() as own:
            return run(kind, config, mode, explicit, own, progress, dry_run, data, log, tensorboard=tensorboard,
                       profile=profile)
    if tensorboard:
        require_writer()
    session = Session(kind, config, mode, stop, progress, log, time.perf_counter(), data, tensorboard=tensorboard,
                      profile=profile)
    # The data may sit at another path on each host; everything else must agree.
    check_same_everywhere(json.dumps([kind.command, config.replace(data_dir=None).to_dict(), mode,
                                      kind.shared_settings()], sort_keys=True))
    if not is_primary():  # process 0 reports; the others only train
        session.log = lambda line: None
    _prepare(session, explicit or set())
    session.log(session.plan_text)
    if dry_run:
        out, asked = Path(session.config.output_dir), []
        if tensorboard:
            asked.append(f"--tensorboard would write event files to {out / TENSORBOARD_DIR}")
        if profile is not None:
            asked.append(f"{profile.flag} would write a trace to {out / PROFILE_DIR}")
        session.log(f"Dry run: settings and data are valid; nothing trained, nothing written to "
                    f"{session.config.output_dir}{''.join(f'; {line}' for line in asked)}.")
        return None
    stop.defer()
    if stop:  # a StopNow that something on the way swallowed
        raise Stopped(f"jaxlin: stopped by {stop.name} before training started; nothing saved", stop.exit_code)
    run_dir = (RunDir if is_primary() else FollowerRunDir)(session.config.output_dir, kind.layout)
    with failing_together(*USER_ERRORS):
        run_dir.lock()
    try:
        return _run_in(session, run_dir)
    finally:
        run_dir.unlock()


def _prepare(session: Session, explicit: set[str]) -> None:
    """Settings, directory, model and data checked, on every process together."""
    kind, config, log = session.kind, session.config, session.log
    with failing_together(*USER_ERRORS):  # a process that cannot go on must not leave the others waiting
        if is_primary():
            check_writable(config.output_dir)
            RunDir(config.output_dir, kind.layout).check_available(session.mode)
            _check_view_folders(session)
        if session.mode == "resume":
            out = Path(config.output_dir)
            step, record = latest_record(kind, out)
            config = kind.resumed_settings(record, step, out, config, explicit)
        if config.data_dir:  # a resumed run may start elsewhere
            config = config.replace(data_dir=str(Path(config.data_dir).absolute()))
        kind.check(config)
        data = session.data
        if data is None and resolve_data_dir(config.data_dir) is None and config.source == "tfds":
            log(f"No --data-dir and no {DATA_DIR_ENV}: loading {config.dataset} through "
                f"tensorflow-datasets (it downloads on first use; offline, use --data-dir).")
        if data is None:
            # A name the user gave is checked against the files of a set jaxlin knows; left at its
            # default with a directory, the data is named after what it is (see `datasets.identify`).
            named = "dataset" in explicit or config.dataset != DEFAULT_DATASET
            data = load_datasets(config.dataset if named or not resolve_data_dir(config.data_dir) else None,
                                 config.data_dir, config.source, progress=session.progress, log=log,
                                 validation_size=config.validation_size, check_name=named)
        else:  # data given from Python was split by its maker: record what it holds out
            config = config.replace(validation_size=len(data.validation))
            kind.check(config)
        if session.mode == "resume":  # refused here, before the directory is locked (again when it is restored)
            check_same_data(record, data, out, step)
        config.validate(len(data.train), data.num_features, data.num_classes)
        config = config.with_eval_interval()  # recorded as a number: a resume keeps it whatever its --num-steps
        model = build_model(config, data)  # for the data's image shape and class count
        session.placement, session.plan_text = kind.plan(config, data, model)
    session.config, session.model, session.data = config, model, data
    session.data_seconds = time.perf_counter() - session.started


class _SessionHooks(LoopHooks):
    """Streams records into the run directory, checkpoints through orbax, stops when all processes agree."""

    def __init__(self, session: Session, run_dir: RunDir, store: CheckpointStore | None, fields: dict,
                 last_recorded_step: int | None, saved_state: Callable, events: EventLog | None = None):
        self.session, self.run_dir, self.store, self.events = session, run_dir, store, events
        self.fields = {"kind": session.kind.command, "data": data_fields(session.data), **fields}
        self.checkpoints = store is not None
        self.last_recorded_step = last_recorded_step
        self.saved_state = saved_state
        self.saved_step: int | None = None

    def on_evaluation(self, record: dict) -> None:
        self.run_dir.append_record(record)
        if self.events is not None:
            self.events.write(record)
        line = self.session.kind.on_record(record)
        if line:
            self.session.log(line)

    def save(self, state, progress: Progress, wait: bool = False) -> None:
        self.run_dir.check_still_here()
        self.store.save(self.saved_state(state), {**self.fields, "progress": dataclasses.asdict(progress)})
        if wait:
            self.store.wait()
        self.saved_step = state.step

    def wait_for_saves(self) -> None:
        self.store.wait()

    def should_stop(self) -> bool:
        return self.poll(False)[0]

    def poll(self, save_due: bool) -> tuple[bool, bool]:
        # Every process stops after the same chunk, whichever of them got the signal, and says which;
        # and saves at the same boundary, whichever clock said so first (one exchange for both). The
        # agreed answer, not the local flag: a signal that lands during the exchange is seen by every
        # process at the next check. (The largest of signal * 2 + due is the largest signal, and while
        # none came, whether any clock says a save is due; a stop saves anyway.)
        stop = self.session.stop
        agreed = max_over_processes(((stop.signum or 0) << 1) | int(save_due))
        signum = agreed >> 1
        if signum and stop.signum is None:
            stop.signum = signum
        return bool(signum), bool(agreed & 1)

    def report(self, line: str) -> None:
        self.session.log(line)


def _run_in(session: Session, run_dir: RunDir) -> dict | None:
    kind, config, log, out = session.kind, session.config, session.log, run_dir.path
    with failing_together(*USER_ERRORS):
        run_dir.check_available(session.mode)
        if session.mode == "overwrite":
            run_dir.remove_run()
    sync("jaxlin: output directory ready")  # process 0 has locked and cleared it
    with timing.marks.phase("checkpoint"):  # orbax's import and its manager's start
        store = None if config.checkpoints().never else CheckpointStore(out, keep=config.keep_checkpoints)
    records: list[dict] = []
    events = None
    try:
        with jax.default_device(session.placement.local_device):
            trainer = kind.trainer(config, session.data, session.model, session.placement)
            if session.mode == "resume":
                if store is None:
                    raise ConfigError("--resume: checkpoints are off (--checkpoint-every 0)")
                with failing_together(*USER_ERRORS):  # every process verifies it before any is moved
                    usable = store.find_usable(_record_check(kind, out, config, session.model, session.data, log),
                                               lambda record: trainer.state_template(), log=log)
                if is_primary():
                    store.set_aside_damaged(usable.damaged, log)
                step, progress = usable.step, parse_progress(usable.record, out, usable.step)
                if step == config.num_steps and run_dir.has_finished_run():
                    log(f"The {kind.noun} in {out} already finished at step {step}; raise --num-steps to train on.")
                    return None
                records = run_dir.read_records(step)
                run_dir.unfinish()
                log(f"Resuming {out} from step {step} of {config.num_steps}.")
                state, session.resumed_from = trainer.place(usable.state), step
            else:
                state, progress = trainer.init_state(), Progress.zero(getattr(trainer, "num_members", None))
            evals = kind.evals(config)
            saves = _checkpoint_schedule(config, store, evals)
            events = _event_log(session, out, records, progress)
            hooks = _SessionHooks(session, run_dir, store, kind.record_fields(trainer.config, session.model),
                                  records[-1]["step"] if records else None, trainer.saved_state, events)
            # Process 0 traces: processes on one host would write the same file names into one folder.
            trace = (StepTrace(out / PROFILE_DIR, session.profile, log)
                     if session.profile is not None and is_primary() else None)
            loop = Loop(trainer, evals, saves, hooks, progress, fresh=session.mode != "resume",
                        save_seconds=config.checkpoints().seconds if store else None, trace=trace)
            state = loop.run(state, session.progress and is_primary())
            if store:
                with timing.marks.phase("checkpoint"):
                    store.close()  # waits for the last save: a checkpoint reported is a checkpoint on disk
            if state.step < config.num_steps:
                raise Stopped(_stopped_message(session, state.step, hooks, out), session.stop.exit_code or 1)
            outcome = kind.finish(session, trainer, state, loop, records + loop.evaluations)
    except (CheckpointWriteError, OSError) as err:
        raise write_failed(err, store, run_dir, resume_command(kind.command, out)) from err
    finally:
        if store:
            close_quietly(store)
        if events is not None:
            events.close()
    for line in outcome.before:
        log(line)
    names = run_dir.publish(outcome.write)
    log(f"Wrote {', '.join(names)} to {out}")
    for line in outcome.after:
        log(line)
    if session.stop:  # a signal while the outputs were written: they are complete, say so and exit as asked
        raise Stopped(f"jaxlin: {session.stop.name} after the last step; the finished {kind.noun} is in {out}",
                      session.stop.exit_code)
    return outcome.result


def _check_view_folders(session: Session) -> None:
    """--tensorboard and --profile write into folders of the output directory: something else of those
    names (a file, a symlink) is refused now, not when the first record or trace is written."""
    if session.mode == "overwrite":  # --overwrite refuses them as files jaxlin did not write (rundir)
        return
    for flag, folder, asked in (("--tensorboard", TENSORBOARD_DIR, session.tensorboard),
                                ("--profile", PROFILE_DIR, session.profile is not None)):
        path = Path(session.config.output_dir) / folder
        if asked and (path.is_symlink() or (path.exists() and not path.is_dir())):
            raise ConfigError(f"output dir {session.config.output_dir}: {folder} is not a folder (it is a "
                              f"{'symlink' if path.is_symlink() else 'file'}), and {flag} writes into a folder of "
                              f"that name; move it, or choose another --output-dir")


def _event_log(session: Session, out: Path, kept: list[dict], progress: Progress) -> EventLog | None:
    """The run's TensorBoard event files (process 0's): with --tensorboard, or when a resumed run has them."""
    folder = out / TENSORBOARD_DIR
    if not is_primary() or not (session.tensorboard or (session.mode == "resume" and folder.is_dir())):
        return None
    if not session.tensorboard:
        try:
            require_writer()
        except ConfigError:  # not asked for: the run goes on, and a later session writes the whole history
            session.log(f"jaxlin: note: {folder} holds this run's TensorBoard event files, but tensorboardX is not "
                        f"installed: this session does not write them (a session with it rewrites them from "
                        f"metrics.jsonl; {INSTALL_HINT})")
            return None
    session.log(f"Writing TensorBoard event files to {folder}{', as the run did before' * (not session.tensorboard)}"
                f" (view them with: tensorboard --logdir {shlex.quote(str(folder))})")
    return EventLog(folder, session.kind.tensorboard_curves(session.config), kept, progress.elapsed_seconds,
                    session.log)


def _checkpoint_schedule(config: Config, store: CheckpointStore | None, evals: StepSchedule) -> StepSchedule:
    return checkpoint_schedule(config.num_steps, config.checkpoint_every if store else 0, evals)


def _stopped_message(session: Session, step: int, hooks: _SessionHooks, out: Path) -> str:
    why = session.stop.name or "a stop request"
    if hooks.saved_step == step:
        return (f"jaxlin: stopped by {why} at step {step} of {session.config.num_steps}; checkpoint saved in "
                f"{out / CHECKPOINT_DIR}. Resume with: {resume_command(session.kind.command, out)}")
    if not hooks.checkpoints:
        return f"jaxlin: stopped by {why} at step {step}; checkpoints are off (--checkpoint-every 0), nothing saved"
    return f"jaxlin: stopped by {why} at step {step}, before any step was trained; nothing new saved"


def write_failed(err: CheckpointWriteError | OSError, store: CheckpointStore | None, run_dir: RunDir,
                 resume: str) -> Exception:
    """The one line for a write that failed while training (a checkpoint, or metrics.jsonl when the
    directory filled up, became read-only or vanished): what failed, the last good checkpoint, how to
    resume. A lost peer is the runtime's failure, reported as such (cli: exit 1)."""
    out = run_dir.path
    # Moved or removed under the run (an in-flight save may have made a new directory at its path):
    # its checkpoints went wherever it went.
    if isinstance(err, RunDirGone) or not out.is_dir() or not run_dir.still_here():
        return CheckpointError(
            f"output dir {out} was moved or removed while the run was going; its checkpoints are wherever it "
            f"went: resume it there with --resume --output-dir pointing at it")
    if isinstance(err, OSError):
        err = CheckpointWriteError(f"cannot write {err.filename or out} ({err.strerror or err})", err)
    cause = err.cause
    if jax.process_count() > 1 and type(cause).__name__ in ("JaxRuntimeError", "XlaRuntimeError"):
        return cause
    good = store.saved_step if store is not None else None
    if good is None:
        return CheckpointError(f"{err}; no checkpoint of this run was completed")
    return CheckpointError(f"{err}; the last good checkpoint is step {good} in {store.directory}. "
                           f"Free space or fix the directory, then resume with: {resume}")


def close_quietly(store: CheckpointStore) -> None:
    try:
        store.close()
    except CheckpointError:
        pass  # already reported, or a failure behind another error
