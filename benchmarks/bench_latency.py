"""Per-crop latency of re-ID models as a tracker runs them: which model to recommend for a CPU tracker.

    python benchmarks/bench_latency.py     # 4 models, 256x128, torch and onnxruntime, 1 and 2 threads, batch 1 and 32
    python benchmarks/bench_latency.py --arch osnet_x0_25 --runtimes onnxruntime --threads 1 --batch 1
    python benchmarks/bench_latency.py --arch osnet_x1_0 resnet50 --device cuda   # adds GPU rows

Each --arch is built randomly initialised for 751 identities at --height x --width, and its
test-time network (models.TestFeatureNet, from feature_extractor.feature_net of a checkpoint dict
made in memory, with the default model config: no flip test, no neck) runs on random normalised
float32 images, the input that FeatureExtractor and the ONNX export give the network:
  torch        eager PyTorch under torch.inference_mode(), torch.set_num_threads(--threads);
  onnxruntime  the network exported by export_onnx.export (dynamic batch) to a temporary file,
               run by an onnxruntime.InferenceSession on the CPUExecutionProvider with
               intra_op_num_threads = --threads (the other session options at their defaults).
Per (model, runtime, threads, batch): --warmup untimed calls, then --repeats timed calls (by
default at least 10 calls and 50 crops: 50 calls at batch 1, 10 at batch 32). A row reports the
per-crop latency (call time / batch) at the median and 95th percentile of the calls, and crops/s
(all timed crops / all timed seconds). params: the parameters of the test-time network, in
millions (the training classifier excluded); GMACs: multiply-accumulates of one crop, counted by
torch.utils.flop_counter.FlopCounterMode at batch 1 (flops / 2; convolutions and matrix
products, not normalisation or activations). Crop decoding, resizing and normalisation are not
timed (FeatureExtractor does them before the network).
--device cuda adds GPU rows (torch, and onnxruntime's CUDAExecutionProvider when the installed
onnxruntime has it) that time the copy of the batch to the GPU and of the features back, as a
tracker's crops come from host memory; without CUDA it says so and runs the CPU rows only. The
machine's load average is printed before and after: other work on the CPU inflates the figures.
Every row prints the command line that measures it alone.
"""
import argparse
import contextlib
import io
import math
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import model_config  # noqa: E402
import models  # noqa: E402
from export_onnx import export  # noqa: E402
from feature_extractor import feature_net  # noqa: E402

DEFAULT_ARCHS = ['osnet_x0_25', 'osnet_x1_0', 'resnet50', 'timm:mobilenetv4_conv_small']
RUNTIMES = ('torch', 'onnxruntime')


def default_repeats(batch):
    """Timed calls at `batch`: at least 10 calls and at least 50 crops."""
    return max(10, math.ceil(50 / batch))


def default_warmup(batch):
    """Untimed calls at `batch` first: at least 3 calls and 10 crops."""
    return max(3, math.ceil(10 / batch))


def make_checkpoint(arch, height, width):
    """A checkpoint dict, in memory, of a randomly initialised `arch` at height x width."""
    model = models.init_model(arch, 751, pretrained=False, height=height, width=width).eval()
    return {'state_dict': model.state_dict(), 'model': dict(model_config.CONFIG_DEFAULTS, arch=arch, height=height,
                                                            width=width)}


def params_millions(net):
    """Millions of parameters the test-time network uses (the classifier only trains)."""
    return sum(p.numel() for name, p in net.model.named_parameters() if not name.startswith('classifier.')) / 1e6


def gmacs(net, height, width):
    """Giga multiply-accumulates of one crop (FlopCounterMode's flops / 2)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(torch.randn(1, 3, height, width))
    return counter.get_total_flops() / 2 / 1e9


def time_calls(call, warmup, repeats):
    """Seconds of each of `repeats` calls of call(), after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return np.array(times)


def torch_call(net, batch, height, width, device):
    """A function running `net` on one random batch, in inference mode. On CUDA it copies the
    batch from host memory and the features back (which waits for the GPU)."""
    images = torch.randn(batch, 3, height, width)
    if device == 'cpu':
        def call():
            with torch.inference_mode():
                return net(images)
    else:
        def call():
            with torch.inference_mode():
                return net(images.to(device)).cpu()
    return call


def ort_session(path, threads, provider):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    providers = [provider] + (['CPUExecutionProvider'] if provider != 'CPUExecutionProvider' else [])
    session = onnxruntime.InferenceSession(path, options, providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f'onnxruntime did not take {provider}: it runs on {session.get_providers()}')
    return session


def ort_call(session, batch, height, width):
    feed = {'images': np.random.default_rng(0).standard_normal((batch, 3, height, width), dtype=np.float32)}

    def call():
        return session.run(None, feed)
    return call


