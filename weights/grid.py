"""Position tables of ViT files: the grid a table was trained on, and its resampling to a model's grid.

Position tables are resampled bilinearly without antialiasing from the source grid to the
model's, as TransReID, TransReID-SSL and CLIP-ReID do (timm's own default is bicubic with
antialiasing, which differs by up to 0.03 on a table of std 0.02).
"""
import re

from timm.layers import resample_abs_pos_embed

from .core import PretrainedWeightsError

__all__ = ['KNOWN_GRIDS', 'parse_grid', 'source_grid', 'resample_position_table', 'resample_to_model']


# Grids of published person-pretrained and TransReID files that a token count alone cannot
# tell apart from a square: LUPerson pretraining and 256x128 fine-tuning (16x8), TransReID's
# stride 12 at 256x128 (21x10), 384x128 (24x8).
KNOWN_GRIDS = {128: (16, 8), 210: (21, 10), 192: (24, 8)}


def parse_grid(text):
    """'16x8' -> (16, 8)."""
    match = re.fullmatch(r'(\d+)x(\d+)', text or '')
    if not match:
        raise ValueError(f'--pretrained-grid {text!r}: give ROWSxCOLUMNS, e.g. 16x8')
    return int(match[1]), int(match[2])


def source_grid(num_patches, model_grid, path, given=None):
    """The (rows, columns) grid of a file's position table of num_patches entries: `given`
    (--pretrained-grid), the model's own grid when the counts agree, a square, or a known person
    grid (KNOWN_GRIDS); otherwise an error asking for --pretrained-grid."""
    if given is not None:
        if given[0] * given[1] != num_patches:
            raise PretrainedWeightsError(f'--pretrained-grid {given[0]}x{given[1]} has {given[0] * given[1]} cells, '
                                         f'but the position table of {path} has {num_patches}')
        return given
    if num_patches == model_grid[0] * model_grid[1]:
        return tuple(model_grid)
    side = round(num_patches ** 0.5)
    if side * side == num_patches:
        return side, side
    if num_patches in KNOWN_GRIDS:
        return KNOWN_GRIDS[num_patches]
    raise PretrainedWeightsError(
        f'{path}: cannot tell the grid of its position table ({num_patches} patches): pass --pretrained-grid '
        f'ROWSxCOLUMNS, the patch grid it was trained on (e.g. 16x8 for 256x128 with stride 16)')


def resample_position_table(table, old_grid, new_grid, prefix_tokens=1):
    """(1, prefix + old rows * old cols, D) -> (1, prefix + new rows * new cols, D): the grid part
    resized bilinearly (align_corners False, no antialiasing), the prefix (class token) kept."""
    return resample_abs_pos_embed(table, new_size=list(new_grid), old_size=list(old_grid),
                                  num_prefix_tokens=prefix_tokens, interpolation='bilinear', antialias=False)



def resample_to_model(state, model, report, grid=None):
    """state['pos_embed'] (1, 1 + N, D) resampled in place to the model's grid, said in the report."""
    table = state['pos_embed']
    old = source_grid(table.shape[1] - 1, model.grid_size, report.path, grid)
    if old != tuple(model.grid_size):
        state['pos_embed'] = resample_position_table(table, old, model.grid_size)
        report.resampled.append(f'pos_embed from a {old[0]}x{old[1]} grid to {model.grid_size[0]}x{model.grid_size[1]}')
    return old
