"""Train a video re-ID model (MARS) with label-smoothed cross entropy plus the batch-hard triplet
loss, on P identities x K instances batches.

By default tracklets are decomposed into frames and trained as images; --clip-train trains on
clips of --seq-len frames with temporal pooling. Testing pools --seq-len evenly spaced frames
per tracklet (or all of them, --test-sample all).

    python train_vid_model_xent_htri.py -d mars -a resnet50 --max-epoch 500 --train-batch 32 \\
        --test-batch 5 --stepsize 200 --eval-step 20 --save-dir log/resnet50-xent-htri-mars --gpu-devices 0
"""
import engine
import options
from losses import ReIDLoss


def get_args_parser():
    return options.get_args_parser(__doc__, max_epoch=500, stepsize=200, test_batch=5, video=True, triplet=True)


def build_criterion(args, num_classes, feat_dim):
    return ReIDLoss(num_classes, args.label_smooth, margin=args.margin, htri_only=args.htri_only,
                    center_weight=args.center_loss, feat_dim=feat_dim,
                    soft_margin=args.soft_margin)


if __name__ == '__main__':
    engine.main(get_args_parser().parse_args(), video=True, loss={'xent', 'htri'},
                build_criterion=build_criterion)
