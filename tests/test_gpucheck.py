import json

import pytest

from ctxlab import gpu_results, gpucheck


def test_dry_run_writes_a_valid_json(tmp_path):
    out = tmp_path / "gc.json"
    result = gpucheck.run(str(out), dry_run=True, only=["matmul_peak"])
    data = json.loads(out.read_text())
    gpucheck.validate(data)
    assert data == json.loads(json.dumps(result, default=str))
    sec = data["sections"]["matmul_peak"]
    assert sec["error"] is None and sec["value"]["tflops"] > 0


def test_validate_and_bad_section_names(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        gpucheck.validate({"device": "x"})
    with pytest.raises(ValueError, match="only must name sections"):
        gpucheck.run(str(tmp_path / "x.json"), dry_run=True, only=["nope"])


def test_a_failing_section_is_recorded_and_others_run(tmp_path, monkeypatch):
    real = gpucheck.sections

    def broken(dry_run, device):
        todo = real(dry_run, device)
        todo["matmul_peak"] = lambda: 1 / 0
        return todo
    monkeypatch.setattr(gpucheck, "sections", broken)
    data = gpucheck.run(str(tmp_path / "gc.json"), dry_run=True, only=["matmul_peak", "attention"])
    assert "ZeroDivisionError" in data["sections"]["matmul_peak"]["error"]
    assert data["sections"]["attention"]["error"] is None and data["sections"]["attention"]["value"]  # it still ran


def test_the_whole_dry_run_from_the_command_line(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "gpucheck.json"
    proc = subprocess.run([sys.executable, "-m", "ctxlab.gpucheck", "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    gpucheck.validate(data)
    assert data["dry_run"] is True and data["device"]
    for name in ("matmul_peak", "attention", "attention_speed", "max_context_reference", "max_context_110m",
                 "throughput_110m", "parallel", "casestudy_latency", "decode_roofline", "zero_offload"):
        assert data["sections"][name]["error"] is None, (name, data["sections"][name]["error"])
    ctx = data["sections"]["max_context_reference"]["value"]
    assert ctx["largest_fitting_T"] == 64 and ctx["stopped_by"] == "limit"
    assert 0 < data["sections"]["throughput_110m"]["value"]["mfu"]
    par = data["sections"]["parallel"]["value"]
    assert par["ddp_gloo_2"]["ours"]["max_grad_err"] < 1e-5 and par["ring_gloo_2"]["max_err"] < 1e-5
    assert par["pipeline_gloo_2"]["1f1b"]["peak_held"] == [2, 1]
    assert proc.stdout.strip().splitlines()[-1].startswith("wrote ")
    speed = data["sections"]["attention_speed"]["value"]
    assert {r["backend"] for r in speed} == {"naive", "chunked", "chunked, no skip", "sdpa"}
    assert all(len(r["samples"]) == 2 for r in speed)
    lat = data["sections"]["casestudy_latency"]["value"]
    assert [r["context"] for r in lat] == [64, 128] and lat[1]["kv_cache_bytes"] == 2 * lat[0]["kv_cache_bytes"]
    # every section the chapters show renders from a real file; a dry run is not shown as a GPU result
    text = gpu_results.report(list(gpu_results.FORMATS), out, allow_dry_run=True)
    assert "failed" not in text and "not measured" not in text
    assert all(f"[{name}]" in text for name in gpu_results.FORMATS)
    assert "largest trainable context: 64 tokens" in text
    assert gpu_results.load(out) is None and gpu_results.load(out, allow_dry_run=True)["dry_run"]


def test_gpu_results_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_results, "PACKAGE_DATA", tmp_path / "absent.json")
    assert gpu_results.load() is None and gpu_results.section(None, "attention") is None
    assert gpu_results.report(["attention"]).startswith("no GPU measurements stored")
    with pytest.raises(ValueError, match="names must be among"):
        gpu_results.report(["bogus"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a gpucheck result"):
        gpu_results.load(tmp_path / "bad.json")
