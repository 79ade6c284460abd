"""The KPI core (smartpark.kpi), hand-computed against the shipped coefficient
sets, named by version: tce-gbt2589 ("GB/T 2589 reference coefficients (edition
to confirm)"), electricity-equal-value ("example 0.404 ..."), grid-co2-mee (MEE/NBS
2022 and 2023) and gb21346-2013."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from smartpark import kpi
from smartpark.clock import zone
from smartpark.errors import ConfigError

C = kpi.shipped()
SHANGHAI = zone("Asia/Shanghai")


def test_the_shipped_sets_are_named_and_versioned() -> None:
    assert (C.tce.name, C.tce.equal_value.name) == (
        "tce-gbt2589",
        "electricity-equal-value",
    )
    assert "GB/T 2589" in C.tce.version
    assert "0.404" in C.tce.equal_value.version  # an example, said so
    assert C.grid.name == "grid-co2-mee"
    assert C.norm.version == "GB 21346-2013"
    assert C.norm.superseded_by is not None
    assert "2022" in C.norm.superseded_by


def test_tce_on_both_bases_from_electricity_coal_gas_and_steam_heat() -> None:
    # tce-gbt2589: 0.1229 kgce/kWh, 0.7143 kgce/kg, 1.2143 kgce/m3, 0.0341 kgce/MJ;
    # electricity-equal-value: 0.404 kgce/kWh
    got = kpi.tce(
        C.tce,
        {
            "active_energy": 10_000.0,  # kWh
            "coal_mass": 2.0,  # t = 2 000 kg
            "natural_gas_volume": 500.0,  # m3
            "steam_heat": 3.0,  # GJ = 3 000 MJ
        },
    )
    by = {s.metric: s for s in got.sources}
    assert by["active_energy"].equivalent_tce == pytest.approx(1.229)  # 1 229 kgce
    assert by["active_energy"].equal_value_tce == pytest.approx(4.04)  # 4 040 kgce
    assert by["coal_mass"].equivalent_tce == pytest.approx(1.4286)
    assert by["coal_mass"].equal_value_tce == pytest.approx(1.4286)
    assert by["natural_gas_volume"].equivalent_tce == pytest.approx(0.60715)
    assert by["steam_heat"].equivalent_tce == pytest.approx(0.1023)
    assert got.equivalent_tce == pytest.approx(1.229 + 1.4286 + 0.60715 + 0.1023)
    assert got.equal_value_tce == pytest.approx(4.04 + 1.4286 + 0.60715 + 0.1023)


def test_steam_mass_is_not_converted_and_says_why() -> None:
    with pytest.raises(ValueError, match="enthalpy"):
        kpi.tce(C.tce, {"steam_mass": 10.0})


@pytest.mark.parametrize(
    ("year", "region", "used_year", "used_region", "factor", "noted"),
    [
        (2023, None, 2023, "national", 0.5306, False),
        (2022, None, 2022, "national", 0.5366, False),
        (2023, "north", 2023, "north", 0.6361, False),
        (2023, "northwest", 2023, "northwest", 0.5543, False),
        # no 2022 regional factor: 2022's national one, said so
        (2022, "north", 2022, "national", 0.5366, True),
        # no 2025 factor: the latest earlier year's (2023), said so
        (2025, "east", 2023, "east", 0.5500, True),
    ],
)
def test_the_grid_factor_in_force_for_the_periods_year(
    year: int, region: str | None, used_year: int, used_region: str, factor: float,
    noted: bool,
) -> None:  # fmt: skip
    got = kpi.grid_factor(C.grid, year, region)
    assert got is not None
    assert (got.year, got.region, got.value) == (used_year, used_region, factor)
    assert (got.note is not None) == noted
    # 1 000 kWh of purchased electricity
    assert kpi.co2_t(1000.0, got) == pytest.approx(factor)


def test_no_factor_before_the_first_published_year() -> None:
    assert kpi.grid_factor(C.grid, 2021, None) is None


@pytest.mark.parametrize(
    ("kwh_per_t", "verdict"),
    [
        (12_600.0, "meets_advanced"),
        (12_650.0, "meets_advanced"),  # equal to a level meets it
        (12_700.0, "meets_access"),
        (12_750.0, "meets_access"),
        (13_000.0, "meets_limit"),
        (13_700.0, "meets_limit"),
        (13_700.5, "exceeds_limit"),
    ],
)
def test_gb21346_2013_aluminium_liquid_ac_power_verdicts(
    kwh_per_t: float, verdict: str
) -> None:
    levels = C.norm.indicators["aluminium_liquid_ac_power"]
    assert (levels.limit, levels.access, levels.advanced) == (13700, 12750, 12650)
    assert kpi.verdict(levels, kwh_per_t).value == verdict


def test_water_reuse_ratio() -> None:
    # reused 1 000 m3, fresh intake 3 000 m3: 1 000 / 4 000
    assert kpi.reuse_ratio(1000.0, 3000.0) == pytest.approx(0.25)
    assert kpi.reuse_ratio(0.0, 0.0) is None


def test_hour_mass_from_flow_and_concentration() -> None:
    # flue gas: 20 mg/m3 x 100 000 m3/h x 1 h = 2 000 000 mg = 2 kg
    assert kpi.hour_mass_kg(100_000.0, 20.0, "mg/m3") == pytest.approx(2.0)
    # wastewater: 40 mg/L (= 40 g/m3) x 50 m3/h x 1 h = 2 000 g = 2 kg
    assert kpi.hour_mass_kg(50.0, 40.0, "mg/L") == pytest.approx(2.0)
    assert "so2" in kpi.pollutants()
    assert "cod" in kpi.pollutants()
    assert "so2_corrected" not in kpi.pollutants()


@pytest.mark.parametrize(
    ("limit_metric", "o2", "judged"),
    [
        ("so2", 6.0, "so2_corrected"),
        ("so2", None, "so2"),
        ("so2_corrected", 6.0, "so2_corrected"),
        ("fluoride", 6.0, "fluoride"),  # no corrected metric in the catalogue
    ],
)
def test_judged_metric(limit_metric: str, o2: float | None, judged: str) -> None:
    assert kpi.judged_metric(limit_metric, o2) == judged


@pytest.mark.parametrize(
    ("expected", "received", "valid", "mean", "marked", "cls"),
    [
        (60, 60, 60, 30.0, False, "compliant"),
        (60, 45, 45, 35.0, False, "compliant"),  # 75 %, mean equal to the limit
        (60, 60, 45, 35.1, False, "breached"),
        (60, 60, 44, 30.0, False, "invalid"),  # arrived, flagged: 44 < 45
        (60, 10, 0, None, True, "invalid"),  # marked
        (60, 10, 10, 30.0, False, "insufficient"),
        (60, 0, 0, None, False, "insufficient"),
        (6, 5, 5, 40.0, False, "breached"),  # 5 >= 4.5
    ],
)
def test_an_hours_class(
    expected: int, received: int, valid: int, mean: float | None, marked: bool,
    cls: str,
) -> None:  # fmt: skip
    got = kpi.classify_hour(
        expected=expected, received=received, valid=valid, mean=mean, limit=35.0,
        marked=marked,
    )  # fmt: skip
    assert got.value == cls


def test_the_valid_share_is_a_parameter() -> None:
    got = kpi.classify_hour(
        expected=60, received=60, valid=50, mean=1.0, limit=35.0, marked=False,
        min_valid=0.9,
    )  # fmt: skip
    assert got is kpi.HourClass.INVALID


def test_local_periods_start_at_local_midnight() -> None:
    days = kpi.periods("day", date(2026, 3, 1), date(2026, 3, 3), SHANGHAI)
    assert [(p.label, p.start, p.end) for p in days] == [
        ("2026-03-01", datetime(2026, 2, 28, 16, tzinfo=UTC),
         datetime(2026, 3, 1, 16, tzinfo=UTC)),
        ("2026-03-02", datetime(2026, 3, 1, 16, tzinfo=UTC),
         datetime(2026, 3, 2, 16, tzinfo=UTC)),
    ]  # fmt: skip
    months = kpi.periods("month", date(2025, 12, 1), date(2026, 2, 1), SHANGHAI)
    assert [p.label for p in months] == ["2025-12", "2026-01"]
    assert months[1].end == datetime(2026, 1, 31, 16, tzinfo=UTC)
    [year] = kpi.periods("year", date(2023, 1, 1), date(2024, 1, 1), SHANGHAI)
    assert (year.label, year.start) == ("2023", datetime(2022, 12, 31, 16, tzinfo=UTC))
    assert kpi.count_periods("month", date(2025, 12, 1), date(2026, 2, 1)) == 2


@pytest.mark.parametrize(
    ("kind", "d"), [("month", date(2026, 3, 2)), ("year", date(2026, 2, 1))]
)
def test_a_period_must_start_aligned(kind: kpi.PeriodKind, d: date) -> None:
    with pytest.raises(ValueError, match="starts"):
        kpi.check_aligned(kind, d)


def test_quota_in_force_from_its_date() -> None:
    [p] = kpi.periods("month", date(2026, 3, 1), date(2026, 4, 1), SHANGHAI)
    quotas = {"month": 100.0, "day": 5.0}
    assert kpi.quota_for(quotas, None, p) == 100.0
    assert kpi.quota_for(quotas, date(2026, 3, 1), p) == 100.0
    assert kpi.quota_for(quotas, date(2026, 3, 2), p) is None
    assert kpi.quota_for({"day": 5.0}, None, p) is None


def test_a_broken_coefficient_file_names_file_line_and_field(tmp_path: Path) -> None:
    for name in ("tce-gbt2589.yaml", "grid-co2.yaml", "gb21346-2013.yaml"):
        (tmp_path / name).write_text(
            (kpi.COEFFICIENTS_DIR / name).read_text(encoding="utf-8"), encoding="utf-8"
        )
    text = (tmp_path / "gb21346-2013.yaml").read_text(encoding="utf-8")
    (tmp_path / "gb21346-2013.yaml").write_text(
        text.replace("advanced: 12650", "advanced: 13800"), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"gb21346-2013\.yaml") as err:
        kpi.load_coefficients(tmp_path)
    assert "advanced <= access <= limit" in str(err.value)
    assert kpi.load_coefficients(kpi.COEFFICIENTS_DIR) == C
