"""Shared-memory segments and process liveness tokens.

A Segment is one POSIX shared-memory object mapped into this process: created
(owner-only, space reserved) or attached, then closed. close() is not
unlink(): only the Broker that owns a namespace unlinks its segments
(remove_namespace), and a failed attach never unlinks anything.

Every file of a broker belongs to one user (owner_uid): /dev/shm is writable
by everyone, so a file with a broker's name that another user made there is
planted, and is never used (attach refuses it, the reaper ignores it).

The files of a broker's bridges are named here too (their figures, read by
stats(), and their echo ranges).

A liveness token says a process is alive in a way that survives pid reuse and
pid namespaces: the process holds an exclusive flock on its own file
/dev/shm/pymq.<name>..proc.<token>; the kernel drops the lock when the process
dies, so anyone who can take the lock knows the holder is gone. The file also
records pid, start time and pid namespace, checked with psutil where the
namespace is ours (a forked child that inherited the descriptor keeps the lock,
but not the pid).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import mmap
import os
import time

import posix_ipc
import psutil

from .errors import SegmentMismatch, StorageFull

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
# Populate the page tables at mmap time: no page fault on the hot path later.
MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
NS_SUFFIX = "..ns"
PROC_INFIX = "..proc."


def ns_shm_name(name: str) -> str:
    return f"/pymq.{name}{NS_SUFFIX}"


def topic_shm_name(name: str, topic: str) -> str:
    return f"/pymq.{name}.{topic}"


def namespace_prefix(name: str) -> str:
    return f"pymq.{name}."


def broker_of(entry: str) -> str | None:
    """The broker name in a segment name or /dev/shm path ("/pymq.<name>.<topic>",
    ".../pymq.<name>..proc.<token>"), or None if it is not one of pymq's."""
    base = os.path.basename(entry)
    return base.split(".")[1] if base.startswith("pymq.") and base.count(".") >= 2 else None


def owner_uid(name: str | None) -> int:
    """The user every file of broker `name` must belong to: this process's own
    (segments, tokens and the control socket are owner-only), or, for root,
    the owner of the broker's namespace segment (root may look at another
    user's broker)."""
    uid = os.geteuid()
    if uid == 0 and name is not None:
        try:
            return os.stat(os.path.join(SHM_DIR, ns_shm_name(name).lstrip("/"))).st_uid
        except FileNotFoundError:
            pass
    return uid


class Segment:
    """A mapped shared-memory object. Use create() or attach(); then close()."""

    def __init__(self, shm_name: str, mm: mmap.mmap, created: bool):
        self.shm_name = shm_name
        self.mm = mm
        self.created = created

    @classmethod
    def create(cls, shm_name: str, size: int, mode: int = 0o600) -> "Segment":
        """Create a new object (FileExistsError if it exists), reserve its space."""
        shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=mode, size=0)
        try:
            os.fchmod(shm.fd, mode)  # whatever the umask
            try:
                os.posix_fallocate(shm.fd, 0, size)  # tmpfs reserves now: no SIGBUS later
            except OSError as e:
                raise StorageFull(e.errno, f"cannot reserve {size:,} bytes in {SHM_DIR} for "
                                  f"{shm_name}: {e.strerror} (is /dev/shm full or too "
                                  "small?)") from e
            mm = mmap.mmap(shm.fd, size, flags=MAP_FLAGS)
        except BaseException:
            shm.unlink()  # ours: nobody else can have attached a segment not yet ready
            shm.close_fd()
            raise
        shm.close_fd()
        return cls(shm_name, mm, True)

    @classmethod
    def attach(cls, shm_name: str) -> "Segment":
        """Map an existing object (posix_ipc.ExistentialError if there is none;
        SegmentMismatch if another user than the broker's made it)."""
        shm = posix_ipc.SharedMemory(shm_name)
        try:
            st = os.fstat(shm.fd)
            want = owner_uid(broker_of(shm_name))
            if st.st_uid != want:
                raise SegmentMismatch(f"{shm_name} belongs to uid {st.st_uid}, not to the broker's "
                                      f"user (uid {want}): another user made it in {SHM_DIR}, "
                                      "and pymq does not use it")
            size = st.st_size
            if size == 0:
                raise posix_ipc.ExistentialError(f"{shm_name} is empty (being created)")
            mm = mmap.mmap(shm.fd, size, flags=MAP_FLAGS)
        finally:
            shm.close_fd()
        return cls(shm_name, mm, False)

    def close(self) -> None:
        """Unmap. Whoever wrapped self.mm in cffi pointers must release them first.
        While zero-copy views of it exist, the mapping stays until they are gone."""
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass  # views still use it: the mmap object unmaps when they let go
            self.mm = None


