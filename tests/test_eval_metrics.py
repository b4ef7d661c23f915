import numpy as np
import pytest
import torch

import eval_metrics
from eval_metrics import (
    NoValidQueryError,
    ReIDMetrics,
    evaluate,
    evaluate_blocks,
    evaluate_features,
    format_verification,
    pairwise_distance,
    squared_euclidean,
)
from reference_metrics import reference_evaluate, reference_verification


def assert_same(fast, reference, tol=1e-6):
    cmc, mAP, mINP, num_valid = reference
    assert fast.num_valid == num_valid
    np.testing.assert_allclose(fast.cmc, cmc, atol=tol, rtol=0)
    assert fast.mAP == pytest.approx(mAP, abs=tol)
    assert fast.mINP == pytest.approx(mINP, abs=tol)


def random_problem(rng, num_query, num_gallery, num_pids=8, num_cams=3):
    return (rng.integers(0, num_pids, num_query), rng.integers(0, num_pids, num_gallery),
            rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery))



@pytest.mark.parametrize('kind', ['continuous', 'ties', 'wide-range', 'negative', 'infinite'])
def test_matches_reference_on_random_cases(kind):
    rng = np.random.default_rng({'continuous': 0, 'ties': 1, 'wide-range': 2, 'negative': 3, 'infinite': 4}[kind])
    checked = 0
    for _ in range(60):
        nq, ng = rng.integers(1, 30), rng.integers(1, 70)
        labels = random_problem(rng, nq, ng)
        if kind == 'continuous':
            distmat = rng.random((nq, ng), dtype=np.float32)
        elif kind == 'ties':
            distmat = rng.integers(0, 4, (nq, ng)).astype(np.float32)
        elif kind == 'wide-range':  # spans every float exponent: exercises the bucket bounds
            distmat = (rng.random((nq, ng)) * 10.0 ** rng.uniform(-38, 38, (nq, ng))).astype(np.float32)
        elif kind == 'negative':
            distmat = rng.standard_normal((nq, ng)).astype(np.float32)
            distmat[0, :1] = -0.0
        else:  # some entries (true matches among them) at +-inf, e.g. masked by the caller
            distmat = rng.random((nq, ng), dtype=np.float32)
            distmat[rng.random((nq, ng)) < 0.1] = np.inf
            distmat[rng.random((nq, ng)) < 0.05] = -np.inf
        ref = reference_evaluate(distmat, *labels, max_rank=10)
        if ref[3] == 0:
            with pytest.raises(NoValidQueryError):
                evaluate(distmat, *labels, max_rank=10, verbose=False)
            continue
        assert_same(evaluate(distmat, *labels, max_rank=10, verbose=False), ref)
        checked += 1
    assert checked > 30


def test_ties_break_by_gallery_order():
    # One query, everything at the same distance: ranks follow gallery order.
    q_pids, q_cams = np.array([1]), np.array([0])
    g_pids, g_cams = np.array([2, 1, 3, 1]), np.array([1, 1, 1, 1])
    result = evaluate(np.zeros((1, 4), np.float32), q_pids, g_pids, q_cams, g_cams, max_rank=4)
    # Matches at ranks 2 and 4: AP = (1/2 + 2/4) / 2, INP = 2 / 4.
    assert result.mAP == pytest.approx(0.5) and result.mINP == pytest.approx(0.5)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1])
    # -0.0 and 0.0 are equal distances, so still gallery order.
    distmat = np.array([[0.0, -0.0, 0.0, -0.0]], np.float32)
    assert evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=4).mAP == pytest.approx(0.5)


def test_blocks_with_and_without_shared_buckets_match_reference():
    """A block where no true match shares its distance bucket with another entry takes the
    true matches themselves as the only entries to sort exactly (ties among them still by
    gallery order); one shared bucket anywhere in a block has the whole block scanned. Each
    row alone and both in one block."""
    g_pids = np.array([1, 2, 1, 3, 1, 2, 3, 1])
    g_cams = np.array([1, 1, 1, 1, 1, 0, 1, 0])
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    # Query 0 (pid 1, camera 0): g7 is junk. Matches g0 and g2 tie at 0.5, g4 at 0.6, nothing
    # else in their buckets. Ranked: g3 (0.2), g0, g2, g5 (0.55), g4, g1, g6 -> matches at
    # ranks 2, 3, 5. Query 1 (pid 2, camera 0): g5 is junk; its one match g1 ties at 0.3 with
    # g0 before it and g3 after it -> rank 3 (after g2 at 0.1 and g0).
    distmat = np.array([[0.5, 0.9, 0.5, 0.2, 0.6, 0.55, 1.0, 0.0],
                        [0.3, 0.3, 0.1, 0.3, 0.9, 0.2, 0.8, 0.7]], np.float32)
    expected_ap = [(1 / 2 + 2 / 3 + 3 / 5) / 3, 1 / 3]
    labels = q_pids, g_pids, q_cams, g_cams
    for rows in ([0], [1], [0, 1]):
        result = evaluate(distmat[rows], q_pids[rows], g_pids, q_cams[rows], g_cams, max_rank=8, verbose=False)
        np.testing.assert_allclose(result.ap, np.array(expected_ap)[rows])
        assert_same(result, reference_evaluate(distmat[rows], q_pids[rows], g_pids, q_cams[rows], g_cams, max_rank=8))
    blocks = [(1, distmat[1:]), (0, distmat[:1])]
    assert evaluate_blocks(blocks, *labels, verbose=False).mAP == pytest.approx(np.mean(expected_ap))


