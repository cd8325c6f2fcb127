"""The rapl meter, read from fake powercap trees laid out as Linux lays out /sys/class/powercap."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pytest_energy.errors import (
    ImplausibleReading,
    MeasurementError,
    MeterError,
    MeterUnavailable,
)
from pytest_energy.meters.rapl import RaplMeter, energy_delta_microjoules

MAX_RANGE_MICROJOULES = 262_143_328_850


class FakePowercap:
    """A powercap tree: zone directories under ``devices/`` and links to them in ``class/``.

    As in sysfs, a subzone such as ``intel-rapl:0:1`` is a directory inside its parent zone and
    also appears as a link in the flat class directory, which is the root the meter reads.
    """

    def __init__(self, base: Path) -> None:
        self.root = base / "class" / "powercap"
        self.root.mkdir(parents=True)
        self.devices = base / "devices"
        self.zone_dirs: dict[str, Path] = {}

    def add_zone(
        self,
        zone_id: str,
        name: str,
        microjoules: int = 1_000_000,
        max_microjoules: int = MAX_RANGE_MICROJOULES,
        linked: bool = True,
    ) -> Path:
        interface, _, indices = zone_id.partition(":")
        parent_id = zone_id.rsplit(":", 1)[0] if indices.count(":") else None
        parent_dir = self.zone_dirs[parent_id] if parent_id else self.devices / interface
        directory = parent_dir / zone_id
        directory.mkdir(parents=True)
        (directory / "name").write_text(f"{name}\n")
        (directory / "energy_uj").write_text(f"{microjoules}\n")
        (directory / "max_energy_range_uj").write_text(f"{max_microjoules}\n")
        if linked:
            (self.root / zone_id).symlink_to(directory)
        self.zone_dirs[zone_id] = directory
        return directory

    def energy(self, zone_id: str) -> int:
        return int((self.zone_dirs[zone_id] / "energy_uj").read_text())

    def advance(self, zone_id: str, joules: float) -> None:
        """Add energy to a zone's counter, wrapping at its range as the hardware does."""
        directory = self.zone_dirs[zone_id]
        max_microjoules = int((directory / "max_energy_range_uj").read_text())
        microjoules = (self.energy(zone_id) + round(joules * 1e6)) % max_microjoules
        (directory / "energy_uj").write_text(f"{microjoules}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> FakePowercap:
    return FakePowercap(tmp_path)


@pytest.fixture
def server(powercap: FakePowercap) -> FakePowercap:
    """Two sockets, each a package with core, uncore and dram subzones."""
    for socket in (0, 1):
        powercap.add_zone(f"intel-rapl:{socket}", f"package-{socket}")
        powercap.add_zone(f"intel-rapl:{socket}:0", "core")
        powercap.add_zone(f"intel-rapl:{socket}:1", "uncore")
        powercap.add_zone(f"intel-rapl:{socket}:2", "dram")
    return powercap


@pytest.fixture
def laptop(powercap: FakePowercap) -> FakePowercap:
    """A client part: package with core, uncore and dram, psys, and the MMIO package twin."""
    powercap.add_zone("intel-rapl:0", "package-0")
    powercap.add_zone("intel-rapl:0:0", "core")
    powercap.add_zone("intel-rapl:0:1", "uncore")
    powercap.add_zone("intel-rapl:0:2", "dram")
    powercap.add_zone("intel-rapl:1", "psys")
    powercap.add_zone("intel-rapl-mmio:0", "package-0")
    return powercap


def test_meter_identity_matches_the_meter_protocol() -> None:
    assert (RaplMeter.name, RaplMeter.kind, RaplMeter.min_window_seconds) == (
        "rapl",
        "measured",
        0.01,
    )


def test_reports_joules_per_package_and_dram_between_start_and_stop(server):
    meter = RaplMeter(server.root)
    meter.start()
    server.advance("intel-rapl:0", 12.5)
    server.advance("intel-rapl:0:2", 1.25)
    server.advance("intel-rapl:1", 7.0)
    server.advance("intel-rapl:1:2", 0.5)
    reading = meter.stop()

    assert reading.meter == "rapl"
    assert reading.kind == "measured"
    assert reading.seconds >= 0
    assert reading.joules_by_domain == pytest.approx(
        {"cpu:package-0": 12.5, "dram:0": 1.25, "cpu:package-1": 7.0, "dram:1": 0.5}
    )
    assert reading.joules == pytest.approx(21.25)
    assert reading.details["zones"] == {
        "cpu:package-0": "intel-rapl:0",
        "dram:0": "intel-rapl:0:2",
        "cpu:package-1": "intel-rapl:1",
        "dram:1": "intel-rapl:1:2",
    }


def test_core_and_uncore_are_in_details_only_because_the_package_contains_them(server):
    meter = RaplMeter(server.root)
    meter.start()
    server.advance("intel-rapl:0", 10.0)
    server.advance("intel-rapl:0:0", 6.0)
    server.advance("intel-rapl:0:1", 2.0)
    reading = meter.stop()

    assert reading.joules == pytest.approx(10.0)
    assert "core:0" not in reading.joules_by_domain
    assert reading.details["uncounted_joules"] == pytest.approx(
        {"core:0": 6.0, "uncore:0": 2.0, "core:1": 0.0, "uncore:1": 0.0}
    )
    assert meter.describe()["zones"]["core:0"]["why_uncounted"] == "inside cpu:package-0"


def test_each_window_measures_only_its_own_energy(server):
    meter = RaplMeter(server.root)
    readings = []
    for joules in (1.0, 2.0, 3.0):
        meter.start()
        server.advance("intel-rapl:0", joules)
        readings.append(meter.stop())
        server.advance("intel-rapl:0", 100.0)

    assert [reading.joules_by_domain["cpu:package-0"] for reading in readings] == pytest.approx(
        [1.0, 2.0, 3.0]
    )


def test_a_counter_that_wraps_during_the_window_adds_its_range(powercap):
    range_microjoules = 1_000_000_000
    powercap.add_zone(
        "intel-rapl:0", "package-0", microjoules=999_000_000, max_microjoules=range_microjoules
    )
    meter = RaplMeter(powercap.root)
    meter.start()
    powercap.advance("intel-rapl:0", 3.0)
    reading = meter.stop()

    assert powercap.energy("intel-rapl:0") == 2_000_000
    assert reading.joules_by_domain == pytest.approx({"cpu:package-0": 3.0})
    assert reading.details["wrapped"] == ["cpu:package-0"]


def test_energy_delta_is_end_minus_start_unless_the_counter_wrapped() -> None:
    assert energy_delta_microjoules(start=100, end=350, max_energy_microjoules=1000) == 250
    assert energy_delta_microjoules(start=900, end=50, max_energy_microjoules=1000) == 150
    assert energy_delta_microjoules(start=7, end=7, max_energy_microjoules=1000) == 0


def test_psys_is_left_out_of_the_total_when_package_and_dram_are_counted(laptop):
    meter = RaplMeter(laptop.root)
    meter.start()
    laptop.advance("intel-rapl:0", 8.0)
    laptop.advance("intel-rapl:0:2", 1.0)
    laptop.advance("intel-rapl:1", 11.0)
    reading = meter.stop()

    assert reading.joules_by_domain == pytest.approx({"cpu:package-0": 8.0, "dram:0": 1.0})
    assert reading.details["uncounted_joules"]["psys:0"] == pytest.approx(11.0)
    assert "package" in meter.describe()["zones"]["psys:0"]["why_uncounted"]


def test_psys_is_counted_when_the_platform_exposes_no_package_zone(powercap):
    powercap.add_zone("intel-rapl:0", "psys")
    meter = RaplMeter(powercap.root)
    meter.start()
    powercap.advance("intel-rapl:0", 4.0)
    reading = meter.stop()

    assert reading.joules_by_domain == pytest.approx({"psys:0": 4.0})


def test_the_mmio_twin_of_a_package_is_not_read_so_the_package_counts_once(laptop):
    meter = RaplMeter(laptop.root)
    meter.start()
    laptop.advance("intel-rapl:0", 5.0)
    laptop.advance("intel-rapl-mmio:0", 5.0)
    reading = meter.stop()

    assert reading.joules_by_domain == pytest.approx({"cpu:package-0": 5.0, "dram:0": 0.0})
    assert [zone.directory.name for zone in meter.zones if "mmio" in zone.directory.name] == []
    assert meter.describe()["ignored_duplicates"] == {
        "intel-rapl-mmio:0": "duplicate of intel-rapl:0 (package-0)"
    }


def test_the_mmio_package_is_read_when_the_msr_interface_is_missing(powercap):
    powercap.add_zone("intel-rapl-mmio:0", "package-0")
    meter = RaplMeter(powercap.root)
    meter.start()
    powercap.advance("intel-rapl-mmio:0", 2.0)
    reading = meter.stop()

    assert reading.joules_by_domain == pytest.approx({"cpu:package-0": 2.0})


def test_subzones_are_found_inside_their_package_when_the_flat_listing_lacks_them(powercap):
    powercap.add_zone("intel-rapl:0", "package-0")
    powercap.add_zone("intel-rapl:0:0", "dram", linked=False)
    meter = RaplMeter(powercap.root)
    meter.start()
    powercap.advance("intel-rapl:0:0", 1.5)
    reading = meter.stop()

    assert reading.joules_by_domain == pytest.approx({"cpu:package-0": 0.0, "dram:0": 1.5})


def test_multi_die_packages_are_separate_domains(powercap):
    powercap.add_zone("intel-rapl:0", "package-0-die-0")
    powercap.add_zone("intel-rapl:1", "package-0-die-1")
    powercap.add_zone("intel-rapl:1:0", "dram")
    meter = RaplMeter(powercap.root)
    meter.start()
    powercap.advance("intel-rapl:0", 1.0)
    powercap.advance("intel-rapl:1", 2.0)
    reading = meter.stop()

    assert reading.joules_by_domain == pytest.approx(
        {"cpu:package-0-die-0": 1.0, "cpu:package-0-die-1": 2.0, "dram:0": 0.0}
    )


def test_an_absent_powercap_root_is_a_plain_reason(tmp_path):
    missing = tmp_path / "powercap"

    assert RaplMeter.unavailable_reason(root=missing) == f"rapl: {missing} absent"
    with pytest.raises(MeterUnavailable, match="absent"):
        RaplMeter(missing)


def test_a_powercap_root_without_rapl_zones_says_so(powercap):
    (powercap.root / "intel-rapl").mkdir()
    (powercap.root / "dtpm").mkdir()

    assert RaplMeter.unavailable_reason(root=powercap.root) == (
        f"rapl: no RAPL zones under {powercap.root}"
    )


def test_a_working_tree_has_no_unavailable_reason(server):
    assert RaplMeter.unavailable_reason(root=server.root) is None


def test_permission_denied_on_energy_uj_explains_the_fix(server, monkeypatch):
    real_open = os.open
    denied = server.root / "intel-rapl:0" / "energy_uj"

    def open_as_unprivileged_user(path, flags, *args, **kwargs):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_as_unprivileged_user)

    reason = RaplMeter.unavailable_reason(root=server.root)
    assert reason == (
        f"rapl: permission denied reading {denied} (root-only since Linux 5.10; run "
        f"`sudo chmod o+r {server.root}/intel-rapl:*/energy_uj` or run as root)"
    )
    with pytest.raises(MeterUnavailable) as raised:
        RaplMeter(server.root)
    assert str(raised.value) == reason
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_an_energy_file_without_read_permission_explains_the_fix(server):
    energy_file = server.zone_dirs["intel-rapl:1"] / "energy_uj"
    energy_file.chmod(0o000)
    try:
        if os.access(energy_file, os.R_OK):
            pytest.skip("this process reads files whatever their mode (root)")
        reason = RaplMeter.unavailable_reason(root=server.root)
    finally:
        energy_file.chmod(0o644)

    assert reason is not None
    assert "permission denied reading" in reason
    assert "root-only since Linux 5.10" in reason


