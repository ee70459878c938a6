"""Energy meters: RAPL on a fake powercap tree (with a wrap-around), the --energy-cmd meter with a
tiny script, NVML parsing with a fake pynvml, the energy metrics, and a real run with --energy-cmd."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from conftest import run_cli
from rllm_study.analysis.metrics import cell_metrics
from rllm_study.errors import UserError
from rllm_study.report.columns import J_PER_TOKEN, cell_value
from rllm_study.running.energy import CellEnergy, CommandMeter, NvmlMeter, RaplMeter
from rllm_study.running.results import Cell, read_cell
from scripted_engine import run_scripted


def _zone(root: Path, name: str, uj: int, max_uj: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_sums_packages_skips_subzones_and_handles_wrap(tmp_path):
    p0 = _zone(tmp_path, "intel-rapl:0", 1_000_000, 10_000_000)
    p1 = _zone(tmp_path, "intel-rapl:1", 9_000_000, 10_000_000)
    sub = _zone(tmp_path, "intel-rapl:0:0", 500_000, 10_000_000)  # core, part of package 0
    meter = RaplMeter.open(tmp_path)
    assert [z.name for z in meter.zones] == ["intel-rapl:0", "intel-rapl:1"]
    assert meter.read() == {"energy_j": 0.0}
    (p0 / "energy_uj").write_text("3000000")  # +2 J
    (p1 / "energy_uj").write_text("500000")  # wrapped: (10 - 9) + 0.5 = +1.5 J
    (sub / "energy_uj").write_text("9000000")  # ignored
    assert meter.read() == {"energy_j": pytest.approx(3.5)}
    (p1 / "energy_uj").write_text("1500000")  # +1 J
    assert meter.read() == {"energy_j": pytest.approx(4.5)}


def test_rapl_absent_or_unreadable_is_not_measured(tmp_path):
    assert RaplMeter.open(tmp_path) is None
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("5")  # no max_energy_range_uj
    assert RaplMeter.open(tmp_path) is None


def test_rapl_readable_by_root_only_is_not_measured_and_named(tmp_path, monkeypatch):
    """The common real case: the zone's files exist, max_energy_range_uj is world-readable and
    energy_uj is mode 0400 root (Linux >= 5.10), so opening it as a user is a PermissionError. The
    tests run as root, so the refusal is made at that path: the meter is not opened, the study's
    warning names the file and the fix, and nothing raises."""
    from rllm_study.running import energy

    zone = _zone(tmp_path, "intel-rapl:0", 1_000_000, 10_000_000)
    (zone / "energy_uj").chmod(0o400)
    real = Path.read_text

    def as_a_user(path, *args, **kwargs):
        if path == zone / "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", as_a_user)
    notes: list[str] = []
    assert RaplMeter.open(tmp_path, warn=notes.append) is None
    assert notes == [
        f"CPU energy not measured: {zone / 'energy_uj'} is readable by root only "
        f"(run as root, or sudo chmod a+r {tmp_path}/intel-rapl:*/energy_uj)"
    ]
    # through the registry, as a run opens its meters: no rapl meter, the same one line, no error
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    monkeypatch.setitem(energy.METERS, "nvml", lambda warn=None: None)  # whatever GPU this machine has
    notes.clear()
    assert energy.open_meters(warn=notes.append) == [] and len(notes) == 1
    assert CellEnergy(energy.open_meters()).read() == {}  # no energy field: "not measured", not 0 J
    # a run says it once, after its cells (so a run that stops on an error still says one line)
    from io import StringIO

    from rich.console import Console

    from rllm_study.running.runner import run_study
    from rllm_study.running.spec import expand
    from scripted_engine import scripted_backend

    spec = {"name": "e", "datasets": {"gsm8k": 1}, "max_tokens": [4], "backend": "scripted", "models": ["scripted"]}
    said = StringIO()
    with scripted_backend():
        (cell_dir,) = run_study(expand(spec, "spec.toml"), spec, tmp_path / "out", Console(file=said, width=400))
    assert said.getvalue().strip().splitlines()[-1] == f"warning: {notes[0]}"
    timeline = read_cell(cell_dir).timeline
    assert timeline and not any("energy_j" in sample for sample in timeline)


def test_command_meter_and_cell_energy_count_from_start(tmp_path):
    counter = tmp_path / "joules"
    counter.write_text("100.0")
    meter = CommandMeter(f"cat {counter}", period_s=0.05)
    try:
        energy = CellEnergy([meter])
        energy.start()
        counter.write_text("112.5")
        import time

        deadline = time.time() + 10
        while meter.latest != 112.5 and time.time() < deadline:
            time.sleep(0.05)
        assert energy.read() == {"energy_j": pytest.approx(12.5)}
        assert energy.names == ["cmd"]
    finally:
        meter.close()


def test_cell_ends_are_read_fresh_not_one_period_late(tmp_path):
    """With a period far longer than the cell, start() and read(final=True) still see the
    counter's value at that moment: the helper runs the command on request."""
    counter = tmp_path / "joules"
    counter.write_text("5")
    meter = CommandMeter(f"cat {counter}", period_s=3600)
    try:
        energy = CellEnergy([meter])
        counter.write_text("7")
        energy.start()
        counter.write_text("9.5")
        assert energy.read() == {"energy_j": 0.0}  # mid-cell: the latest periodic value
        assert energy.read(final=True) == {"energy_j": pytest.approx(2.5)}
        meter._proc.kill()  # a helper that died: the end reading keeps the latest value, no 30 s wait
        meter._proc.wait()
        counter.write_text("20")
        assert energy.read(final=True) == {"energy_j": pytest.approx(2.5)}
    finally:
        meter.close()