def test_hand_computed_case():
    distmat = np.array([[0.1, 0.5, 0.3, 0.2, 0.9],
                        [0.4, 0.1, 0.2, 0.8, 0.3]], np.float32)
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    g_pids = np.array([1, 2, 1, 3, 2])
    g_cams = np.array([0, 1, 1, 1, 0])
    # Query 0 (pid 1, cam 0): gallery 0 is same pid & camera -> removed. Ranked: g3 (0.2), g2
    # (0.3, match), g1, g4 -> one match at rank 2: AP 1/2, first hit 2.
    # Query 1 (pid 2, cam 0): gallery 4 removed. Ranked: g1 (0.1, match), g2, g0, g3 -> AP 1.
    result = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    assert result.mAP == pytest.approx(0.75)
    assert result.mINP == pytest.approx(0.75)
    np.testing.assert_allclose(result.cmc, [0.5, 1.0, 1.0])
    np.testing.assert_allclose(result.ap, [0.5, 1.0])


def test_queries_without_match_are_skipped_and_counted(capsys):
    distmat = np.array([[0.1, 0.2], [0.3, 0.1]], np.float32)
    result = evaluate(distmat, np.array([1, 5]), np.array([1, 2]), np.array([0, 0]), np.array([1, 1]))
    assert result.num_valid == 1 and result.mAP == 1.0
    assert result.ap[0] == 1.0 and np.isnan(result.ap[1])
    assert '1 of 2 queries have no true match' in capsys.readouterr().out


def test_tiny_gallery_truncates_cmc(capsys):
    distmat = np.array([[0.5, 0.1]], np.float32)
    result = evaluate(distmat, np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]), max_rank=50)
    assert result.cmc.tolist() == [0.0, 1.0]
    assert 'only 2 samples' in capsys.readouterr().out


def test_no_valid_query_explains_the_camera_rule():
    distmat = np.zeros((2, 3), np.float32)
    with pytest.raises(NoValidQueryError, match='same camera id'):
        evaluate(distmat, np.array([1, 2]), np.array([1, 2, 2]), np.zeros(2, int), np.zeros(3, int))


def test_nan_distance_is_an_error():
    distmat = np.array([[0.1, np.nan]], np.float32)
    with pytest.raises(ValueError, match='NaN'):
        evaluate(distmat, np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]))


def test_blocks_and_features_paths_are_identical():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    qf, gf = torch.randn(37, 16), torch.randn(120, 16)
    labels = random_problem(rng, 37, 120, num_pids=6)
    full = evaluate(squared_euclidean(qf, gf), *labels, verbose=False)
    for block in (1, 5, 37, 100):
        streamed = evaluate_features(qf, gf, *labels, block_size=block, verbose=False)
        assert streamed.mAP == full.mAP and streamed.mINP == full.mINP
        np.testing.assert_array_equal(streamed.cmc, full.cmc)
    # Blocks may arrive in any order.
    distmat = squared_euclidean(qf, gf)
    blocks = [(s, distmat[s:s + 10]) for s in range(0, 37, 10)][::-1]
    assert evaluate_blocks(blocks, *labels, verbose=False).mAP == full.mAP


def test_ranking_gives_torch_its_threads_back():
    """Blocks are ranked on one CPU thread; torch's thread count is restored after, errors too."""
    distmat = np.array([[0.1, 0.2]], np.float32)
    labels = np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate(distmat, *labels, verbose=False)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match='NaN'):
            evaluate(np.array([[0.1, np.nan]], np.float32), *labels)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_squared_euclidean():
    torch.manual_seed(0)
    qf, gf = torch.randn(5, 7, dtype=torch.float64), torch.randn(9, 7, dtype=torch.float64)
    expected = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    assert torch.allclose(squared_euclidean(qf, gf), expected)
    assert (squared_euclidean(qf, qf).diagonal() >= 0).all()


