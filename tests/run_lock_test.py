"""The model_dir lock: refused while its owner lives, taken over once it is
killed (a real process, kill -9), other hosts' records never guessed at."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from unittest import mock

import tensorflow as tf

from mlc_keras.runs import lock as run_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLDER = textwrap.dedent("""
    import sys, time
    from mlc_keras.runs import lock as run_lock
    run_lock.RunLock(sys.argv[1], command="holder").acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


class RunLockTest(tf.test.TestCase):

  def _holder(self, model_dir):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, model_dir],
                            stdout=subprocess.PIPE, text=True, env=env)
    self.addCleanup(lambda: proc.poll() is None and proc.kill())
    self.assertEqual(proc.stdout.readline().strip(), "locked")
    return proc

  def test_refused_while_alive_taken_over_after_kill_9(self):
    model_dir = os.path.join(self.get_temp_dir(), "run")
    holder = self._holder(model_dir)
    with self.assertRaisesRegex(
        run_lock.LockedError,
        f"in use by another training run .pid {holder.pid} on host "
        f"'{socket.gethostname()}', started .* \\(holder\\)"):
      run_lock.RunLock(model_dir).acquire()
    holder.send_signal(signal.SIGKILL)
    self.assertEqual(holder.wait(timeout=30), -signal.SIGKILL)
    # The killed owner's record is still in the file; its flock is gone.
    with open(os.path.join(model_dir, run_lock.LOCK_FILE)) as f:
      self.assertEqual(json.load(f)["pid"], holder.pid)
    with self.assertLogs("mlc_keras", "WARNING") as logs:
      lock = run_lock.RunLock(model_dir, command="second").acquire()
    self.assertEqual(lock.took_over["pid"], holder.pid)
    self.assertIn(f"taking over the lock of a run that is gone (pid "
                  f"{holder.pid}", logs.output[0])
    with open(lock.path) as f:
      self.assertEqual(json.load(f)["pid"], os.getpid())
    lock.release()
    self.assertFalse(os.path.exists(lock.path))
    # Free again: a third run takes it without any message.
    with run_lock.RunLock(model_dir) as third:
      self.assertIsNone(third.took_over)

  def test_record_of_another_host_is_refused_until_deleted(self):
    model_dir = self.get_temp_dir()
    path = os.path.join(model_dir, run_lock.LOCK_FILE)
    with open(path, "w") as f:
      json.dump({"pid": 4242, "host": "gpu-node-7", "started": 0,
                 "command": "train"}, f)
    with self.assertRaisesRegex(run_lock.LockedError,
                                "pid 4242 on host 'gpu-node-7'.*delete "
                                + path):
      run_lock.RunLock(model_dir).acquire()
    os.remove(path)
    with run_lock.RunLock(model_dir) as lock:
      self.assertIsNone(lock.took_over)

  def test_reused_pid_is_not_the_owner(self):
    # Our own parent is alive, but started at another time than recorded.
    model_dir = self.get_temp_dir()
    with open(os.path.join(model_dir, run_lock.LOCK_FILE), "w") as f:
      json.dump({"pid": os.getppid(), "host": socket.gethostname(),
                 "proc_start": "1", "started": 0}, f)
    self.assertTrue(run_lock.pid_alive(os.getppid()))
    self.assertFalse(run_lock.pid_alive(os.getppid(), "1"))
    with run_lock.RunLock(model_dir) as lock:
      self.assertEqual(lock.took_over["pid"], os.getppid())

  def test_killed_owner_not_yet_reaped_is_gone(self):
    # A child killed and not waited for stays a zombie (state Z), as a
    # killed trainer does where PID 1 reaps late; os.kill(pid, 0) still
    # succeeds on it.
    child = subprocess.Popen(["sleep", "60"])
    self.addCleanup(child.wait)
    start = run_lock._proc_start(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    for _ in range(200):
      if run_lock._proc_state(child.pid) == "Z":
        break
      time.sleep(0.01)
    self.assertEqual(run_lock._proc_state(child.pid), "Z")
    os.kill(child.pid, 0)  # no error: only its state tells it is dead
    self.assertFalse(run_lock.pid_alive(child.pid, start))
    model_dir = self.get_temp_dir()
    with open(os.path.join(model_dir, run_lock.LOCK_FILE), "w") as f:
      json.dump({"pid": child.pid, "host": socket.gethostname(),
                 "proc_start": start, "started": 0}, f)
    with mock.patch.object(run_lock, "_flock_works",
                           lambda path: (False, os.open(path, os.O_RDONLY))):
      with run_lock.RunLock(model_dir) as lock:  # even without flocks
        self.assertEqual(lock.took_over["pid"], child.pid)

  def test_live_pid_without_the_flock_counts_only_where_flocks_fail(self):
    # Our parent lives (with the start time recorded) but holds no flock.
    model_dir = self.get_temp_dir()
    record = {"pid": os.getppid(), "host": socket.gethostname(),
              "proc_start": run_lock._proc_start(os.getppid()), "started": 0}
    path = os.path.join(model_dir, run_lock.LOCK_FILE)
    with open(path, "w") as f:
      json.dump(record, f)
    with mock.patch.object(run_lock, "_flock_works",
                           lambda p: (False, os.open(p, os.O_RDONLY))):
      with self.assertRaisesRegex(run_lock.LockedError,
                                  f"pid {os.getppid()} .*which holds no "
                                  "flock"):
        run_lock.RunLock(model_dir).acquire()
    # Here flocks work (a local file system): the flock is the authority.
    with run_lock.RunLock(model_dir) as lock:
      self.assertEqual(lock.took_over["pid"], os.getppid())
      works, fd = run_lock._flock_works(lock.path)
      os.close(fd)
      self.assertTrue(works)

  def test_unreadable_record_is_taken_over(self):
    model_dir = self.get_temp_dir()
    with open(os.path.join(model_dir, run_lock.LOCK_FILE), "w") as f:
      f.write('{"pid": 12')
    with run_lock.RunLock(model_dir) as lock:
      self.assertEqual(lock.took_over, {"unreadable": '{"pid": 12'})


if __name__ == "__main__":
  tf.test.main()