def unlink(shm_name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(shm_name)
        return True
    except posix_ipc.ExistentialError:
        return False


def age(shm_name: str) -> float:
    """Seconds since the object was last modified; infinity if it does not exist."""
    try:
        return time.time() - os.stat(os.path.join(SHM_DIR, shm_name.lstrip("/"))).st_mtime
    except FileNotFoundError:
        return float("inf")


def namespace_entries(name: str) -> list[str]:
    """File names in /dev/shm that belong to broker `name`."""
    prefix = namespace_prefix(name)
    try:
        return sorted(e for e in os.listdir(SHM_DIR) if e.startswith(prefix))
    except FileNotFoundError:
        return []


def topic_names(name: str) -> list[str]:
    """Topics of broker `name` that have a segment (entries not starting with '.')."""
    prefix = namespace_prefix(name)
    return [e[len(prefix):] for e in namespace_entries(name) if not e[len(prefix):].startswith(".")]


def remove_namespace(name: str) -> list[str]:
    """Remove every segment and token file of broker `name`; return what was
    removed. A file another user made there cannot be removed (/dev/shm is
    sticky): it is left, and logged."""
    removed = []
    for entry in namespace_entries(name):
        try:
            os.unlink(os.path.join(SHM_DIR, entry))
            removed.append(entry)
        except FileNotFoundError:
            pass
        except PermissionError:
            log.warning("cannot remove %s: it belongs to another user (uid %s)",
                        os.path.join(SHM_DIR, entry), _uid_of(os.path.join(SHM_DIR, entry)))
    return removed


def _uid_of(path: str) -> int | str:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return "?"


# -- liveness ----------------------------------------------------------------

def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int | None = None) -> float:
    """Start time of a process (epoch seconds), as psutil gives it."""
    return psutil.Process(pid).create_time() if pid else psutil.Process().create_time()


def process_state(pid: int) -> str:
    """What a process of our pid namespace is doing, for reports: "stopped"
    (SIGSTOP, or frozen under a debugger), "running", "gone" or "unknown"."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"
    except psutil.Error:
        return "unknown"
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return "stopped"
    return "gone" if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) else "running"


def start_stamp() -> int:
    """This process's start time in milliseconds since the epoch: with the pid,
    it names a process (a recycled pid has another start time)."""
    return int(process_start() * 1000)


class Token:
    """This process's liveness token in namespace `name`: a locked file."""

    def __init__(self, name: str):
        self.value = int.from_bytes(os.urandom(8), "little") >> 1 | 1  # 63 random bits
        self.path = token_path(name, self.value)
        tmp = self.path + ".new"
        info = json.dumps({"pid": os.getpid(), "start": process_start(), "pidns": _pidns()})
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _token_error(e, tmp) from None
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.write(fd, info.encode()) != len(info):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.rename(tmp, self.path)  # only a locked file ever has the final name
        except BaseException as e:
            os.close(fd)
            os.unlink(tmp)
            if isinstance(e, OSError):
                raise _token_error(e, tmp) from None
            raise
        self.fd = fd
        self.pid = os.getpid()

    def close(self) -> None:
        """Give the token up (the process is done with the namespace)."""
        if self.fd is not None and self.pid == os.getpid():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
        self.fd = None


