"""File-name patterns come from satpy's reader definitions (``patterns_from``), not hand copies
(issue 12): the registry's resolved patterns are satpy's, specialised only by the explicit
selection/substitution of ``configs/sensors.yaml``, and the index still files every name as before."""
import datetime as dt
from pathlib import Path

import pytest
from satpy.readers.core.config import configs_for_reader
from satpy.readers.core.yaml_reader import load_yaml_configs

from cloudsr_hpc.config import build
from cloudsr_hpc.data.index import identify, parsers
from cloudsr_hpc.data.sensors import FileFormat, load_registry
from cloudsr_hpc.data.synthetic.formats import fci, seviri_nc
from cloudsr_hpc.errors import ConfigError

REG = load_registry()
PLIST = parsers(REG)
ABI_REAL = Path(__file__).resolve().parents[1].parent / "shared/data/abi-real"


def _satpy(reader: str, file_type: str) -> list[str]:
    """satpy's own reading of its reader YAML (its loader, its config search path)."""
    return load_yaml_configs(*next(configs_for_reader(reader)))["file_types"][file_type]["file_patterns"]


def test_every_shipped_format_takes_its_patterns_from_satpy():
    for s in REG.sensors.values():
        for name, f in s.formats.items():
            assert f.patterns_from is not None, f"{s.name}.{name} copies its patterns"


def test_resolved_patterns_are_satpys():
    fmt = {(s.name, n): f for s in REG.sensors.values() for n, f in s.formats.items()}
    assert fmt["seviri", "nc"].patterns == _satpy("seviri_l1b_nc", "seviri_l1b_nc")
    assert fmt["fci", "fdhsi"].patterns == _satpy("fci_l1c_nc", "fci_l1c_fdhsi")
    assert fmt["fci", "hrfi"].patterns == _satpy("fci_l1c_nc", "fci_l1c_hrfi")
    # satpy's .nat name with an order id and no processing time (its other variants: selected out)
    assert fmt["seviri", "native"].patterns == [
        p for p in _satpy("seviri_l1b_native", "native_msg")
        if "{order_id" in p and "{processing_time" not in p]
    assert fmt["seviri", "native"].patterns[0].endswith("000Z-{order_id:s}.nat")
    # NASA's standard names (with {creator}); observations first, then geolocation
    assert fmt["viirs", "l1b"].patterns == [p for t in ("vl1bi", "vgeoi") for p in _satpy("viirs_l1b", t)
                                            if "{creator}" in p]
    assert [p[:13] for p in fmt["viirs", "l1b"].patterns] == ["V{platform_sh"] * 2
    # ABI: satpy's c01 base pattern, sector fixed and the channel widened, nothing else changed
    base = _satpy("abi_l1b", "c01")[0]
    assert "-L1b-{observation_type:3s}{scene_abbr:s}-{scan_mode:2s}C01_" in base
    for name, sector in (("radf", "F"), ("radc", "C"), ("radm1", "M1"), ("radm2", "M2")):
        want = (base.replace("{observation_type:3s}{scene_abbr:s}", "Rad" + sector)
                .replace("C01_", "C{channel:2s}_"))
        assert fmt["abi", name].patterns == [want]


# (name, sensor, format, nominal slot): the names the synthetic archive writes and the real ones
NAMES = [
    (seviri_nc.FILE_NAME.format(satid="MSG4", time=dt.datetime(2024, 6, 1, 12, 0, 10)),
     "seviri", "nc", dt.datetime(2024, 6, 1, 12, 0)),
    ("MSG4-SEVI-MSG15-0100-NA-20240601121242.123000000Z-NA.nat",
     "seviri", "native", dt.datetime(2024, 6, 1, 12, 0)),
    ("MSG4-SEVI-MSG15-0100-NA-20240601121242.123000000Z-20240601123000-1234567.nat",
     "seviri", "native", dt.datetime(2024, 6, 1, 12, 0)),
    (fci.FILE_NAME.format(sc=1, product="HRFI", processed=dt.datetime(2024, 6, 1, 12, 20),
                          start=dt.datetime(2024, 6, 1, 12, 9, 50), end=dt.datetime(2024, 6, 1, 12, 10, 5),
                          rc=73, chunk=40),
     "fci", "hrfi", dt.datetime(2024, 6, 1, 12, 0)),
    (fci.FILE_NAME.format(sc=1, product="FDHSI", processed=dt.datetime(2024, 6, 1, 12, 20),
                          start=dt.datetime(2024, 6, 1, 12, 0, 5), end=dt.datetime(2024, 6, 1, 12, 0, 20),
                          rc=73, chunk=1),
     "fci", "fdhsi", dt.datetime(2024, 6, 1, 12, 0)),
    ("VNP02IMG.A2024153.1204.002.2024153130000.nc", "viirs", "l1b", dt.datetime(2024, 6, 1, 12, 4)),
    ("VJ103IMG.A2024153.1204.021.2024153130000.nc", "viirs", "l1b", dt.datetime(2024, 6, 1, 12, 4)),
    ("OR_ABI-L1b-RadF-M6C13_G16_s20231821410206_e20231821419514_c20231821419570.nc",
     "abi", "radf", dt.datetime(2023, 7, 1, 14, 10)),
    ("OR_ABI-L1b-RadC-M6C16_G17_s20193002001196_e20193002003580_c20193002004068.nc",
     "abi", "radc", dt.datetime(2019, 10, 27, 20, 0)),
    ("OR_ABI-L1b-RadM1-M6C01_G16_s20200010001262_e20200010001320_c20200010001364.nc",
     "abi", "radm1", dt.datetime(2020, 1, 1, 0, 1)),
    ("OR_ABI-L1b-RadM2-M6C02_G18_s20240010002262_e20240010002320_c20240010002364.nc",
     "abi", "radm2", dt.datetime(2024, 1, 1, 0, 2)),
]


