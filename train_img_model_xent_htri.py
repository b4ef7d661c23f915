"""Train an image re-ID model (Market-1501) with label-smoothed cross entropy plus the batch-hard
triplet loss, on P identities x K instances batches.

    python train_img_model_xent_htri.py -d market1501 -a resnet50 --max-epoch 180 --train-batch 32 \\
        --test-batch 32 --stepsize 60 --eval-step 20 --save-dir log/resnet50-xent-htri-market1501 --gpu-devices 0
"""
import engine
import options
from losses import ReIDLoss


def get_args_parser():
    return options.get_args_parser(__doc__, max_epoch=180, stepsize=60, test_batch=32, triplet=True)


def build_criterion(args, num_classes, feat_dim):
    return ReIDLoss(num_classes, args.label_smooth, margin=args.margin, htri_only=args.htri_only,
                    center_weight=args.center_loss, feat_dim=feat_dim,
                    soft_margin=args.soft_margin)


if __name__ == '__main__':
    engine.main(get_args_parser().parse_args(), video=False, loss={'xent', 'htri'},
                build_criterion=build_criterion)
