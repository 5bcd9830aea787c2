"""Downloads from mirrors on 127.0.0.1 only: good, corrupt, missing, hanging and refusing ones.

No test races real work against a short timeout: what a mirror serves is ready before it
starts, the only mirror meant to time out is one that never answers, and the timeout
(2 s) is far longer than any answer from a thread on this machine takes.
"""

import functools
import gzip
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jaxlin.data import download
from jaxlin.cli.main import main
from jaxlin.data.datasets import DATA_DIR_ENV, DataError, load_datasets
from jaxlin.data.download import CACHE_ENV, FILES, MIRRORS_ENV, DownloadError

LABELS = FILES["mnist"][3]  # t10k-labels: small, and a real file with a published digest


@functools.cache
def _bomb() -> bytes:
    """100 MB of zeros, gzip-compressed once: compressing takes most of a second, never inside a request."""
    return gzip.compress(bytes(100 * (1 << 20)), compresslevel=9)


DRIP_SECONDS = 0.2  # the drip mirror sends one byte, then waits this long


class Mirror:
    """An HTTP server on 127.0.0.1 in a thread; `kind` says what it serves for every file. Bodies are
    made before the server starts or read from disk, so every answer starts at once."""

    def __init__(self, source: Path | None, kind: str = "good"):
        mirror = self
        self.closing = threading.Event()
        bomb = _bomb() if kind == "bomb" else None

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                name = self.path.rsplit("/", 1)[-1]
                if kind == "404" or source is None or not (source / name).is_file():
                    self.send_error(404)
                    return
                body = (source / name).read_bytes()
                if kind == "corrupt":
                    body = gzip.compress(gzip.decompress(body)[:-1] + b"\x01")
                elif kind == "recompressed":
                    body = gzip.compress(gzip.decompress(body), compresslevel=1)
                elif kind == "bomb":
                    body = bomb
                elif kind == "uncompressed":
                    body = gzip.decompress(body)
                elif kind == "endless":  # 64 KiB blocks as fast as they go, no length, no end
                    self.send_response(200)
                    self.end_headers()
                    self._send(bytes(1 << 16) for _ in range(100_000))
                    return
                elif kind == "drip":  # the real file with its real length, one byte every DRIP_SECONDS
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self._send(body[i:i + 1] for i in range(len(body)) if not mirror.closing.wait(DRIP_SECONDS))
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _send(self, blocks):
                try:
                    for block in blocks:
                        if mirror.closing.is_set():
                            return
                        self.wfile.write(block)
                        self.wfile.flush()
                except OSError:  # the client gave up
                    mirror.dropped.set()

            def log_message(self, *args):
                pass

        self.requests: list[str] = []
        self.dropped = threading.Event()  # set once a client hung up in the middle of a body
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirrors(mnist_dir):
    started = []

    def start(kind="good"):
        started.append(Mirror(mnist_dir, kind))
        return started[-1]

    yield start
    for mirror in started:
        mirror.close()


