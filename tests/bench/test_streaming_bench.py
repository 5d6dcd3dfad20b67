"""bench/streaming.py: a short run prints both ways, their ratios, and a stream equal to one-shot."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_short_run_reports_both_ways_and_equal_audio(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("streaming_bench", os.path.join(ROOT, "bench", "streaming.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.chdir(ROOT)
    times = bench.main(["--tokens", "40", "--chunk_tokens", "8", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "ratios: time to first audio one-shot / stream =" in out and "RTF stream / one-shot" in out
    assert times["stream"][0] < times["stream"][1]  # the first chunk came before the end
    diff = float(out.rsplit("largest difference", 1)[1].split()[0])
    assert diff < 1e-5