@pytest.mark.parametrize("name, sensor, fmt, slot", NAMES, ids=[n[1] + "-" + n[2] for n in NAMES])
def test_archive_names_keep_their_sensor_format_and_slot(name, sensor, fmt, slot):
    s, f, t = identify(name, PLIST)
    assert (s.name, f, t) == (sensor, fmt, slot)


def test_the_real_abi_files_keep_their_format_and_slot():
    """The shared real files (CI has them at the same path, as tests/test_abi.py needs)."""
    got = {p.name: identify(p.name, PLIST) for p in sorted(ABI_REAL.glob("OR_ABI-*.nc"))}
    assert len(got) == 7
    for name, hit in got.items():
        assert hit is not None, name
        want = (("radm1", dt.datetime(2020, 1, 1, 0, 1)) if "RadM1" in name
                else ("radc", dt.datetime(2019, 10, 27, 20, 0)))
        assert (hit[0].name, *hit[1:]) == ("abi", *want), name


@pytest.mark.parametrize("name", [
    "VNP02IMG_NRT.A2024153.1204.002.nc",                        # satpy's NRT variant: not selected
    "VL1BI_NPP_d20240601_t120400_c20240601130000.nc",            # satpy's VL1BI_ variant: not selected
    "OR_ABI-L1b-RadC-M6C16_G17_s20193002001196_e20193002003580_c20193002004068-000001_0.nc",  # chunk
    "MSG4-SEVI-MSG15-0100-NA-20240601121242.123000000Z",         # no suffix: not selected
    "README.txt",
])
def test_satpy_variants_left_out_are_not_indexed(name):
    assert identify(name, PLIST) is None


# ------------------------------------------------------------------ validation
WHERE = "sensors.yaml: sensors.abi.formats.radf"
ABI = {"reader": "abi_l1b", "patterns_from": {"file_types": ["c01"], "without_fields": ["chid", "suffix"]}}


def _fmt(**over):
    d = {**ABI, "patterns_from": {**ABI["patterns_from"], **over.pop("pf", {})}, **over}
    return build(FileFormat, d, WHERE)


def test_fix_and_replace_specialise_satpys_pattern():
    f = _fmt(pf={"fix": {"observation_type": "Rad", "scene_abbr": "M2"},
                 "replace": {"C01_": "C{channel:2s}_"}})
    assert f.patterns == [REG.sensor("abi").file_format("radm2").patterns[0]]


@pytest.mark.parametrize("over, needle", [
    ({"pf": {"fix": {"sector": "F"}}}, "formats.radf.patterns_from.fix.sector: no field {sector}"),
    ({"pf": {"fix": {"observation_type": "Radiance"}}},
     "patterns_from.fix.observation_type: 'Radiance' does not fit the field {observation_type:3s}"),
    ({"pf": {"replace": {"C02_": "C{channel:2s}_"}}}, "patterns_from.replace.C02_: occurs 0 times"),
    ({"pf": {"file_types": ["c17"]}},
     "patterns_from.file_types: satpy reader abi_l1b has no file type 'c17'"),
    ({"pf": {"without_fields": ["chunk_id"]}}, "patterns_from.without_fields: no pattern of satpy's abi_l1b"),
    ({"pf": {"with_fields": ["chid", "suffix"]}},
     "patterns_from: no pattern of satpy's abi_l1b c01 has fields"),
    ({"reader": "no_such_reader"}, "patterns_from: satpy has no reader 'no_such_reader'"),
    ({"patterns": ["OR_{x}.nc"]}, "formats.radf.patterns_from: give patterns or patterns_from, not both"),
])
def test_a_specialisation_that_does_not_apply_names_the_key(over, needle):
    with pytest.raises(ConfigError) as e:
        _fmt(**over)
    assert needle in str(e.value) and str(e.value).startswith(WHERE)


def test_explicit_patterns_stay_allowed_and_one_of_the_two_is_required():
    ahi = "HS_{platform_shortname}_{start_time:%Y%m%d_%H%M}_B{band:2d}.DAT"
    f = build(FileFormat, {"reader": "ahi_hsd", "patterns": [ahi]}, WHERE)
    assert f.patterns_from is None and len(f.patterns) == 1
    with pytest.raises(ConfigError, match="radf.patterns: at least one file-name pattern required"):
        build(FileFormat, {"reader": "ahi_hsd"}, WHERE)
