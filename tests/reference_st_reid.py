"""A slow, literal implementation of st-ReID's spatial-temporal stream on DukeMTMC-reID names
(Wang et al., AAAI 2019; github.com/Wanggcong/Spatial-Temporal-Re-identification,
gen_st_model_duke.py and evaluate_st.py), for the tests: a (8, 8, 3000) [to][from] table of
100-frame bins, smoothed by a dense Gaussian matrix, looked up per query-gallery pair."""
import numpy as np
from scipy.linalg import toeplitz

NUM_BINS, INTERVAL, SIGMA = 3000, 100.0, 50.0


def parse(name):
    """(pid, camera 1-8, frame) of a name like 0001_c2_f0046182.jpg, as their get_id reads it."""
    return int(name[0:4]), int(name.split('c')[1][0]), int(name[9:16])


def reference_distribution(train_names):
    """Their spatial_temporal_distribution, then gauss_smooth2 and the renormalisation. The
    mean frame is sum / count (they add 1e-7 to the count, which moves a few samples across a
    bin edge; left out so the comparison can be exact)."""
    items = [parse(name) for name in train_names]
    label = {pid: i for i, pid in enumerate(sorted({pid for pid, _, _ in items}))}
    total, count = np.zeros((len(label), 8)), np.zeros((len(label), 8))
    for pid, cam, frame in items:
        total[label[pid], cam - 1] += frame
        count[label[pid], cam - 1] += 1
    mean = total / np.maximum(count, 1)
    distribution = np.zeros((8, 8, NUM_BINS))
    for i in range(len(label)):
        for j in range(7):
            for k in range(j + 1, 8):
                if count[i, j] == 0 or count[i, k] == 0:
                    continue
                if mean[i, j] > mean[i, k]:
                    distribution[j, k, int((mean[i, j] - mean[i, k]) / INTERVAL)] += 1
                else:
                    distribution[k, j, int((mean[i, k] - mean[i, j]) / INTERVAL)] += 1
    distribution /= distribution.sum(axis=2, keepdims=True) + 1e-7
    kernel = np.exp(-np.arange(NUM_BINS) ** 2 / (2 * SIGMA ** 2)) / (SIGMA * np.sqrt(2 * np.pi))
    kernel[int(3 * SIGMA) + 1:] = 0  # their approximate_delta: 3 sigmas
    distribution = distribution @ toeplitz(kernel)
    return distribution / (distribution.sum(axis=2, keepdims=True) + 1e-7)


def reference_probability(distribution, query_name, gallery_names):
    """(N,) st probabilities of one query against the gallery, as their evaluate() computes them."""
    _, q_cam, q_frame = parse(query_name)
    out = np.zeros(len(gallery_names))
    for n, name in enumerate(gallery_names):
        _, g_cam, g_frame = parse(name)
        if q_frame > g_frame:
            out[n] = distribution[q_cam - 1, g_cam - 1, int((q_frame - g_frame) / INTERVAL)]
        else:
            out[n] = distribution[g_cam - 1, q_cam - 1, int((g_frame - q_frame) / INTERVAL)]
    return out
