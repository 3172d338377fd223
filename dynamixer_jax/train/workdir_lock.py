"""One training run per workdir: an exclusive lock on ``WORKDIR/.lock``, and the workdir itself.

Two runs writing one workdir corrupt each other (one deletes the other's save in progress,
``metrics.jsonl`` gets every step twice). A training run therefore holds ``fcntl.flock`` on
``WORKDIR/.lock`` from before it opens the data until it returns; the file says who holds it
(host, pid, start time), so that a second run stops at once with one line naming the first.

What releases the lock, and why a stale one never blocks:

- ``flock`` belongs to the open file, which the kernel closes when the process ends however it
  ends (SIGKILL, a crash, the out-of-memory killer): the lock goes with it. The file stays; its
  contents are only a description, never read to decide anything. A file left by a dead run, or
  by a run on another host whose lock is no longer held, is simply locked again.
- Across hosts, only the file system can tell. On Linux, ``flock`` on NFS is carried out as an
  NFS byte-range lock (since Linux 2.6.12), which every client sees; a client that dies loses
  its locks when the server's lease runs out (NFSv4: about 90 s). File systems that keep locks
  per host (some FUSE mounts, Lustre mounted with ``localflock``) cannot see another host's run:
  there the lock protects against a second run on the same host only. File systems without locks
  (``flock`` fails with ENOLCK or EOPNOTSUPP) get a warning and no lock, rather than no training.
- In a run of several processes (one per host, one shared workdir) only process 0 takes the
  lock; it tells the others whether it got it, so that a second multi-process run stops in every
  process. Evaluation only reads and takes no lock.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from dynamixer_jax.errors import CheckpointError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def create_workdir(workdir: str) -> str:
    """``workdir`` as an absolute path, created if needed; CheckpointError (one line) if it
    cannot be created or written."""
    path = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CheckpointError(
            f"cannot create workdir {path} ({reason}); choose another --workdir"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write in workdir {path} (permission denied)")
    return path


def describe_holder(path: str) -> str:
    """Who holds the lock at ``path``, as its file says (the file may be being written)."""
    try:
        with open(path) as file:
            holder = json.loads(file.read() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not {"host", "pid", "since"} <= set(holder):
        return "another process (it has not written its name yet)"
    return f"pid {holder['pid']} on host {holder['host']} since {holder['since']}"


class WorkdirLock:
    """The exclusive lock of a training run on ``workdir`` (``with WorkdirLock(workdir):``)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Take the lock, or raise CheckpointError naming who holds it (without waiting)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        except OSError as error:
            raise CheckpointError(
                f"cannot create the lock file {self.path} ({error.strerror}); "
                "the workdir must be writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            workdir = os.path.dirname(self.path)
            raise CheckpointError(
                f"workdir {workdir} is in use by another training run: "
                f"{describe_holder(self.path)} ({self.path}); wait for it to end or stop it, "
                "or give this run another --workdir"
            ) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in _NO_LOCKS:
                raise
            log.warning(
                "the file system of %s has no locks (%s): nothing stops a second run on this "
                "workdir",
                self.path,
                error.strerror,
            )
            return self
        self._fd = fd
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        """Let go of the lock (the file stays: removing it could race with the next run)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


@contextlib.contextmanager
def lock_for_training(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock for this process's part of a training run (``with``).

    Process 0 takes ``WORKDIR/.lock``; in a run of several processes it then tells the others
    whether it got it, so that every process of a second run stops with the same one line.
    """
    import jax  # noqa: PLC0415

    lock = WorkdirLock(workdir)
    if jax.process_count() == 1:
        with lock:
            yield
        return
    error = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except CheckpointError as raised:
            error = raised
    import numpy as np  # noqa: PLC0415
    from jax.experimental import multihost_utils  # noqa: PLC0415

    busy = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if error is not None:
        raise error
    if busy:
        raise CheckpointError(
            f"workdir {workdir} is in use by another training run (process 0 names it in "
            f"{os.path.join(workdir, LOCK_FILE)}); give this run another --workdir"
        )
    try:
        yield
    finally:
        lock.release()  # a no-op in the processes that did not take it
