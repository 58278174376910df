"""Benchmark results files land in the folder the user names, by default benchmarks/results of the
working directory; the device-peak table tells the H100 and H200 variants apart."""

import json

import pytest

from benchmarks import common


@pytest.mark.parametrize("kind, tflops, gbps", [
    ("NVIDIA H100 80GB HBM3", 989.0, 3350.0),  # SXM5
    ("NVIDIA H100 PCIe", 756.0, 2000.0),
    ("NVIDIA H100 NVL", 835.0, 3900.0),
    ("NVIDIA H200", 989.0, 4800.0),
    ("NVIDIA H200 NVL", 835.0, 4800.0),
    ("NVIDIA A100-SXM4-80GB", 312.0, 2039.0),
    ("TPU v5 lite", 197.0, 819.0),
    ("TPU v5", 459.0, 2765.0),
])
def test_device_peaks_from_the_data_sheets(kind, tflops, gbps):
    assert common.device_peaks(kind) == {"bf16_tflops": tflops, "hbm_gbps": gbps}


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA H100", "NVIDIA GH200 480GB", "NVIDIA L4"])
def test_unlisted_devices_get_no_peak(kind):
    assert common.device_peaks(kind) is None


def test_results_go_to_the_working_directory_or_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = common.write_results("demo", [{"n": 1}])
    assert path.resolve() == tmp_path / "benchmarks" / "results" / "cpu-demo.json"
    assert json.loads(path.read_text())["rows"] == [{"n": 1}]
    assert common.peak("bf16_tflops") is None  # the CPU has no listed peak
    named = common.write_results("demo", [], out_dir=tmp_path / "mine")
    assert named == tmp_path / "mine" / "cpu-demo.json" and named.exists()
