"""One training run per workdir: DIR/run.lock, held by process 0 while it trains.

The lock names its holder (host, pid) and carries a heartbeat that a background thread refreshes.
A lock is stale, and taken over with a warning, when its holder's process is gone (same host) or its
heartbeat is older than STALE_S (any host): so after kill -9 the same command simply runs again.
Local locks are created atomically (O_EXCL); on object stores (gs://), which have no exclusive
create here, a new lock is written and read back, which catches all but simultaneous starts.
"""

import json
import os
import socket
import threading
import time
import uuid

import jax
from absl import logging

from jamflow_jax import paths
from jamflow_jax.errors import WorkdirInUseError

HEARTBEAT_S = 30.0
STALE_S = 180.0


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


class RunLock:
  """Context manager: holds DIR/run.lock for the duration of a run (every process enters it; process 0
  takes the lock and the others learn the outcome, so all stop with the same error)."""

  def __init__(self, workdir: str | os.PathLike, what: str = "training"):
    self.path = paths.workdir_path(workdir) / "run.lock"
    self.what = what
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None

  def _record(self) -> str:
    return json.dumps(
      {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": self.token,
        "what": self.what,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "heartbeat": time.time(),
      }
    )

  def _holder(self) -> dict | None:
    """The current lock's record ({} when unreadable, e.g. half written), None when there is none."""
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {}

  def _stale(self, holder: dict) -> bool:
    if not holder:  # unreadable: a writer died mid-write, or is writing now; its age decides
      return self._age() > STALE_S
    if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
      return True
    return time.time() - float(holder.get("heartbeat", 0)) > STALE_S

  def _age(self) -> float:
    try:
      return time.time() - self.path.stat().mtime
    except (FileNotFoundError, OSError):
      return 0.0

  def _create(self) -> bool:
    """Writes our lock if there is none; whether it is ours now."""
    if paths.is_url(self.path):
      if self.path.exists():
        return False
      self.path.write_text(self._record())
      return (self._holder() or {}).get("token") == self.token
    try:
      fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._record())
    return True

  def _acquire(self) -> str | None:
    """None when the lock is ours, else the refusal."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a stale lock is moved away and the creation retried
      if self._create():
        return None
      holder = self._holder()
      if holder is None:
        continue
      if not self._stale(holder):
        return (
          f"{self.path.parent} is in use by another run ({holder.get('what', 'a run')} as pid "
          f"{holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}); "
          f"wait for it or use another --workdir (if no run is using it, delete {self.path})"
        )
      logging.warning(
        "taking over the stale lock of %s (pid %s on %s, last heartbeat %.0f s ago)",
        self.path,
        holder.get("pid", "?"),
        holder.get("host", "?"),
        time.time() - float(holder.get("heartbeat", 0)),
      )
      aside = self.path.parent / f"run.lock.stale-{self.token}"
      try:
        self.path.rename(aside)
        aside.unlink()
      except (FileNotFoundError, OSError):  # another starter moved it first: retry
        pass
    return f"could not take {self.path} (other runs starting at the same time?); try again"

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if (self._holder() or {}).get("token") == self.token:
          self.path.write_text(self._record())
      except OSError as e:  # a failing disk shows up in the checkpoints; the lock just ages
        logging.warning("could not refresh %s: %s", self.path, e)

  def __enter__(self) -> "RunLock":
    refusal = self._acquire() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      refused = multihost_utils.broadcast_one_to_all(int(refusal is not None))
      if refused and refusal is None:
        refusal = f"{self.path.parent} is in use by another run (process 0 could not take {self.path})"
    if refusal:
      raise WorkdirInUseError(refusal)
    if jax.process_index() == 0:
      self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    if (self._holder() or {}).get("token") == self.token:
      self.path.unlink()
