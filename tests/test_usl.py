"""Unsupervised training (Cluster Contrast): the clustering step against literal references, the
cluster-contrast loss and sampler, and the script: no label leak, exact resume, adaptation."""
import re
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cluster
from losses import ClusterContrastLoss
from samplers import ClusterSampler


def clustered_features(num, dim, num_ids, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(num_ids, (num,), generator=g)
    return torch.randn(num_ids, dim, generator=g)[ids] + noise * torch.randn(num, dim, generator=g), ids


def reference_jaccard(features, k1=30, k2=6):
    """Cluster Contrast's compute_jaccard_distance written out from its definition, dense, in float64."""
    x = F.normalize(features.double(), dim=1).numpy()
    num = len(x)
    dist = 2 - 2 * x @ x.T
    rank = np.argsort(dist, axis=1, kind='stable')[:, :k1]  # k1 neighbours, itself included

    def reciprocal(i, k):
        return [c for c in rank[i, :k + 1] if i in rank[c, :k + 1]]

    k_half = int(np.around(k1 / 2))
    V = np.zeros((num, num))
    for i in range(num):
        r_set = reciprocal(i, k1)
        expanded = set(r_set)
        for c in r_set:
            r_half = reciprocal(c, k_half)
            if len(set(r_half) & set(r_set)) > 2 / 3 * len(r_half):
                expanded |= set(r_half)
        members = sorted(expanded)
        weights = np.exp(-dist[i, members])
        V[i, members] = weights / weights.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(num)])
    jaccard = np.ones((num, num))
    for i in range(num):
        columns = np.nonzero(V[i])[0]  # min(V(i, k), V(j, k)) is 0 elsewhere
        shared = np.minimum(V[i, columns], V[:, columns]).sum(axis=1)
        jaccard[i] = 1 - shared / (2 - shared)
    return np.maximum(jaccard, 0)


def reference_dbscan(distance, eps, min_samples):
    """DBSCAN as Ester et al. define it, on a dense distance matrix (breadth-first expansion from
    each unvisited core point in index order, border points to the first cluster reaching them)."""
    num = len(distance)
    neighbourhoods = [np.nonzero(distance[i] <= eps)[0] for i in range(num)]
    core = np.array([len(n) >= min_samples for n in neighbourhoods])
    labels = np.full(num, -1)
    next_label = 0
    for i in range(num):
        if labels[i] != -1 or not core[i]:
            continue
        labels[i], queue = next_label, [i]
        while queue:
            p = queue.pop()
            if not core[p]:
                continue
            for q in neighbourhoods[p]:
                if labels[q] == -1:
                    labels[q] = next_label
                    queue.append(q)
        next_label += 1
    return labels


def same_partition(a, b):
    """Whether two labelings are equal up to renaming the clusters (-1 stays -1)."""
    a, b = np.asarray(a), np.asarray(b)
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = set(zip(a[a >= 0].tolist(), b[b >= 0].tolist()))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


def test_jaccard_equals_dense_reference():
    features, _ = clustered_features(1500, 32, 110, noise=0.6)
    expected = reference_jaccard(features)
    sparse = cluster.jaccard_distance(features)
    assert sparse.shape == (1500, 1500)
    np.testing.assert_allclose(densify(sparse), expected, atol=1e-6)
    # Kept within max_distance only: exactly the entries <= eps, with the same values.
    within = cluster.jaccard_distance(features, max_distance=0.6)
    assert np.array_equal(densify(within), np.where(densify(sparse) <= 0.6, densify(sparse), 1))


def densify(matrix):
    """The dense distances of a sparse matrix whose absent entries mean distance 1."""
    out = np.ones(matrix.shape)
    coo = matrix.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


def test_dbscan_labels_equal_reference_up_to_relabelling():
    features, _ = clustered_features(800, 32, 60, noise=0.7, seed=1)
    dense = densify(cluster.jaccard_distance(features))  # equal to reference_jaccard (above)
    for eps, min_samples in ((0.6, 4), (0.5, 2), (0.7, 6)):
        labels = cluster.dbscan(cluster.jaccard_distance(features, max_distance=eps), eps, min_samples)
        expected = reference_dbscan(dense, eps, min_samples)
        assert same_partition(labels, expected), (eps, min_samples)
        assert 5 < labels.max() + 1 and (labels >= 0).sum() > 100


def test_zero_distances_are_stored_and_count():
    """Exact duplicates have Jaccard distance 0: stored explicitly, so DBSCAN sees them as
    neighbours (an absent entry would mean distance 1)."""
    features = torch.randn(40, 16, generator=torch.Generator().manual_seed(2)).repeat_interleave(4, dim=0)  # 40 groups of 4 identical rows
    distance = cluster.jaccard_distance(features, k1=4, k2=1, max_distance=0.6)
    assert distance.nnz == 40 * 16 and (distance.data == 0).all()
    labels = cluster.dbscan(distance, 0.6, 4)
    assert same_partition(labels, np.arange(160) // 4)


def test_pairwise_scores_by_hand():
    # Clusters {0,1,2}, {3,4}, outlier 5; truth {0,1}, {2,3,4,5}.
    predicted, truth = [0, 0, 0, 1, 1, -1], [7, 7, 9, 9, 9, 9]
    # Predicted pairs: 01 02 12 34 (4). True pairs: 01, 23 24 25 34 35 45 (7). Both: 01, 34 (2).
    precision, recall, f1 = cluster.pairwise_scores(predicted, truth)
    assert (precision, recall) == (2 / 4, 2 / 7)
    assert f1 == pytest.approx(2 * 0.5 * (2 / 7) / (0.5 + 2 / 7))
    assert cluster.pairwise_scores([-1, -1], [0, 0]) == (0.0, 0.0, 0.0)
    assert cluster.pairwise_scores([3, 3, 5], [1, 1, 2]) == (1.0, 1.0, 1.0)


def test_tracklets_are_never_split():
    features, ids = clustered_features(600, 32, 40, noise=0.8, seed=3)
    tracklets = np.arange(600) // 3  # must-link groups of three
    labels, report = cluster.pseudo_labels(features, groups=tracklets, k1=10, k2=3)
    assert all(len(set(labels[tracklets == t])) == 1 for t in range(200))
    assert report['clusters'] == labels.max() + 1 and report['outliers'] == (labels < 0).sum()
    assert set(report) >= {'neighbours', 'jaccard', 'dbscan'}