def test_windows_reuse_the_open_counter_files_and_stay_cheap(server, monkeypatch):
    meter = RaplMeter(server.root)
    meter.start()
    meter.stop()
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda path, *args, **kwargs: opened.append(path) or real_open(path, *args)
    )

    pairs = 200
    began = time.perf_counter()
    for _ in range(pairs):
        meter.start()
        reading = meter.stop()
    seconds_per_pair = (time.perf_counter() - began) / pairs

    assert opened == []
    assert reading.joules == 0.0
    assert seconds_per_pair < 0.05, "a sanity bound only; the benchmark script measures speed"


def test_close_releases_the_files_and_a_later_window_reopens_them(server):
    meter = RaplMeter(server.root)
    meter.start()
    meter.stop()
    meter.close()
    meter.close()

    meter.start()
    server.advance("intel-rapl:0", 1.0)
    assert meter.stop().joules_by_domain["cpu:package-0"] == pytest.approx(1.0)


def test_a_counter_that_stops_being_a_number_is_a_meter_error(server):
    meter = RaplMeter(server.root)
    meter.start()
    (server.zone_dirs["intel-rapl:0"] / "energy_uj").write_text("garbage\n")

    with pytest.raises(MeterError, match="rapl: reading the energy counters failed"):
        meter.stop()


