"""The parent of one process of a multi-process run: what the user sees when the runtime fails.

JAX's distributed runtime ends a process from C++ when a peer dies or stops answering, when
process 0 waits in vain for its peers, or when the coordinator's port is taken: a check
failure, a stack trace and SIGABRT, with nothing Python can catch. Gloo also prints its
connection chatter on standard output. So `jaxlin train` or `jaxlin sweep` with distributed
flags runs the training in a child process whose runtime output (file descriptors 1 and 2, where C++ writes)
goes to this parent, while jaxlin's own output (Python's `sys.stdout`/`sys.stderr`: the
progress bar, records, messages) goes straight to the terminal as before. When the child ends
abnormally the parent says so in one line naming the coordinator, the runtime's own fatal
message and a file holding the whole runtime log: `<output dir>/logs/runtime-process-<i>-of-<n>.log`,
or a file in a private temporary directory when the output directory does not exist yet (it is
never followed through a symbolic link, see `_RuntimeLog.save`).

Signals: the parent forwards the first SIGINT/SIGTERM to the child, which stops after the
current chunk (all processes agree on the step); a second one kills the child at once. The
child ignores repeats of a signal it already has, so a scheduler that signals every process
of the job (Slurm does) and the parent's forward do not add up to "twice". If the parent is
killed, the child gets SIGTERM (Linux) and stops at the next chunk.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable

RUNTIME_FD_ENV = "JAXLIN_RUNTIME_LOG_FD"
JOINED = "jaxlin: joined the distributed run"  # the child's word to the parent, on the runtime stream
FAILED = "jaxlin: the runtime failed: "  # the child's word that it ends on a runtime error (then its text)
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]*\] ?(.*)$")  # absl: F1201 00:05:20.8 19267 f.cc:80] text
_KEEP_LINES = 400


class _Routing:
    """Whether this process is a supervised child whose file descriptors 1 and 2 go to the parent.

    A fact about the process (`ROUTING`), set once by `route_runtime_output` and never unset: the
    descriptors stay with the parent for the rest of the process, whatever a later in-process call
    of `main` does (the child's environment variable is consumed, so none routes twice)."""

    def __init__(self):
        self.active = False


ROUTING = _Routing()


def is_child() -> bool:
    return RUNTIME_FD_ENV in os.environ


def routed() -> bool:
    """Whether this process is a supervised child (its runtime output goes to the parent)."""
    return ROUTING.active


def exit_at_once(code: int) -> None:
    """Ends a failed or stopped child without JAX's shutdown barrier, which waits for every peer
    (for minutes when one is gone); everything jaxlin writes is on disk by now."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def report_joined() -> None:
    """In the child, once every process has joined: later failures are peers lost, not peers missing."""
    if ROUTING.active:
        os.write(1, (JOINED + "\n").encode())


def route_runtime_output() -> None:
    """In the child: Python's streams keep the terminal; file descriptors 1 and 2 go to the parent,
    and so do the libraries' Python logging (orbax, absl) and the tracebacks of background threads
    (orbax's save thread, when a peer is lost mid-save): they belong in the runtime log."""
    import logging

    runtime_fd = int(os.environ.pop(RUNTIME_FD_ENV))
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stdout = os.fdopen(os.dup(1), "w", buffering=1, encoding=sys.stdout.encoding, errors="replace")
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    os.dup2(runtime_fd, 1)
    os.dup2(runtime_fd, 2)
    os.close(runtime_fd)
    ROUTING.active = True
    runtime = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    handler = logging.StreamHandler(runtime)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(threadName)s: %(message)s"))
    logging.getLogger().addHandler(handler)  # before anyone's basicConfig, which would take the terminal
    threading.excepthook = _thread_exception_to_runtime_log


def _runtime_write(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "backslashreplace"))
    except OSError:  # the parent is gone
        pass


def _thread_exception_to_runtime_log(args) -> None:
    """threading.excepthook of a supervised child: the traceback goes to the runtime log."""
    import traceback

    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    _runtime_write(f"Exception in thread {name}:\n{text}")


def _chain(err: BaseException):
    """`err`, its causes and contexts, and the `cause` that jaxlin's wrapping errors keep."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]


def runtime_failure(err: BaseException) -> BaseException | None:
    """The error of JAX's distributed runtime behind `err` (a collective or a barrier that failed,
    usually because a peer died or stopped answering, often wrapped by orbax), or None."""
    links = [link for link in _chain(err) if isinstance(link, BaseException)]
    for link in links:  # the runtime's own error first: it names the peer (orbax wraps it in a TimeoutError)
        if type(link).__name__ in ("JaxRuntimeError", "XlaRuntimeError"):
            return link
    for link in links:
        if isinstance(link, TimeoutError) and "barrier" in str(link).lower():
            return link
    return None


def run_reporting_runtime_failures(function, *args):
    """`function(*args)`; in a supervised child, a runtime failure (see `runtime_failure`) is not a
    traceback on the terminal: its traceback goes to the runtime log and its text to the parent,
    which reports it in one line with the coordinator and the log's path. Returns 1 then."""
    from jaxlin.config import ConfigError

    try:
        return function(*args)
    except ConfigError:  # jaxlin's own one line (e.g. a coordinator it could not join)
        raise
    except Exception as err:
        cause = runtime_failure(err) if ROUTING.active else None
        if cause is None:
            raise
        report_failure(err, cause)
        return 1


