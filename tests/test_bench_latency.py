"""The per-crop latency benchmark runs both runtimes and prints every row (tiny sizes: a smoke
test that keeps the script working, not a measurement)."""
import re

from conftest import run_script

ROW = re.compile(r'^(\S+)\s+([\d.]+)\s+([\d.e-]+)\s+(torch|onnxruntime)\s+(cpu|cuda)\s+(\d+|-)\s+(\d+)\s+([\d.]+)\s+'
                 r'([\d.]+)\s+([\d.]+)\s+(python benchmarks/bench_latency\.py .+)$', re.M)


def test_bench_latency_prints_every_row():
    result = run_script('benchmarks/bench_latency.py', '--height', '32', '--width', '16', '--arch', 'osnet_x0_25',
                        '--batch', '1', '2', '--threads', '1', '--repeats', '2', '--warmup', '1',
                        '--runtimes', 'torch', 'onnxruntime', timeout=120)
    assert re.search(r'^arch\s+params M\s+GMACs@32x16\s+runtime\s+device\s+threads\s+batch\s+p50 ms/crop\s+'
                     r'p95 ms/crop\s+crops/s\s+command$', result.stdout, re.M), result.stdout
    rows = ROW.findall(result.stdout)
    assert sorted((runtime, int(batch)) for _, _, _, runtime, _, _, batch, *_ in rows) == [
        ('onnxruntime', 1), ('onnxruntime', 2), ('torch', 1), ('torch', 2)], result.stdout
    for arch, params, macs, runtime, device, threads, batch, p50, p95, rate, command in rows:
        assert (arch, device, threads) == ('osnet_x0_25', 'cpu', '1')
        assert float(params) > 0 and float(macs) > 0
        assert 0 < float(p50) <= float(p95) and float(rate) > 0
        # The row's command measures that row alone.
        assert f'--runtimes {runtime} --batch {batch} ' in command and '--threads 1' in command
        assert '--height 32 --width 16 --arch osnet_x0_25' in command
    # The same model and input size: one params and one GMACs figure for all rows.
    assert len({(params, macs) for _, params, macs, *_ in rows}) == 1