@pytest.fixture
def hanging_url():
    """A socket that accepts connections (the kernel's backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


@pytest.fixture
def refusing_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    """The mirror that never answers is given up after 2 s (3 s by default); every other answer comes
    from a thread here in milliseconds, so this races nothing, even on a loaded machine."""
    monkeypatch.setattr(download, "TIMEOUT_SECONDS", 2.0)


def test_bad_mirrors_are_skipped_until_one_verifies(mirrors, hanging_url, refusing_url, tmp_path, monkeypatch):
    good = mirrors("good")
    bad = [refusing_url, hanging_url, mirrors("404").url, mirrors("corrupt").url]
    monkeypatch.setenv(MIRRORS_ENV, ",".join([*bad, good.url]))
    path = download.fetch_file("mnist", LABELS, tmp_path / "cache", progress=False)
    assert path == tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz"
    assert download._check_content(path, LABELS) is None
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no partial files
    assert good.requests == ["/t10k-labels-idx1-ubyte.gz"]


def test_every_mirror_failing_names_each_problem_and_leaves_nothing(mirrors, hanging_url, refusing_url,
                                                                    tmp_path, monkeypatch):
    monkeypatch.setenv(MIRRORS_ENV, ",".join([refusing_url, hanging_url, mirrors("404").url,
                                              mirrors("corrupt").url, mirrors("bomb").url]))
    with pytest.raises(DownloadError) as info:
        download.fetch_file("mnist", LABELS, tmp_path / "cache", progress=False)
    message = str(info.value)
    assert message.startswith("could not download t10k-labels-idx1-ubyte.gz: ")
    assert "Connection refused" in message and "timed out" in message and "HTTP 404" in message
    assert "sha256 " in message and "is not the published" in message
    assert f"sent more than {10008 + 100 + 65536} bytes" in message  # the bomb, cut off while downloading
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_recompressed_or_uncompressed_copy_verifies(mirrors, tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setenv(MIRRORS_ENV, mirrors("recompressed").url)
    path = download.fetch_file("mnist", LABELS, tmp_path / "a", progress=False)
    assert path.read_bytes() != (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    raw = tmp_path / "b" / "t10k-labels-idx1-ubyte"
    raw.parent.mkdir()
    raw.write_bytes(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert download._check_content(raw, LABELS) is None


def test_download_and_verify_commands(mirrors, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MIRRORS_ENV, mirrors("good").url)
    target = tmp_path / "mnist"
    assert main(["download", "--dir", str(target), "--no-progress"]) == 0
    assert "the four IDX files are in" in capsys.readouterr().out
    assert not (target / download.LOCK_FILE).exists()  # removed, as it was made, under the lock
    assert main(["download", "--verify", str(target)]) == 0
    assert "All four mnist files" in capsys.readouterr().out
    labels = target / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-1]))
    (target / "train-labels-idx1-ubyte.gz").unlink()
    assert main(["download", "--verify", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t10k-labels-idx1-ubyte.gz: holds only 10007 bytes" in err
    assert "train-labels-idx1-ubyte.gz: missing" in err


def test_no_network_is_a_clear_error_naming_every_way(refusing_url, tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(MIRRORS_ENV, refusing_url)
    with pytest.raises(DataError) as info:
        load_datasets("mnist")
    message = str(info.value)
    assert "\n" not in message and "Connection refused" in message
    for way in ("--data-dir", DATA_DIR_ENV, "jaxlin download --dataset mnist"):
        assert way in message
    assert not any(Path(os.environ[CACHE_ENV]).rglob("*.gz"))


def test_train_downloads_into_an_empty_cache_then_uses_it(mirrors, tmp_path):
    """The whole `jaxlin train`, in its own process, with no data dir: a download, then the cache."""
    good = mirrors("good")
    env = {**os.environ, MIRRORS_ENV: good.url, CACHE_ENV: str(tmp_path / "cache")}
    env.pop(DATA_DIR_ENV, None)
    exe = Path(sys.executable).with_name("jaxlin")
    command = [str(exe), "train", "--num-steps", "20", "--eval-every", "10", "--no-progress"]
    first = subprocess.run([*command, "--output-dir", str(tmp_path / "one")], env=env, capture_output=True,
                           text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    assert "Downloading mnist train-images-idx3-ubyte.gz" in first.stdout
    assert f"Data: mnist from {tmp_path / 'cache' / 'mnist'}" in first.stdout
    assert len(good.requests) == 4
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir() if not p.name.startswith(".")) == sorted(
        f.stem + ".gz" for f in FILES["mnist"])
    second = subprocess.run([*command, "--output-dir", str(tmp_path / "two")], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr
    assert "Downloading" not in second.stdout and len(good.requests) == 4  # no request at all


def test_an_endless_mirror_is_cut_off_and_the_next_one_used(mirrors, tmp_path, monkeypatch):
    endless, good = mirrors("endless"), mirrors("good")
    monkeypatch.setenv(MIRRORS_ENV, endless.url)
    with pytest.raises(DownloadError, match=f"sent more than {10008 + 100 + 65536} bytes, more than the file can be"):
        download.fetch_file("mnist", LABELS, tmp_path / "a", progress=False)
    monkeypatch.setenv(MIRRORS_ENV, ",".join([endless.url, good.url]))
    assert download.fetch_file("mnist", LABELS, tmp_path / "b", progress=False).is_file()
    assert good.requests == ["/t10k-labels-idx1-ubyte.gz"]


def test_a_dripping_mirror_is_dropped_by_its_rate_and_the_next_one_used(mirrors, tmp_path, monkeypatch):
    """One byte every 0.2 s of a file whose length the headers give: every read returns what has come,
    so the rate is checked as bytes arrive and the mirror is dropped once the window has passed (lowered
    to 2 s here), not after a 64 KiB block has filled (15 minutes for this 4.5 kB file)."""
    monkeypatch.setattr(download, "MIN_SPEED_AFTER_SECONDS", 2.0)
    drip, good = mirrors("drip"), mirrors("good")
    started = time.monotonic()
    monkeypatch.setenv(MIRRORS_ENV, drip.url)
    with pytest.raises(DownloadError, match=r"t10k-labels-idx1-ubyte.gz: too slow \(\d+ bytes/s after \d+ s\)"):
        download.fetch_file("mnist", LABELS, tmp_path / "a", progress=False)
    monkeypatch.setenv(MIRRORS_ENV, ",".join([drip.url, good.url]))
    path = download.fetch_file("mnist", LABELS, tmp_path / "b", progress=False)
    assert download._check_content(path, LABELS) is None
    assert len(drip.requests) == 2 and good.requests == ["/t10k-labels-idx1-ubyte.gz"]
    assert drip.dropped.wait(60)  # the drip's server saw the client hang up
    assert time.monotonic() - started < 300
    assert [p.name for p in (tmp_path / "b").iterdir()] == [path.name]


def test_download_replaces_a_damaged_copy_and_stores_uncompressed_files_by_their_name(mirrors, tmp_path,
                                                                                        monkeypatch, capsys):
    monkeypatch.setenv(MIRRORS_ENV, mirrors("uncompressed").url)
    target = tmp_path / "mnist"
    assert main(["download", "--dir", str(target), "--no-progress"]) == 0
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == sorted(
        f.stem for f in FILES["mnist"])  # no `.gz` on files that are not gzip
    (target / "t10k-labels-idx1-ubyte").write_bytes(b"damaged")
    (target / ".t10k-labels-idx1-ubyte.x.part").write_bytes(b"left by a killed download")
    capsys.readouterr()
    assert main(["download", "--dir", str(target), "--no-progress"]) == 0
    assert "replacing a copy that does not verify: t10k-labels-idx1-ubyte" in capsys.readouterr().out
    assert download.verify(target) and not list(target.glob("*.part"))


def test_a_signal_during_the_download_stops_at_once_and_leaves_no_partial_file(mirrors, tmp_path):
    import signal

    env = {**os.environ, MIRRORS_ENV: mirrors("drip").url, CACHE_ENV: str(tmp_path / "cache"),
           "PYTHONUNBUFFERED": "1"}
    env.pop(DATA_DIR_ENV, None)
    exe = Path(sys.executable).with_name("jaxlin")
    run = subprocess.Popen([str(exe), "train", "--output-dir", str(tmp_path / "out"), "--no-progress"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "cache").rglob(".*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=10)
    assert run.returncode == 143, err
    assert "stopped by SIGTERM before training started; nothing saved" in err and "Traceback" not in err
    assert not list((tmp_path / "cache").rglob("*.part")) and not (tmp_path / "out").exists()
    assert not list((tmp_path / "cache").rglob(download.LOCK_FILE))


def test_verifying_a_gzip_bomb_stops_one_byte_past_the_promised_size(tmp_path):
    bomb = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as handle:
        for _ in range(100):
            handle.write(bytes(1 << 20))
    assert download._check_content(bomb, LABELS) == "holds more than 10008 bytes, expected 10008"


# `jaxlin` with SIGINT handled as in an interactive start (Python's KeyboardInterrupt): a suite started in
# the background by a non-interactive shell passes SIGINT on ignored, and a program keeps an ignored
# SIGINT ignored. (Set in the child itself: a preexec_fn would fork a process that runs JAX's threads.)
INTERRUPTIBLE = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "sys.argv[0] = 'jaxlin'; runpy.run_module('jaxlin.cli', run_name='__main__')")


def _wait_for(predicate, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_jaxlin_download_removes_the_partial_file_and_the_lock(mirrors, tmp_path, signum, code):
    """`jaxlin download` in its own process, from a mirror that drips: the signal comes once a `.part`
    file exists; the process leaves neither it nor the lock (nor the directory it made), in one line."""
    import signal

    target = tmp_path / "data"
    env = {**os.environ, MIRRORS_ENV: mirrors("drip").url, CACHE_ENV: str(tmp_path / "cache")}
    run = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, "download", "--dir", str(target), "--no-progress"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: list(target.glob(".*.part")) and (target / download.LOCK_FILE).exists())
        run.send_signal(getattr(signal, signum))
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == code, err
    assert err == f"jaxlin: stopped by {signum}\n"
    assert not target.exists()  # it made the directory, and nothing else is in it


def test_a_stop_swallowed_by_a_callback_prints_no_traceback(capsys):
    """The signal can land inside JAX's garbage-collector hook, where Python drops the `StopNow` and
    prints "Exception ignored in ..." with a traceback; while downloading that says nothing (the flag
    is set and the download stops at its next read). Other unraisable errors are still reported."""
    from jaxlin.runtime.signals import StopNow

    class Unraisable:  # what Python passes to sys.unraisablehook
        def __init__(self, exc):
            self.exc_value, self.exc_type, self.exc_traceback = exc, type(exc), None
            self.err_msg, self.object = None, None

    seen = []
    previous, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
        with download._signals_stop():
            sys.unraisablehook(Unraisable(StopNow(2)))
            sys.unraisablehook(Unraisable(RuntimeError("something else")))
        after = sys.unraisablehook
    finally:
        sys.unraisablehook = previous
    assert [str(u.exc_value) for u in seen] == ["something else"]
    assert after == seen.append  # the hook is put back


def test_a_signal_keeps_files_already_downloaded(mirrors, tmp_path, mnist_dir):
    """Into a directory that exists and holds a verified file: only what the stopped download wrote goes."""
    import shutil
    import signal

    target = tmp_path / "data"
    target.mkdir()
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", target)
    env = {**os.environ, MIRRORS_ENV: mirrors("drip").url, CACHE_ENV: str(tmp_path / "cache")}
    run = subprocess.Popen([sys.executable, "-m", "jaxlin.cli", "download", "--dir", str(target), "--no-progress"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: list(target.glob(".*.part")))
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 143
    assert sorted(p.name for p in target.iterdir()) == ["t10k-labels-idx1-ubyte.gz"]


def test_the_lock_is_removed_and_two_downloads_into_one_directory_take_turns(mirrors, tmp_path, monkeypatch):
    good = mirrors("good")
    monkeypatch.setenv(MIRRORS_ENV, good.url)
    target = tmp_path / "mnist"
    errors = []

    def fetch():
        try:
            download.download("mnist", target, progress=False, log=lambda line: None)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert len(good.requests) == 4  # the second found the four files the first had verified
    assert sorted(p.name for p in target.iterdir()) == sorted(f.stem + ".gz" for f in FILES["mnist"])


def test_verify_and_its_errors_print_on_an_ascii_terminal(mnist_dir, tmp_path):
    """PYTHONIOENCODING=ascii: no UnicodeEncodeError, whatever the message or the path holds."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-m", "jaxlin.cli", "download", "--verify"]
    ok = subprocess.run([*command, str(mnist_dir)], env=env, capture_output=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(b": ok (sha256 ") == 4 and b"All four mnist files" in ok.stdout
    damaged = tmp_path / "donn\u00e9es"
    damaged.mkdir()
    (damaged / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b damaged")
    bad = subprocess.run([*command, str(damaged)], env=env, capture_output=True, timeout=300, check=False)
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr
    assert bad.stderr.count(b"\n") == 1 and bad.stderr.startswith(b"jaxlin: error: ")
    assert b"donn\\xe9es/t10k-labels-idx1-ubyte.gz: corrupt or truncated gzip data" in bad.stderr