def report_failure(err: BaseException, cause: BaseException) -> None:
    """In the child: the whole error to the runtime log, its runtime error's first line to the parent."""
    import traceback

    _runtime_write("".join(traceback.format_exception(err)))
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0].strip()
    _runtime_write("\n" + FAILED + first[:1000] + "\n")


class _RuntimeLog:
    """The child's runtime output: its last lines, and the first error the runtime called fatal."""

    def __init__(self, stream):
        self.lines: collections.deque[str] = collections.deque(maxlen=_KEEP_LINES)
        self.fatal: str | None = None
        self.error: str | None = None
        self._in_fatal = False
        self.joined = False
        self.failed: str | None = None  # the child's runtime failure, as it reported it (`FAILED`)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == JOINED:
                self.joined = True
                continue
            if line.startswith(FAILED) and self.failed is None:
                self.failed = line[len(FAILED):].strip() or "no message from JAX's runtime"
                continue
            self.lines.append(line)
            match = _LOG_LINE.match(line)
            if self._in_fatal and not match and line.strip() and not line.startswith("***"):
                self.fatal += " " + line.strip()  # the rest of a multi-line fatal message
                continue
            self._in_fatal = False
            if match and match.group(1) == "F" and self.fatal is None:
                self.fatal = match.group(2).strip()
                self._in_fatal = True
            elif match and match.group(1) == "E" and self.error is None:
                self.error = match.group(2).strip()
            elif line.startswith("Fatal Python error:") and self.fatal is None:
                self.fatal = line

    def reason(self) -> str:
        """The runtime's own words for the failure, shortened to its status when it has one."""
        text = self.fatal or self.failed or self.error or "no message from JAX's runtime"
        if "absl::Status:" in text:
            text = text.split("absl::Status:", 1)[1].split(" The tasks have crashed")[0].strip()
        return text if len(text) <= 300 else text[:297] + "..."

    def lost_peer(self) -> str | None:
        """Which process the runtime said was lost ("process 1"), when it said so."""
        for line in [self.fatal or "", self.failed or "", *reversed(self.lines)]:
            match = (re.search(r"unhealthy \(stopped sending heartbeats\): ([\d, ]+)", line)
                     or re.search(r"[Tt]ask (\d+) heartbeat timeout", line))
            if match:
                numbers = [n for n in re.split(r"[, ]+", match.group(1)) if n]
                return ("process " if len(numbers) == 1 else "processes ") + ", ".join(numbers)
        return None

    def finish(self) -> None:
        self._thread.join(timeout=5)

    def save(self, output_dir: str, name: str) -> str:
        """Writes the log as `<output_dir>/logs/<name>` (one file per run and process: a failure that
        repeats replaces its log), or, when that cannot be written (no output directory yet, or a
        `logs` that is a link or another user's), in a private directory of its own. Returns where.

        Never through a symbolic link: the file is written as a new temporary file (O_EXCL,
        O_NOFOLLOW) and renamed over `name`, so a link planted there is replaced, not followed."""
        text = ("\n".join(self.lines) + "\n").encode("utf-8", "replace")
        try:
            return _write_in_logs(output_dir, name, text)
        except OSError:
            pass
        try:
            private = tempfile.mkdtemp(prefix="jaxlin-runtime-")  # 0700, a new name
            return _write_new(private, name, text)
        except OSError as err:
            return f"not saved ({err.strerror or err})"


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _write_in_logs(output_dir: str, name: str, text: bytes) -> str:
    """`<output_dir>/logs/name`, in an output directory that exists (none is created for a log)."""
    import stat

    top = os.open(output_dir, _DIR_FLAGS)
    try:
        try:
            os.mkdir("logs", 0o755, dir_fd=top)
        except FileExistsError:
            pass
        logs = os.open("logs", _DIR_FLAGS | _NOFOLLOW, dir_fd=top)  # a link named logs: ELOOP/ENOTDIR
    finally:
        os.close(top)
    try:
        info = os.fstat(logs)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise PermissionError(f"{output_dir}/logs is not this user's directory")
        _replace_at(logs, name, text)
    finally:
        os.close(logs)
    return os.path.join(os.path.abspath(output_dir), "logs", name)


