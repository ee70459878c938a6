"""Energy and GPU memory counters, read into each timeline sample.

Meters (the METERS registry; `open_meters` opens every one the machine offers, skipping the
rest: an unreadable counter means "not measured", never an error; one the user can make readable,
RAPL's root-only energy_uj, is named in a warning line):
  nvml  NVIDIA GPUs through NVML (`nvidia-ml-py`): nvmlDeviceGetTotalEnergyConsumption (mJ since
        the driver loaded) and nvmlDeviceGetMemoryInfo().used (bytes, every process on the GPU),
        summed over the GPUs in CUDA_VISIBLE_DEVICES (indices or UUIDs; all GPUs when unset).
        GPUs whose energy counter is unsupported (before Volta) give memory only.
  rapl  Intel/AMD CPU packages through powercap: /sys/class/powercap/intel-rapl:N/energy_uj
        (package zones only: their :N:M subzones are parts of them), µJ, wrapping to 0 past
        max_energy_range_uj; a wrap between two readings adds (max - previous) + current.
        Often readable only by root (chmod a+r energy_uj, or run as root).
  cmd   `run --energy-cmd CMD` (spec key energy_cmd): a shell command that prints the
        machine's cumulative energy in joules (one number on stdout) each time it runs, e.g.
        on Apple Silicon a wrapper around `sudo powermetrics` (docs/running.md, "Energy"). A helper
        process runs it every CMD_PERIOD_S, never the engine loop; a sample during a cell
        carries the latest value it printed (exact to within one period's worth). A cell's two
        ends are read fresh, outside its timed interval: the helper runs the command on request
        before the cell's clock starts and after its last request finished, so a cell's energy
        spans all of it plus the two command runs, however short the cell.
`CellEnergy` turns them into timeline fields: energy_j = joules of all opened meters together
since the cell's session started (GPU + CPU package + command), gpu_bytes = GPU memory in use.
A field is absent when no meter measures it.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")
CMD_PERIOD_S = 1.0
CMD_FRESH_TIMEOUT_S = 30.0  # a fresh reading not in by then: the latest value stands


class RaplMeter:
    """Cumulative joules of the CPU packages under a powercap tree, wrap-around handled."""

    name = "rapl"

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.last = [self._uj(z) for z in zones]
        self.total_uj = 0

    @staticmethod
    def _uj(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    @classmethod
    def open(cls, root: Path | None = None, warn: Callable[[str], None] | None = None) -> RaplMeter | None:
        """The meter over `root` (default POWERCAP), None when it has no package zone or one is
        unreadable; a zone readable by root only (the common case since Linux 5.10) is also
        passed to `warn` as one line naming the file and the fix."""
        zones = sorted(p for p in (root or POWERCAP).glob("intel-rapl:*") if p.name.count(":") == 1)
        try:
            return cls(zones) if zones else None
        except PermissionError as err:
            if warn is not None:
                warn(
                    f"CPU energy not measured: {err.filename} is readable by root only "
                    f"(run as root, or sudo chmod a+r {Path(err.filename).parent.parent}/intel-rapl:*/energy_uj)"
                )
            return None
        except (OSError, ValueError):  # absent or malformed
            return None

    def read(self) -> dict:
        for i, zone in enumerate(self.zones):
            now = self._uj(zone)
            self.total_uj += now - self.last[i] if now >= self.last[i] else self.ranges[i] - self.last[i] + now
            self.last[i] = now
        return {"energy_j": self.total_uj / 1e6}


class NvmlMeter:
    """Energy (J, cumulative since the driver loaded) and memory in use of the visible NVIDIA GPUs."""

    name = "nvml"

    def __init__(self, nvml, handles: list):
        self.nvml, self.handles = nvml, handles
        self.energy_handles = []
        for h in handles:
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(h)
                self.energy_handles.append(h)
            except nvml.NVMLError:  # not supported on this GPU
                pass

    @classmethod
    def open(cls, warn: Callable[[str], None] | None = None) -> NvmlMeter | None:
        try:
            import pynvml as nvml
        except ImportError:
            return None
        try:
            nvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is None:
                handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            else:
                handles = [
                    nvml.nvmlDeviceGetHandleByUUID(d)
                    if d.startswith(("GPU-", "MIG-"))
                    else nvml.nvmlDeviceGetHandleByIndex(int(d))
                    for d in (x.strip() for x in visible.split(","))
                    if d
                ]
        except (nvml.NVMLError, ValueError):  # no driver, no GPU, or an odd CUDA_VISIBLE_DEVICES
            return None
        return cls(nvml, handles) if handles else None

    def read(self) -> dict:
        row = {"gpu_bytes": sum(int(self.nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self.handles)}
        if self.energy_handles:
            row["energy_j"] = sum(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.energy_handles) / 1e3
        return row


_POLLER = """
import select, subprocess, sys
command, period = sys.argv[1], float(sys.argv[2])
kind = "tick"
while True:
    proc = subprocess.run(command, shell=True, capture_output=True, text=True)
    words = proc.stdout.split()
    if proc.returncode or not words:
        err = proc.stderr.strip().splitlines()
        print(kind, "error", repr(proc.stdout.strip()[:80]), err[-1] if err else f"exit {proc.returncode}", flush=True)
    else:
        print(kind, "ok", words[-1], flush=True)
    kind = "tick"
    if select.select([sys.stdin], [], [], period)[0]:
        if not sys.stdin.readline():  # the study closed the pipe
            break
        kind = "now"
