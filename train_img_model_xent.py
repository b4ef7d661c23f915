"""Train an image re-ID model (Market-1501) with label-smoothed cross entropy.

    python train_img_model_xent.py -d market1501 -a resnet50 --max-epoch 60 --train-batch 32 \\
        --test-batch 32 --stepsize 20 --eval-step 20 --save-dir log/resnet50-xent-market1501 --gpu-devices 0
"""
import engine
import options
from losses import ReIDLoss


def get_args_parser():
    return options.get_args_parser(__doc__, max_epoch=60, stepsize=20, test_batch=32)


def build_criterion(args, num_classes, feat_dim):
    return ReIDLoss(num_classes, args.label_smooth, center_weight=args.center_loss, feat_dim=feat_dim)


if __name__ == '__main__':
    engine.main(get_args_parser().parse_args(), video=False, loss={'xent'}, build_criterion=build_criterion)