def test_market_scale_matches_reference_on_sampled_rows():
    """Full Market-size rows (15,913 gallery entries), realistic distances, 40 queries."""
    rng = np.random.default_rng(5)
    g = torch.Generator().manual_seed(5)
    q_pids, g_pids = rng.integers(1, 751, 40), rng.integers(0, 751, 15913)
    g_pids[:200] = np.repeat(q_pids, 5)
    q_cams, g_cams = rng.integers(0, 6, 40), rng.integers(0, 6, 15913)
    centers = torch.randn(751, 64, generator=g)
    qf = centers[q_pids] + torch.randn(40, 64, generator=g)
    gf = centers[g_pids] + torch.randn(15913, 64, generator=g)
    distmat = squared_euclidean(qf, gf).numpy()
    assert_same(evaluate(distmat, q_pids, g_pids, q_cams, g_cams, verbose=False),
                reference_evaluate(distmat, q_pids, g_pids, q_cams, g_cams))


def test_verification_matches_reference():
    """Ties, distractor pids, junk, queries without a true match, several blocks (so the held
    negatives are cut back), and FPRs that allow from 0 to half of the negatives."""
    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(24):
        nq, ng = rng.integers(2, 25), rng.integers(5, 60)
        # pids 0-9 in the gallery, 0-11 in the queries: distractors and no-match queries.
        labels = (rng.integers(0, 12, nq), rng.integers(0, 10, ng), rng.integers(0, 3, nq), rng.integers(0, 3, ng))
        if trial % 2:
            distmat = rng.integers(0, 5, (nq, ng)).astype(np.float32)
        else:
            distmat = rng.standard_normal((nq, ng)).astype(np.float32)
        if reference_evaluate(distmat, *labels)[3] == 0:
            continue
        blocks = [(s, distmat[s:s + 3]) for s in range(0, nq, 3)]
        for fprs in ((1e-4, 0.01, 0.05, 0.2, 0.5), (1e-3, 0.02)):
            expected = reference_verification(distmat, *labels, fprs)
            for result in (evaluate(distmat, *labels, verbose=False, fprs=fprs),
                           evaluate_blocks(blocks, *labels, verbose=False, fprs=fprs)):
                assert [f for f, _, _ in result.verification] == list(fprs)
                for (_, tpr, threshold), (_, ref_tpr, ref_threshold) in zip(result.verification, expected):
                    assert tpr == pytest.approx(ref_tpr, abs=1e-12) and threshold == ref_threshold
        checked += 1
    assert checked > 18


def test_verification_sampled_threshold_matches_reference():
    """Enough negatives (max(fprs) * negatives >= 1024) for _Verification to lower its
    threshold to an estimate from a 1/16 sample: one block and many, continuous and tied
    distances, and distances where every 16th of a row is tiny, so the estimate from the
    sample does not check out and the exact cut takes over."""
    rng = np.random.default_rng(11)
    nq, ng = 40, 160
    labels = rng.integers(0, 30, nq), rng.integers(0, 25, ng), rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    continuous = rng.random((nq, ng)).astype(np.float32)
    strided = continuous.copy()
    strided[:, ::16] *= 1e-3
    fprs = (0.01, 0.3, 0.5)
    for distmat in (continuous, rng.integers(0, 50, (nq, ng)).astype(np.float32), strided):
        expected = reference_verification(distmat, *labels, fprs)
        blocks = [(s, distmat[s:s + 3]) for s in range(0, nq, 3)]
        for result in (evaluate(distmat, *labels, verbose=False, fprs=fprs),
                       evaluate_blocks(blocks, *labels, verbose=False, fprs=fprs)):
            for (_, tpr, threshold), (_, ref_tpr, ref_threshold) in zip(result.verification, expected):
                assert tpr == pytest.approx(ref_tpr, abs=1e-12) and threshold == ref_threshold