def _write_new(directory: str, name: str, text: bytes) -> str:
    handle = os.open(directory, _DIR_FLAGS | _NOFOLLOW)
    try:
        _replace_at(handle, name, text)
    finally:
        os.close(handle)
    return os.path.join(directory, name)


def _replace_at(dir_fd: int, name: str, text: bytes) -> None:
    """Writes `text` to a fresh temporary file in the directory `dir_fd` and renames it to `name`."""
    import secrets

    temporary = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(text)
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def log_name(process: str) -> str:
    """The runtime log's file name for `process` ("process 1 (of 2)" -> runtime-process-1-of-2.log)."""
    import socket

    match = re.fullmatch(r"process (\d+) \(of (\d+)\)", process)
    if match:
        return f"runtime-process-{match.group(1)}-of-{match.group(2)}.log"
    host = re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()).strip("-") or "host"
    return f"runtime-{host}-{os.getpid()}.log"


def _ask_kernel_to_signal_child_on_parent_death() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child is simply orphaned
        pass


class _Forwarder:
    def __init__(self, child: subprocess.Popen, log: _RuntimeLog):
        self.child, self.log = child, log
        self.signum: int | None = None
        self.killed = False

    def __call__(self, signum, frame) -> None:
        if self.signum is None and self.log.joined:
            self.signum = signum
            _send(self.child, signum)
        else:  # a second signal; or the first while JAX waits in C++ for the processes to join
            self.signum = self.signum or signum
            self.killed = True
            _send(self.child, signal.SIGKILL)


def _send(child: subprocess.Popen, signum: int) -> None:
    try:
        child.send_signal(signum)
    except ProcessLookupError:
        pass


def run_supervised(argv: list[str], where: str, process: str, output_dir: str,
                   resume_hint: Callable[[], str] = lambda: "") -> int:
    """Runs `jaxlin ARGV` as a child (see the module docstring) and returns its exit code.

    `where` names the coordinator ("coordinator HOST:PORT") and `process` this process
    ("process 1 (of 2)") for the message; `output_dir` holds the runtime log, and `resume_hint()`
    says, when the child has ended, how to resume it ("" when there is nothing to resume)."""
    read_fd, write_fd = os.pipe()
    env = {**os.environ, RUNTIME_FD_ENV: str(write_fd)}
    child = subprocess.Popen([sys.executable, "-m", "jaxlin.cli", *argv], env=env, pass_fds=(write_fd,),
                             preexec_fn=_ask_kernel_to_signal_child_on_parent_death)
    os.close(write_fd)
    log = _RuntimeLog(os.fdopen(read_fd, "rb"))
    forward = _Forwarder(child, log)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.finish()
    name = signal.Signals(forward.signum).name if forward.signum else ""
    if forward.killed and not log.joined:
        print(f"jaxlin: stopped by {name} while waiting for the processes to join; nothing trained",
              file=sys.stderr)
        return 128 + forward.signum
    if forward.killed:
        print(f"jaxlin: stopped by {name} at once (second signal); checkpoints already on disk are kept"
              f"{resume_hint()}", file=sys.stderr)
        return 128 + forward.signum
    if code >= 0 and log.failed is None:
        return code
    how = f"was ended ({signal.Signals(-code).name})" if code < 0 else "failed"
    reason = log.reason()
    lost = log.lost_peer()
    pair = re.fullmatch(r"process ([01]) \(of 2\)", process)
    if lost is None and pair:  # gloo names an address only; of two processes, the lost one is the other
        lost = f"process {1 - int(pair.group(1))}"
    if "Failed to add port" in reason:
        hint = "the coordinator's port is taken (another run, or a second process 0?)"
    elif code == -signal.SIGKILL and log.fatal is None:
        hint = "this process was killed from outside (out of memory, a user or the scheduler)"
    elif log.joined:
        hint = "a peer process died or stopped answering" + (f" (lost: {lost})" if lost else "")
    else:
        hint = ("not every process joined in time: are they all started, with the same --coordinator and "
                "--num-processes and distinct --process-id?")
    print(f"jaxlin: error: {process} of the run through {where} {how}: {reason}; "
          f"{hint}; runtime log: {log.save(output_dir, log_name(process))}{resume_hint()}",
          file=sys.stderr)
    return 1
