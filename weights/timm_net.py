"""Any timm file for `-a timm:<name>`, through timm's own per-family filter."""

__all__ = ['convert_timm']


def convert_timm(state, model, report, grid=None):
    """A timm file for `-a timm:<name>`: timm's own filter for that model family, then the
    classifier (the model's pretrained_cfg 'classifier' names) dropped."""
    net = model.backbone
    module = __import__(type(net).__module__, fromlist=['checkpoint_filter_fn'])
    classifier = net.pretrained_cfg.get('classifier') or 'head'
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    heads = [k for k in state if any(k.startswith(n + '.') for n in names)]
    report.drop('ImageNet classifier', heads)
    state = {k: v for k, v in state.items() if k not in heads}
    if hasattr(module, 'checkpoint_filter_fn'):
        state = module.checkpoint_filter_fn(state, net)
    report.source = f'timm {net.pretrained_cfg.get("architecture", type(net).__name__)} file'
    mean, std = net.pretrained_cfg.get('mean'), net.pretrained_cfg.get('std')
    if mean and std:
        report.pixel_mean, report.pixel_std = list(mean), list(std)
    return state, {}
