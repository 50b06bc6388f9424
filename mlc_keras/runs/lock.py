"""One training run per model folder: <model_dir>/run.lock, held for the
whole run.

The lock is an exclusive ``flock`` on the file, which the kernel drops when
the process dies however it dies (kill -9 included), plus a JSON record of
the owner (pid, host, start time, command) so that a refused run can name
it. Two cases are told apart when the flock is free but a record is left:

* the record is from this host and its pid is gone (or is another process
  now, told by the pid's start time, or a zombie not yet reaped), or its
  pid lives but this file system's flocks work (so it holds none and is not
  training): the lock is taken over with a message;
* the record is from another host: its process cannot be checked from here,
  and on a shared folder whose file system does not carry flocks between
  hosts a free flock proves nothing, so the run is refused with the owner's
  name and the file to delete once that run is known to be gone.

Multi-worker runs share one folder: only the chief takes the lock (it alone
writes there); the other workers read the chief's checkpoints and write into
folders of their own (training/distributed.py), so they take none. A second
cluster pointed at the same folder is refused at its chief.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Optional

from mlc_keras.core import errors

log = logging.getLogger("mlc_keras")

LOCK_FILE = "run.lock"


class LockedError(errors.MlcError, RuntimeError):
  """The model folder is owned by another run."""


def _proc_start(pid: int) -> Optional[str]:
  """The start time of ``pid`` in clock ticks since boot (Linux /proc), which
  tells a reused pid from the process that wrote a record; None elsewhere."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      # Field 22; the command name (field 2) may hold spaces, so split after it.
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _proc_state(pid: int) -> Optional[str]:
  """The state letter of ``pid`` (Linux /proc: "R", "S", "Z"...), or None."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      return f.read().rsplit(")", 1)[1].split()[0]
  except (OSError, IndexError):
    return None


def pid_alive(pid: int, start: Optional[str] = None) -> bool:
  """Whether process ``pid`` runs on this host (and, given the ``start``
  recorded with it, is still that process). A zombie (state Z: dead, not yet
  reaped by its parent, which in a container without an init can take
  seconds) does not run."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # alive, owned by another user
  if _proc_state(pid) == "Z":
    return False
  now = _proc_start(pid)
  return start is None or now is None or now == start


def _flock_works(path: str) -> tuple[bool, int]:
  """Whether flocks exclude each other on ``path``'s file system, tried
  while this process holds one: a second open of the file must be refused.
  Where it is not (some network file systems), a free flock proves nothing
  and a live owner's pid is what is left to go by. Also returns the second
  descriptor, for the caller to close when it lets go of its lock: where
  flock is emulated by POSIX locks (NFS), closing any descriptor of the
  file would drop this process's lock."""
  fd = os.open(path, os.O_RDWR)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return True, fd
  return False, fd


def describe(owner: dict) -> str:
  started = owner.get("started")
  when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
          if isinstance(started, (int, float)) else "an unknown time")
  return (f"pid {owner.get('pid')} on host {owner.get('host')!r}, started "
          f"{when} ({owner.get('command', '?')})")


def _read_owner(fd: int) -> Optional[dict]:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 65536).decode("utf-8", errors="replace").strip()
  if not text:
    return None
  try:
    owner = json.loads(text)
  except ValueError:
    return {"unreadable": text[:80]}
  return owner if isinstance(owner, dict) else None


class RunLock:
  """Context manager: holds <model_dir>/run.lock (see the module docstring).

  Raises LockedError naming the owner when another live run holds it.
  """

  def __init__(self, model_dir: str, command: Optional[str] = None):
    self.path = os.path.join(model_dir, LOCK_FILE)
    self.command = command or " ".join(sys.argv) or "python"
    self.took_over: Optional[dict] = None
    self._fd: Optional[int] = None
    self._probe_fd: Optional[int] = None  # see _flock_works

  def acquire(self) -> "RunLock":
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        owner = _read_owner(fd) or {}
        os.close(fd)
        raise LockedError(
            f"{os.path.dirname(self.path)} is in use by another training run "
            f"({describe(owner)}). Wait for it to end, or train into another "
            "`model_dir`.") from None
      # A releasing owner unlinks the file: if ours is no longer the one at
      # the path, another run may create and lock a new one; start again.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    try:
      self._check_left_record(fd)
    except LockedError:
      os.close(fd)
      self._close_probe()
      raise
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.time(), "proc_start": _proc_start(os.getpid()),
              "command": self.command}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    os.fsync(fd)
    self._fd = fd
    return self

  def _check_left_record(self, fd: int) -> None:
    """A record under a free flock: a killed owner (taken over) or one this
    host cannot check (refused)."""
    owner = _read_owner(fd)
    if owner is None:
      return
    pid, host = owner.get("pid"), owner.get("host")
    if "unreadable" in owner:
      # A record cut short (disk full, a crash mid-write): no owner to name.
      self.took_over = owner
      log.warning("%s: taking over a lock whose record is unreadable (%r)",
                  self.path, owner["unreadable"])
      return
    if host == socket.gethostname() and isinstance(pid, int):
      # On a file system whose flocks work, the flock is the authority: an
      # owner alive without it is not training here (it has let go).
      if (pid_alive(pid, owner.get("proc_start")) and pid != os.getpid()
          and not self._flock_works()):
        raise LockedError(
            f"{os.path.dirname(self.path)} is in use by another training run "
            f"({describe(owner)}), which holds no flock on {self.path} (a "
            "file system without locks?). Wait for it to end, or train into "
            "another `model_dir`.")
      self.took_over = owner
      log.warning("%s: taking over the lock of a run that is gone (%s)",
                  self.path, describe(owner))
      return
    raise LockedError(
        f"{self.path} names a run on another host ({describe(owner)}); it "
        "cannot be checked from here. If that run has ended (or was killed), "
        f"delete {self.path} and start again; otherwise train into another "
        "`model_dir`.")

  def _flock_works(self) -> bool:
    works, self._probe_fd = _flock_works(self.path)
    return works

  def _close_probe(self) -> None:
    if self._probe_fd is not None:
      os.close(self._probe_fd)
      self._probe_fd = None

  def release(self) -> None:
    if self._fd is None:
      return
    # Unlinked before the flock is dropped: a waiting run then sees that its
    # file is gone and opens a new one (acquire's samestat check).
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None
    self._close_probe()

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