def export_quietly(checkpoint, path):
    """export_onnx.export to `path` (dynamic batch), holding back the exporter's progress prints."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            export(checkpoint, path)
    except Exception:
        print(printed.getvalue())
        raise


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    try:
        return ' '.join(f'{x:.2f}' for x in os.getloadavg())
    except OSError:
        return 'unknown'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', nargs='+', default=DEFAULT_ARCHS, type=models.check_arch,
                        help='models (any -a name; default: %(default)s)')
    parser.add_argument('--height', type=int, default=256)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--runtimes', nargs='+', choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2],
                        help='CPU threads: torch.set_num_threads / onnxruntime intra_op_num_threads')
    parser.add_argument('--batch', type=int, nargs='+', default=[1, 32], help='crops per call')
    parser.add_argument('--repeats', type=int, help='timed calls per row (default: max(10, ceil(50 / batch)))')
    parser.add_argument('--warmup', type=int, help='untimed calls first (default: max(3, ceil(10 / batch)))')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'), help='cuda: add GPU rows')
    parser.add_argument('--skip-cpu', action='store_true', help='with --device cuda: the GPU rows only')
    args = parser.parse_args()
    for flag in ('height', 'width', 'repeats'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f'--{flag} must be positive')
    if min(args.threads) < 1 or min(args.batch) < 1 or (args.warmup is not None and args.warmup < 0):
        parser.error('--threads and --batch must be positive, --warmup not negative')
    if args.skip_cpu and args.device != 'cuda':
        parser.error('--skip-cpu goes with --device cuda')

    ort_providers = []
    if 'onnxruntime' in args.runtimes:
        import onnxruntime
        ort_providers = onnxruntime.get_available_providers()
        ort_version = f', onnxruntime {onnxruntime.__version__}'
    else:
        ort_version = ''
    gpu = args.device == 'cuda' and torch.cuda.is_available()
    if args.device == 'cuda' and not gpu:
        print('--device cuda: CUDA is not available on this machine; GPU rows skipped')
    print(f'CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__}{ort_version}')
    if gpu:
        print(f'GPU: {torch.cuda.get_device_name()}')
    print(f'load average (1, 5, 15 min) at the start: {load_average()}', flush=True)

    # (device, runtime, threads) of the rows; threads None for the GPU rows.
    setups = [] if args.skip_cpu else [('cpu', runtime, t) for runtime in args.runtimes for t in args.threads]
    if gpu:
        setups += [('cuda', 'torch', None)] if 'torch' in args.runtimes else []
        if 'onnxruntime' in args.runtimes:
            if 'CUDAExecutionProvider' in ort_providers:
                setups.append(('cuda', 'onnxruntime', None))
            else:
                print(f'onnxruntime has no CUDAExecutionProvider (providers: {", ".join(ort_providers)}); '
                      f'onnxruntime GPU rows skipped')
    base = ['python', 'benchmarks/bench_latency.py', '--height', str(args.height), '--width', str(args.width)]
    rows = []
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.arch:
            checkpoint = make_checkpoint(arch, args.height, args.width)
            net, _ = feature_net(checkpoint)
            params, macs = params_millions(net), gmacs(net, args.height, args.width)
            onnx_path = None
            if any(runtime == 'onnxruntime' for _, runtime, _ in setups):
                onnx_path = os.path.join(folder, arch.replace(':', '_') + '.onnx')
                start = time.perf_counter()
                export_quietly(checkpoint, onnx_path)
                print(f'{arch}: exported to ONNX in {time.perf_counter() - start:.1f} s', flush=True)
            for device, runtime, threads in setups:
                torch.set_num_threads(threads or threads_before)
                if runtime == 'torch':
                    device_net = net.to(device)
                else:
                    provider = 'CPUExecutionProvider' if device == 'cpu' else 'CUDAExecutionProvider'
                    session = ort_session(onnx_path, threads or 1, provider)
                for batch in args.batch:
                    repeats = args.repeats or default_repeats(batch)
                    warmup = default_warmup(batch) if args.warmup is None else args.warmup
                    if runtime == 'torch':
                        call = torch_call(device_net, batch, args.height, args.width, device)
                    else:
                        call = ort_call(session, batch, args.height, args.width)
                    times = time_calls(call, warmup, repeats)
                    command = base + ['--arch', arch, '--runtimes', runtime, '--batch', str(batch),
                                      '--repeats', str(repeats), '--warmup', str(warmup)]
                    command += ['--threads', str(threads)] if device == 'cpu' else ['--device', 'cuda', '--skip-cpu']
                    p50, p95 = np.percentile(times, [50, 95]) / batch * 1000
                    row = (arch, params, macs, runtime, device, threads or '-', batch, p50, p95,
                           batch * len(times) / times.sum(), shlex.join(command))
                    rows.append(row)
                    print(f'{arch} {runtime} {device} threads {threads or "-"} batch {batch}: '
                          f'p50 {p50:.2f} ms/crop, p95 {p95:.2f} ms/crop', flush=True)
            net.to('cpu')
    torch.set_num_threads(threads_before)

    print(f'load average (1, 5, 15 min) at the end: {load_average()}')
    if not rows:
        return
    headers = ('arch', 'params M', f'GMACs@{args.height}x{args.width}', 'runtime', 'device', 'threads', 'batch',
               'p50 ms/crop', 'p95 ms/crop', 'crops/s', 'command')
    cells = [(arch, f'{params:.2f}', f'{macs:.4g}', runtime, device, str(threads), str(batch), f'{p50:.2f}',
              f'{p95:.2f}', f'{rate:.1f}', command)
             for arch, params, macs, runtime, device, threads, batch, p50, p95, rate, command in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers[:-1])]
    print()
    print('  '.join(h.ljust(w) if i in (0, 3, 4) else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
          + '  command')
    for c in cells:
        print('  '.join(x.ljust(w) if i in (0, 3, 4) else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths)))
              + '  ' + c[-1])


if __name__ == '__main__':
    main()