"""


class CommandMeter:
    """The joules a user's command prints. A helper process, started before any engine, runs it
    every period (a "tick") and on request (a "now" line on its stdin), and writes each value to a
    pipe that a thread reads, so the engine's process spawns nothing while it decodes."""

    name = "cmd"

    def __init__(self, command: str, period_s: float = CMD_PERIOD_S):
        import sys

        self.command = command
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _POLLER, command, str(period_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.latest = self._first()  # awaited: a broken command fails here
        self._fresh_count = 0  # "now" readings received
        self._ended = False  # the helper's output ended (it exited)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._follow, name="energy-cmd", daemon=True)
        self._thread.start()

    @staticmethod
    def _parse(line: str) -> tuple[str, str, str]:
        """A helper line "KIND STATUS REST" -> (kind, status, rest); ("", "", "") at end of output."""
        kind, _, rest = line.strip().partition(" ")
        status, _, rest = rest.partition(" ")
        return kind, status, rest

    def _first(self) -> float:
        from rllm_study.errors import UserError

        _, status, rest = self._parse(self._proc.stdout.readline())
        try:
            if status != "ok":
                raise ValueError(rest or "no output")
            return float(rest)
        except ValueError as err:
            self.close()
            raise UserError(f"--energy-cmd {self.command!r} must print cumulative joules (a number): {err}") from None

    def _follow(self) -> None:
        for line in self._proc.stdout:
            kind, status, value = self._parse(line)
            with self._changed:
                try:
                    if status == "ok":
                        self.latest = float(value)
                except ValueError:  # a bad reading keeps the last value; the next may be good
                    pass
                if kind == "now":
                    self._fresh_count += 1
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def fresh(self) -> None:
        """Have the helper run the command now and wait for its value (at most
        CMD_FRESH_TIMEOUT_S; an error, a timeout or an exited helper leaves the latest value)."""
        with self._changed:
            asked = self._fresh_count
            try:
                self._proc.stdin.write("now\n")
                self._proc.stdin.flush()
            except OSError:  # the helper is gone: the latest value stands
                return
            self._changed.wait_for(lambda: self._fresh_count > asked or self._ended, timeout=CMD_FRESH_TIMEOUT_S)

    def read(self) -> dict:
        return {"energy_j": self.latest}

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait()


METERS: dict[str, Callable] = {"nvml": NvmlMeter.open, "rapl": RaplMeter.open}


def open_meters(energy_cmd: str | None = None, warn: Callable[[str], None] | None = None) -> list:
    """Every meter this machine offers (and the command meter when a command is given); a meter
    present but unreadable for a reason the user can fix is passed to `warn` (one line)."""
    meters = [m for m in (open_meter(warn=warn) for open_meter in METERS.values()) if m is not None]
    if energy_cmd:
        meters.append(CommandMeter(energy_cmd))
    return meters


class CellEnergy:
    """Timeline fields of the opened meters, energy counted from `start()` (a session's start)."""

    def __init__(self, meters: list):
        self.meters = meters
        self.base = 0.0

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.meters]

    def _raw(self, fresh: bool) -> dict:
        row: dict = {}
        for m in self.meters:
            if fresh and hasattr(m, "fresh"):
                m.fresh()
            for key, value in m.read().items():
                row[key] = row.get(key, 0) + value
        return row

    def start(self) -> None:
        """Before the session's clock starts: the base every later energy_j counts from (read fresh)."""
        self.base = self._raw(fresh=True).get("energy_j", 0.0)

    def read(self, final: bool = False) -> dict:
        """{"energy_j": joules since start(), "gpu_bytes": bytes}, each only where measured; `final`
        (after the session's last request) reads periodic meters fresh, so it costs a command run."""
        row = self._raw(fresh=final)
        if "energy_j" in row:
            row["energy_j"] -= self.base
        return row

    def close(self) -> None:
        for m in self.meters:
            if hasattr(m, "close"):
                m.close()