@pytest.mark.parametrize("command,needle", [("echo watts", "watts"), ("exit 3", "exit 3")])
def test_bad_energy_command_is_a_user_error(command, needle):
    with pytest.raises(UserError, match=needle):
        CommandMeter(command)


def _fake_pynvml(energy_mj: dict, used: dict):
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nvml.NVMLError = NVMLError
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(used)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    nvml.nvmlDeviceGetHandleByUUID = lambda u: {"GPU-b": "gpu1"}[u]

    def total_energy(h):
        if h not in energy_mj:
            raise NVMLError("Not Supported")
        return energy_mj[h]

    nvml.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=used[h], total=80 * 2**30)
    return nvml


def test_nvml_reading_with_a_fake_pynvml(monkeypatch):
    energy_mj = {"gpu0": 5_000_000, "gpu1": 2_000}
    used = {"gpu0": 3 * 2**30, "gpu1": 2**30, "gpu2": 2**20}  # gpu2: memory only
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(energy_mj, used))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    meter = NvmlMeter.open()
    energy = CellEnergy([meter])
    energy.start()
    energy_mj["gpu0"] += 1500  # +1.5 J
    energy_mj["gpu1"] += 500  # +0.5 J
    assert energy.read() == {"gpu_bytes": 4 * 2**30 + 2**20, "energy_j": pytest.approx(2.0)}

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b")
    only = NvmlMeter.open()
    assert only.read() == {"gpu_bytes": 2**30, "energy_j": pytest.approx(2.5)}


def test_nvml_absent_is_not_measured(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert NvmlMeter.open() is None


def test_energy_metrics_per_session_and_not_measured():
    timeline = [
        {"session": 0, "t_s": 0.0, "energy_j": 0.0},
        {"session": 0, "t_s": 2.0, "energy_j": 30.0},
        {"session": 1, "t_s": 0.0, "energy_j": 0.0},
        {"session": 1, "t_s": 1.0, "energy_j": 10.0},
        {"session": 2, "t_s": 5.0},  # resumed on a machine without counters
    ]
    requests = [
        {"id": "a", "session": 0, "output_tokens": 60, "finish_reason": "stop"},
        {"id": "b", "session": 1, "output_tokens": 20, "finish_reason": "stop"},
        {"id": "c", "session": 2, "output_tokens": 500, "finish_reason": "stop"},
    ]
    m = cell_metrics(Cell(Path("."), {"cell": {"name": "x"}}, requests, {}, timeline))["energy"]
    assert m == {"energy_j": 40.0, "j_per_token": 0.5, "tokens_per_j": 2.0, "avg_power_w": pytest.approx(40 / 3)}
    none = cell_metrics(Cell(Path("."), {"cell": {"name": "y"}}, requests, {}, timeline[-1:]))
    assert set(none["energy"].values()) == {None} and none["memory"]["gpu_bytes"] is None
    assert cell_value(none, J_PER_TOKEN) == "not measured" and cell_value({"energy": m}, J_PER_TOKEN) == "0.500"


def test_run_with_energy_cmd_records_energy_in_the_timeline(tmp_path):
    """The runner's energy path (a real --energy-cmd helper process) on the scripted engine, in process;
    the meters' own readings are tested above, a real model's run in test_runner.py."""
    script = tmp_path / "joules.py"  # a 10 W machine: cumulative joules = 10 x seconds
    script.write_text("import time\nprint(time.time() * 10)\n")
    (cell_dir,) = run_scripted(
        tmp_path / "out",
        preset="pilot",
        step_s=0.002,
        overrides=(
            "max_tokens=[32]",
            "datasets={gsm8k=2}",
            "prompt_modes=['direct']",
            "workload.batch_size=2",
            f"energy_cmd='{sys.executable} {script}'",
        ),
    )
    timeline = [json.loads(line) for line in (cell_dir / "timeline.jsonl").read_text().splitlines()]
    assert all("energy_j" in s for s in timeline) and timeline[-1]["energy_j"] > 0
    assert json.loads((cell_dir / "manifest.json").read_text())["energy_meters"] == ["cmd"]
    summary = json.loads(run_cli("summarize", cell_dir, "--json").stdout)[0]
    tokens = sum(json.loads(line)["output_tokens"] for line in (cell_dir / "requests.jsonl").read_text().splitlines())
    assert summary["energy"]["j_per_token"] == pytest.approx(timeline[-1]["energy_j"] / tokens)
    # its average power (10 W, the ends read fresh) is checked on the real pilot's longer cells: test_runner.py
