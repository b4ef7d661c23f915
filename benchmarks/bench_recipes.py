"""Ablation of the strong-baseline (BoT) recipe on generated data, like the BoT paper's table.

    python benchmarks/bench_recipes.py                  # all rows, about 20 minutes on 2 idle CPU cores
    python benchmarks/bench_recipes.py --rows classic bot --epochs 10

Every row trains train_img_model_xent_htri.py from random initialisation on the same generated
Market-1501-layout dataset (64 training identities), for the same number of epochs, with
CPU-sized images (64x32) and batches (32 = 8 identities x 4) and a learning rate that suits
random initialisation (1e-3), then prints mAP / Rank-1 per row with the command line of each.
Rows: the classic defaults, --recipe bot, and bot minus each trick in turn.
The BoT warmup (10 of 120 epochs) is scaled to --epochs; no row decays the learning rate.
Nothing here is tuned for the generated data: read the table as what these short,
random-initialisation runs give, not as the published ImageNet-initialised figures.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, REPO)
import synthetic_data  # noqa: E402

ROWS = {
    'classic': ['--recipe', 'classic'],
    'bot': ['--recipe', 'bot'],
    'bot - warmup': ['--recipe', 'bot', '--warmup-epochs', '0'],
    'bot - random erasing': ['--recipe', 'bot', '--random-erasing', '0'],
    'bot - label smoothing': ['--recipe', 'bot', '--label-smooth', '0'],
    'bot - last stride 1': ['--recipe', 'bot', '--last-stride', '2'],
    'bot - BNNeck': ['--recipe', 'bot', '--no-bnneck'],
    'bot - center loss': ['--recipe', 'bot', '--center-loss', '0'],
    'bot - pad-crop (translate)': ['--recipe', 'bot', '--augment', 'translate'],
    'bot - cosine (euclidean)': ['--recipe', 'bot', '--dist-metric', 'euclidean'],
}


def last_result(stdout):
    """(mAP, Rank-1) in percent of the last printed result block."""
    return (float(re.findall(r'^mAP: ([\d.]+)%', stdout, re.M)[-1]),
            float(re.findall(r'^Rank-1  : ([\d.]+)%', stdout, re.M)[-1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rows', nargs='+', choices=list(ROWS), default=list(ROWS), metavar='ROW')
    parser.add_argument('--epochs', type=int, default=20)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--train-batch', type=int, default=32, help='P x K = 8 x 4 for every row')
    parser.add_argument('--seed', type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        synthetic_data.make_market1501(os.path.join(root, 'market1501'), num_train_ids=64, num_test_ids=40,
                                       seed=0)
        scale = args.epochs / 120
        common = [sys.executable, os.path.join(REPO, 'train_img_model_xent_htri.py'), '--root', root,
                  '--height', '64', '--width', '32', '--no-pretrained', '--workers', '0', '--print-freq', '1000',
                  '--lr', str(args.lr), '--train-batch', str(args.train_batch), '--max-epoch', str(args.epochs),
                  '--seed', str(args.seed)]
        # No learning-rate decay in any row: the decay is common to both recipes, not one of the
        # tricks, and these short runs from random initialisation are still learning at their end.
        bot_schedule = ['--warmup-epochs', str(round(10 * scale)), '--lr-scheduler', 'step', '--stepsize', '0']
        untrained = subprocess.run(common + ['--evaluate', '--save-dir', os.path.join(root, 'untrained')],
                                   capture_output=True, text=True, check=True)
        rows = [('untrained (classic model)', *last_result(untrained.stdout), 0.0, '--evaluate')]
        for name in args.rows:
            flags = ROWS[name]
            if 'bot' in flags:  # the scaled bot schedule; the row's own flags come last and win
                flags = flags[:2] + bot_schedule + flags[2:]
            start = time.time()
            result = subprocess.run(common + flags + ['--save-dir', os.path.join(root, name.replace(' ', '_'))],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f'{name} failed:\n{result.stderr[-2000:]}')
            rows.append((name, *last_result(result.stdout), time.time() - start, ' '.join(flags)))
            print(f'{name}: mAP {rows[-1][1]:.1f}%, Rank-1 {rows[-1][2]:.1f}%', flush=True)

    print(f'\n{args.epochs} epochs, lr {args.lr}, 64x32, random initialisation, seed {args.seed}\n')
    print(f'| {"row":<28} | mAP   | Rank-1 | time  | flags')
    print(f'| {"-" * 28} | ----- | ------ | ----- | -----')
    for name, mAP, rank1, seconds, flags in rows:
        print(f'| {name:<28} | {mAP:5.1f} | {rank1:6.1f} | {seconds:4.0f}s | {flags}')


if __name__ == '__main__':
    main()
