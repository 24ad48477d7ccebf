"""Running the command line in a process of its own, for the tests of pymq.cli,
pymq.demo and pymq.bench (not fixtures: those are in the test modules)."""

import os
import queue
import signal
import subprocess
import sys
import threading

# Where the CLI would look unless told: not the environment of whoever runs the tests.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("MQ_SERVICE_ENDPOINT", "PYMQ_DEBUG", "PYMQ_ADMIN_TOKEN")
             and not (k.startswith("PYMQ_") and k != "PYMQ_EXPECT_SANITIZED")}


def pymq_cli(*args, timeout=120, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "pymq", *args], capture_output=True, text=True,
                          timeout=timeout, env={**CLEAN_ENV, **(env or {})}, input=input)


class Running:
    """`python -m pymq ARGS` in the background, its stdout lines in a queue."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "pymq", *args], text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**CLEAN_ENV, **(env or {})})
        self.lines = queue.Queue()
        self.out = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line(self, timeout=30):
        line = self.lines.get(timeout=timeout)
        assert line is not None, "it ended: " + self.proc.stderr.read()
        self.out.append(line)
        return line

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Send sig; (exit status, the rest of stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout=30):
        rc = self.proc.wait(timeout)
        self.reader.join(timeout)
        rest = []
        while (line := self.lines.get()) is not None:
            rest.append(line)
        return rc, "".join(rest), self.proc.stderr.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def one_line_error(r, *words):
    """r failed (exit status 1) with one line on stderr that holds every word."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]