def test_stop_without_start_and_nested_start_are_misuse(server):
    meter = RaplMeter(server.root)
    with pytest.raises(MeasurementError, match="without start"):
        meter.stop()
    meter.start()
    with pytest.raises(MeasurementError, match="already open"):
        meter.start()


# --- counters that cannot be believed, and long windows (issue 11 point 3, issue 13) --------


class FakeClock:
    """A clock the test moves, so power checks do not depend on how fast the test runs."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def test_a_counter_running_backwards_is_refused_not_read_as_a_whole_range(powercap):
    powercap.add_zone("intel-rapl:0", "package-0", microjoules=500_000_000)
    clock = FakeClock()
    meter = RaplMeter(powercap.root, clock=clock)
    meter.start()
    (powercap.zone_dirs["intel-rapl:0"] / "energy_uj").write_text("499000000\n")
    clock.seconds += 1.0

    with pytest.raises(ImplausibleReading, match="went down by more than a wrap can explain"):
        meter.stop()
    meter.start()  # the meter stays usable for the next window
    clock.seconds += 1.0
    assert meter.stop().joules == 0.0


def test_a_zero_max_energy_range_makes_the_meter_unavailable_with_the_path(powercap):
    powercap.add_zone("intel-rapl:0", "package-0", max_microjoules=0)

    reason = RaplMeter.unavailable_reason(powercap.root)

    assert reason is not None
    assert "max_energy_range_uj holds '0'" in reason
    assert "cannot be unwrapped" in reason


def test_power_beyond_what_the_zone_can_draw_is_refused(powercap):
    powercap.add_zone("intel-rapl:0", "package-0")
    clock = FakeClock()
    meter = RaplMeter(powercap.root, clock=clock)
    meter.start()
    powercap.advance("intel-rapl:0", 5_000.0)  # 5 kJ in one second: 5 kW on one package
    clock.seconds += 1.0

    with pytest.raises(ImplausibleReading, match=r"jumped .* beyond 1000 W"):
        meter.stop()


def test_the_poller_follows_every_wrap_of_a_long_window(powercap):
    range_microjoules = 10_000_000  # a 10 J range at a 1 kW bound wraps at most every 10 ms
    powercap.add_zone("intel-rapl:0", "package-0", max_microjoules=range_microjoules)
    clock = FakeClock()
    meter = RaplMeter(powercap.root, clock=clock)
    assert meter.poll_seconds == pytest.approx(0.01)  # 5 ms, raised to the 10 ms floor
    meter._ensure_poller = lambda: None  # drive the polls by hand, as the thread would

    meter.start()
    for _ in range(7):  # 7 × 6 J = 42 J: four whole wraps of the 10 J counter
        powercap.advance("intel-rapl:0", 6.0)
        clock.seconds += 0.05
        meter.poll()
    reading = meter.stop()

    assert reading.joules_by_domain["cpu:package-0"] == pytest.approx(42.0)
    assert reading.details["wraps"] == {"cpu:package-0": 4}


def test_the_poll_period_derives_from_the_range_and_the_power_bound(powercap):
    powercap.add_zone("intel-rapl:0", "package-0")  # 262 kJ at 1 kW: 131 s between polls
    powercap.add_zone("intel-rapl:0:2", "dram")  # 262 kJ at 500 W: 262 s

    meter = RaplMeter(powercap.root)

    assert meter.poll_seconds == pytest.approx(MAX_RANGE_MICROJOULES / 1e6 / 1000 / 2)
    assert meter.describe()["poll_seconds"] == meter.poll_seconds


def test_the_poller_thread_runs_while_the_meter_is_open_and_stops_on_close(powercap):
    powercap.add_zone("intel-rapl:0", "package-0")
    meter = RaplMeter(powercap.root)
    meter.start()
    powercap.advance("intel-rapl:0", 0.5)
    poller = meter._poller
    assert poller is not None and poller.is_alive()
    assert meter.stop().joules == pytest.approx(0.5)

    meter.close()

    assert not poller.is_alive()


def test_a_rapl_root_that_is_a_regular_file_is_explained(tmp_path):
    root = tmp_path / "powercap"
    root.write_text("not a directory\n")

    reason = RaplMeter.unavailable_reason(root)

    assert reason == (
        f"rapl: {root} is a file, not the powercap directory; give --energy-rapl-root a "
        f"directory such as /sys/class/powercap"
    )