def _token_error(e: OSError, path: str) -> OSError:
    """A token file that cannot be written: StorageFull when /dev/shm is full."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(e.errno, f"cannot write this process's liveness token {path} "
                           f"(one page, {mmap.PAGESIZE:,} bytes, in {SHM_DIR}): {e.strerror} "
                           "(is /dev/shm full or too small?)")
    return e


def token_of(path: str) -> int | None:
    """The token value a token file name carries, or None if it is not one."""
    base = os.path.basename(path)
    i = base.find(PROC_INFIX)
    if i < 0 or base.endswith(".new"):
        return None
    try:
        return int(base[i + len(PROC_INFIX):], 16)
    except ValueError:
        return None


def token_files(name: str) -> list[str]:
    """The token files of broker `name` (those of its user: see owner_uid)."""
    uid = owner_uid(name)
    return [path for path in (os.path.join(SHM_DIR, e) for e in namespace_entries(name)
                              if token_of(e) is not None) if _uid_of(path) == uid]


def _pid_says_dead(info: dict) -> bool:
    """True if the recorded pid is, in our own pid namespace, not that process any more."""
    if info.get("pidns") != _pidns() or not isinstance(info.get("pid"), int):
        return False  # another namespace: the pid means nothing here; trust the lock
    try:
        return abs(process_start(info["pid"]) - float(info.get("start", 0))) > 0.05
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except (psutil.Error, TypeError, ValueError):
        return False


def read_token_info(fd: int) -> dict:
    raw = os.pread(fd, 4096, 0)
    try:
        info = json.loads(raw.decode())
        return info if isinstance(info, dict) else {}
    except (ValueError, RecursionError):  # not UTF-8 or not JSON, or nested too deep
        return {}


class DeadToken:
    """A token whose process is gone, locked by us until release()."""

    def __init__(self, path: str, value: int, fd: int | None, info: dict):
        self.path, self.value, self.fd, self.info = path, value, fd, info

    def release(self) -> None:
        """Remove the token file: call after everything it owned was reaped."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """Let go of the file and leave it: its reaping is not finished."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def probe_token(path: str) -> DeadToken | None:
    """A DeadToken if the process behind the token file is gone, else None
    (also for a file of another user: not a token of this broker's)."""
    value = token_of(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):  # gone, or another user's
        return None
    if os.fstat(fd).st_uid != owner_uid(broker_of(path)):
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = read_token_info(fd)
        if _pid_says_dead(info):
            return DeadToken(path, value, fd, info)
        os.close(fd)
        return None
    return DeadToken(path, value, fd, read_token_info(fd))


def token_path(name: str, value: int) -> str:
    return os.path.join(SHM_DIR, f"pymq.{name}{PROC_INFIX}{value:016x}")


def token_alive(path: str) -> bool:
    """True while the process behind the token file lives."""
    dead = probe_token(path) if os.path.exists(path) else True
    if dead is None:
        return True
    if isinstance(dead, DeadToken):
        dead.close()  # leave the file: its reaper removes it
    return False


# ---- the files of a broker's bridges (pymq bridge --node NODE) -----------------------

def bridge_figures_path(name: str, node: str) -> str:
    """Where bridge `node` writes its figures (JSON, rewritten every second)."""
    return os.path.join(SHM_DIR, f"{namespace_prefix(name)}.bridge-{node}.json")


def bridge_echo_path(name: str, node: str) -> str:
    """Where bridge `node` keeps the seq ranges that came in from NATS."""
    return os.path.join(SHM_DIR, f"{namespace_prefix(name)}.bridge-{node}.echo")


def bridge_figures(name: str) -> dict[str, Any]:
    """The figures of broker `name`'s bridges, by node, from their files in
    /dev/shm (validated: JSON objects only; a bridge whose token is dead is
    "alive": false)."""
    prefix = namespace_prefix(name) + ".bridge-"
    out: dict[str, Any] = {}
    for entry in namespace_entries(name):
        if not (entry.startswith(prefix) and entry.endswith(".json")):
            continue
        try:
            with open(os.path.join(SHM_DIR, entry), "rb") as f:
                if os.fstat(f.fileno()).st_uid != owner_uid(name):
                    continue  # not the broker's user's: not one of its bridges
                fig = json.loads(f.read(1 << 20))
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(fig, dict) or not isinstance(fig.get("node"), str):
            continue
        token = fig.get("token")
        fig["alive"] = isinstance(token, int) and token > 0 and token_alive(
            token_path(name, token))
        out[fig["node"]] = fig
    return out
