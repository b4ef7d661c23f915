import numpy as np
import pytest
import torch

import rerank
from eval_metrics import evaluate, evaluate_blocks
from reference_rerank import reference_re_ranking
from rerank import re_ranking, re_ranking_features


def euclidean(a, b):
    return torch.cdist(a.double(), b.double()).float()


def random_features(seed, num_query, num_gallery, dim=8, num_ids=6):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids, dim, generator=g) * 2
    q_ids = torch.randint(num_ids, (num_query,), generator=g)
    g_ids = torch.randint(num_ids, (num_gallery,), generator=g)
    return (centers[q_ids] + torch.randn(num_query, dim, generator=g),
            centers[g_ids] + torch.randn(num_gallery, dim, generator=g), q_ids, g_ids)


def test_hand_computed_case():
    # 1-D features: query 0, gallery 1 and 3 (worked out step by step in the comment below).
    qf, gf = torch.tensor([[0.0]]), torch.tensor([[1.0], [3.0]])
    # Squared distances rows [0 1 9], [1 0 4], [9 4 0] -> per-row normalised; with k1 = 1 the
    # sets are {0, 1}, {0, 1}, {2}; V(0) = softmax-like exp(-[0, 1/9]) normalised
    # = [0.527749, 0.472251], V(1) = exp(-[0.25, 0]) normalised = [0.437818, 0.562182];
    # s(0, 1) = 0.437818 + 0.472251 = 0.910069 -> Jaccard 0.165021; s(0, 2) = 0 -> 1.
    expected = np.array([[0.7 * 0.165021 + 0.3 / 9, 1.0]])
    np.testing.assert_allclose(re_ranking_features(qf, gf, k1=1, k2=1).numpy(), expected, atol=1e-5)
    q_g, q_q, g_g = np.array([[1.0, 3.0]]), np.zeros((1, 1)), np.array([[0.0, 2.0], [2.0, 0.0]])
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=1, k2=1), expected, atol=1e-5)
    np.testing.assert_allclose(reference_re_ranking(q_g, q_q, g_g, k1=1, k2=1), expected, atol=1e-5)


def test_lambda_one_is_the_normalised_original_distance():
    qf, gf, _, _ = random_features(0, 5, 12)
    full = torch.cat([qf, gf])
    squared = euclidean(full, full) ** 2
    expected = (squared / squared.max(dim=1, keepdim=True).values)[:5, 5:]
    torch.testing.assert_close(re_ranking_features(qf, gf, k1=4, k2=2, lambda_value=1.0), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('seed, k1, k2, tile_rows', [(0, 20, 6, 4096), (1, 5, 3, 4096), (2, 8, 1, 4096), (3, 3, 4, 4096),
                                                      (4, 6, 6, 4096), (0, 20, 6, 7), (1, 5, 3, 16)])
def test_matches_literal_reference(seed, k1, k2, tile_rows, monkeypatch):
    """Also with the neighbour pass in small tiles (uneven, straddling the query / gallery
    boundary), each read both ways."""
    monkeypatch.setattr(rerank, 'TILE_BYTES', 4 * tile_rows * tile_rows)
    qf, gf, _, _ = random_features(seed, 9, 30)
    q_g, q_q, g_g = euclidean(qf, gf).numpy(), euclidean(qf, qf).numpy(), euclidean(gf, gf).numpy()
    expected = reference_re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=0.3)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=k1, k2=k2), expected, atol=1e-5)
    np.testing.assert_allclose(re_ranking_features(qf, gf, k1=k1, k2=k2).numpy(), expected, atol=1e-5)


def test_blocks_match_and_stream_into_the_evaluator():
    qf, gf, q_ids, g_ids = random_features(5, 40, 300, num_ids=12)
    q_cams, g_cams = torch.zeros(40, dtype=torch.long), torch.ones(300, dtype=torch.long)
    full = re_ranking_features(qf, gf)
    streamed = evaluate_blocks(re_ranking_features(qf, gf, stream=True), q_ids, g_ids, q_cams, g_cams, verbose=False)
    whole = evaluate(full, q_ids, g_ids, q_cams, g_cams, verbose=False)
    assert streamed.mAP == whole.mAP and (streamed.cmc == whole.cmc).all()


def test_recomputing_query_gallery_distances_gives_the_same_result(monkeypatch):
    from rerank import _FeatureDistances, re_ranking_blocks
    monkeypatch.setattr(rerank, 'TILE_BYTES', 4 * 9 * 9)  # the kept part assembled from small tiles
    qf, gf, _, _ = random_features(6, 20, 50)
    kept = torch.cat([b for _, b in re_ranking_blocks(_FeatureDistances(qf, gf), block_size=7)])
    recomputed = torch.cat([b for _, b in re_ranking_blocks(_FeatureDistances(qf, gf), block_size=7, keep_bytes=0)])
    torch.testing.assert_close(kept, recomputed)


def test_bad_parameters():
    qf, gf, _, _ = random_features(7, 3, 5)
    with pytest.raises(ValueError, match='at least 21'):
        re_ranking_features(qf, gf)
    with pytest.raises(ValueError, match='k2'):
        re_ranking_features(qf, gf, k1=3, k2=9)