def test_verification_guessed_threshold_is_exact_whatever_the_first_block(monkeypatch):
    """The threshold guessed from the first block: right (one pass), too tight because the
    first block's distances are smaller than the rest (a second, exact pass over the blocks,
    read again), too loose because they are larger (cut back to a proven threshold), and no
    guess at all for blocks from a generator, which cannot be read again. Every way, the
    figures equal the reference's."""
    made = []
    original_init = eval_metrics._Verification.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(eval_metrics._Verification, '__init__', recording_init)
    rng = np.random.default_rng(5)
    nq, ng = 600, 2000
    labels = rng.integers(0, 300, nq), rng.integers(0, 300, ng), rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    fprs = (1e-3, 0.01, 0.05)
    base = rng.random((nq, ng)).astype(np.float32)
    for first_block_scale, guessed, passes in ((1.0, True, 1), (0.5, True, 2), (3.0, True, 1)):
        distmat = base.copy()
        distmat[:100] *= first_block_scale
        expected = reference_verification(distmat, *labels, fprs)
        for blocks, guessed in (([(s, distmat[s:s + 100]) for s in range(0, nq, 100)], guessed),
                                (((s, distmat[s:s + 100]) for s in range(0, nq, 100)), False)):
            made.clear()
            result = evaluate_blocks(blocks, *labels, verbose=False, fprs=fprs)
            for (_, tpr, threshold), (_, ref_tpr, ref_threshold) in zip(result.verification, expected):
                assert tpr == pytest.approx(ref_tpr, abs=1e-12) and threshold == ref_threshold
            assert len(made) == (passes if guessed else 1)
            assert made[0].proven == (not guessed or first_block_scale > 1)
    # evaluate_features computes its blocks again when read again, so it may guess.
    qf, gf = torch.randn(nq, 16), torch.randn(ng, 16)
    made.clear()
    result = evaluate_features(qf, gf, *labels, verbose=False, fprs=fprs)
    assert not made[0].proven
    assert result.verification == evaluate(pairwise_distance(qf, gf), *labels, verbose=False, fprs=fprs).verification


def test_verification_threshold_rejects_ties():
    # One query (pid 1, camera 0); gallery: 4 negatives (pid 2) and 3 true matches (camera 1),
    # plus a junk entry at 0.0 that must not count as a true match.
    g_pids = np.array([2, 2, 2, 2, 1, 1, 1, 1])
    g_cams = np.array([1, 1, 1, 1, 1, 1, 1, 0])
    distmat = np.array([[0.1, 0.2, 0.2, 0.3, 0.05, 0.2, 0.25, 0.0]], np.float32)
    result = evaluate(distmat, np.array([1]), g_pids, np.array([0]), g_cams, verbose=False,
                      fprs=(0.25, 0.5, 0.75))
    below = float(np.nextafter(np.float32(0.2), np.float32(-1)))
    # FPR 0.25: 1 negative may pass -> just below the second (0.2): only 0.05 accepted.
    # FPR 0.5: 2 may pass, but the 2nd and 3rd tie at 0.2, so both are rejected: same threshold.
    # FPR 0.75: 3 may pass -> just below 0.3: 0.05, 0.2 and 0.25 accepted.
    below_03 = float(np.nextafter(np.float32(0.3), np.float32(-1)))
    assert result.verification == ((0.25, 1 / 3, below), (0.5, 1 / 3, below), (0.75, 1.0, below_03))
    lines = format_verification(result)
    assert lines[1] == 'TPR@FPR=2e-01: 33.3% (threshold 0.2)'  # 0.2's predecessor, to 6 digits
    assert len(lines) == 4 and 'distance <= threshold' in lines[0]


def test_verification_is_optional_and_metrics_stay_compatible():
    distmat = np.array([[0.1, 0.2]], np.float32)
    labels = np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1])
    assert evaluate(distmat, *labels, fprs=()).verification == ()
    assert format_verification(evaluate(distmat, *labels, fprs=())) == []
    with pytest.raises(ValueError, match='fprs'):
        evaluate(distmat, *labels, fprs=(0.0,))
    # Code that builds or unpacks the first four fields keeps working.
    assert ReIDMetrics(np.ones(1), 1.0, 1.0, 1).verification == ()


def test_cosine_metric_matches_reference():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    qf, gf = torch.randn(30, 12) * torch.rand(30, 1) * 5, torch.randn(70, 12) * torch.rand(70, 1) * 5
    q, g = qf.double().numpy(), gf.double().numpy()
    cosine = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    np.testing.assert_allclose(pairwise_distance(qf, gf, 'cosine').numpy(), cosine, atol=1e-6)
    labels = random_problem(rng, 30, 70)
    # Random 12-d directions leave gaps far above float32 rounding between distances in a row,
    # so the float64 reference ranks the same way.
    for block in (7, 256):
        result = evaluate_features(qf, gf, *labels, block_size=block, verbose=False, metric='cosine')
        assert_same(result, reference_evaluate(cosine, *labels))
    # Cosine ignores feature norms, squared Euclidean does not.
    euclidean = evaluate_features(qf, gf, *labels, verbose=False)
    assert euclidean.mAP != result.mAP
    assert_same(euclidean, reference_evaluate(((q[:, None] - g[None]) ** 2).sum(-1), *labels))


def test_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="'manhattan'.*euclidean, cosine"):
        evaluate_features(torch.ones(2, 3), torch.ones(4, 3), np.zeros(2), np.zeros(4), np.zeros(2), np.ones(4),
                          metric='manhattan')
