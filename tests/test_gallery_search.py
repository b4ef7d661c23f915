"""gallery_search.py and search_gallery.py: exact top-k against a dense stable sort across block
and file boundaries, the filters against eval_metrics.py's protocol, bounded memory, faiss."""
import os
import re
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

import eval_metrics
import extract_features
import gallery_search
from conftest import REPO, run_script
from gallery_search import FaissIndex, GallerySearch, SearchError, plan_blocks, ranked_list_metrics


def integer_features(num, dim, seed):
    """Small integers: every dot product and squared norm is exact in float32, so the order
    and the ties are the same whatever the blocking (and ties are plentiful)."""
    return np.random.default_rng(seed).integers(-2, 3, size=(num, dim)).astype(np.float32)


def dense_reference(q, g, k, metric):
    """(indices, distances) of a stable sort of the whole (Q, N) score matrix: best first,
    ties by lower index; the search's formulas (eval_metrics' for the cosine distance)."""
    q, g = torch.from_numpy(q), torch.from_numpy(g)
    if metric == 'cosine':
        scores = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).t()
    else:
        scores = 2 * q @ g.t() - g.pow(2).sum(1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    best = scores.gather(1, order)
    distances = 1 - best if metric == 'cosine' else (q.pow(2).sum(1, keepdim=True) - best).clamp(min=0)
    return order.numpy(), distances.numpy()


def write_files(folder, g):
    """g split over .npz (stored), .h5, .npy and .npz (compressed) files."""
    cuts = np.linspace(0, len(g), 5).astype(int)
    parts = [g[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    paths = [folder / 'a.npz', folder / 'b.h5', folder / 'c.npy', folder / 'd.npz']
    np.savez(paths[0], features=parts[0])
    with h5py.File(paths[1], 'w') as f:
        f.create_dataset('features', data=parts[1], chunks=(min(1000, len(parts[1])), g.shape[1]))
    np.save(paths[2], parts[2])
    np.savez_compressed(paths[3], features=parts[3])
    return [str(p) for p in paths]


@pytest.fixture(scope='module')
def big_gallery(tmp_path_factory):
    folder = tmp_path_factory.mktemp('gallery')
    g = integer_features(100_000, 16, 0)
    g[5000:5010] = g[77_000]  # exact duplicates across a file boundary: ties at equal scores
    return g, write_files(folder, g)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_matches_dense_reference_across_blocks_and_files(big_gallery, metric):
    g, paths = big_gallery
    q = np.concatenate([integer_features(30, 16, 1), g[[77_000, 3]]])
    search = GallerySearch(paths, metric=metric, memory_mb=1)  # 2,816-row blocks: 36 of them
    assert plan_blocks(len(q), 16, 1)[1] < 3000
    for k in (1, 100, 3000):  # 3,000 > a block
        indices, distances = search.search(q, k)
        ref_indices, ref_distances = dense_reference(q, g, k, metric)
        np.testing.assert_array_equal(indices, ref_indices)
        np.testing.assert_array_equal(distances, ref_distances)
    assert list(indices[-2, :11]) == [5000 + i for i in range(10)] + [77_000]  # the duplicates, by index


def test_k_beyond_the_gallery_and_several_shards(tmp_path):
    g, q = integer_features(700, 8, 2), integer_features(9, 8, 3)
    paths = write_files(tmp_path, g)
    one = GallerySearch(paths, metric='euclidean', memory_mb=1)
    indices, distances = one.search(q, 1000)
    assert indices.shape == (9, 700)
    ref_indices, ref_distances = dense_reference(q, g, 700, 'euclidean')
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(distances, ref_distances)
    shards = GallerySearch(paths, metric='euclidean', memory_mb=1, device=['cpu', 'cpu', 'cpu'])
    for k in (5, 1000):
        np.testing.assert_array_equal(shards.search(q, k)[0], one.search(q, k)[0])


def test_reduced_precision_rescores_exactly():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(50, 64))
    g = (centres[rng.integers(50, size=5000)] + rng.normal(size=(5000, 64))).astype(np.float32)
    q = (centres[rng.integers(50, size=40)] + rng.normal(size=(40, 64))).astype(np.float32)
    exact = GallerySearch([g], metric='cosine').search(q, 50)
    indices, distances = GallerySearch([g], metric='cosine', dtype='bf16').search(q, 50)
    assert np.isin(indices, exact[0]).mean() >= 0.99
    # Where the lists agree, the distances are the float32 ones.
    same = indices == exact[0]
    np.testing.assert_allclose(distances[same], exact[1][same], rtol=0, atol=1e-6)


def market_case(seed=5):
    """Market-style ids and cameras (pid -1 junk and pid 0 distractors in the gallery) with
    integer features near each identity's centre."""
    rng = np.random.default_rng(seed)
    g_pids = np.concatenate([np.repeat(np.arange(1, 41), 6), np.zeros(30, int), -np.ones(20, int)])
    g_cams = rng.integers(0, 6, size=len(g_pids))
    q_pids, q_cams = np.repeat(np.arange(1, 41), 2), rng.integers(0, 6, size=80)
    centres = rng.integers(-3, 4, size=(41, 12))
    g = (centres[np.maximum(g_pids, 0)] + rng.integers(-2, 3, size=(len(g_pids), 12))).astype(np.float32)
    q = (centres[q_pids] + rng.integers(-2, 3, size=(80, 12))).astype(np.float32)
    return q, g, q_pids, g_pids, q_cams, g_cams


def test_same_camera_protocol_matches_the_evaluator():
    q, g, q_pids, g_pids, q_cams, g_cams = market_case()
    search = GallerySearch([g], metric='euclidean', gallery_camids=g_cams, gallery_pids=g_pids, memory_mb=1)
    indices, distances = search.search(q, len(g), query_camids=q_cams, query_pids=q_pids, exclude_same_camera=True)
    # The evaluator's kept entries: the parsed gallery (no pid -1) minus its junk pairs.
    parsed = np.flatnonzero(g_pids != -1)
    index = eval_metrics._GalleryIndex(torch.from_numpy(g_pids[parsed]), torch.from_numpy(g_cams[parsed]))
    _, (junk_rows, junk_cols) = index.same_pid_pairs(torch.from_numpy(q_pids), torch.from_numpy(q_cams))
    kept = np.ones((len(q), len(parsed)), dtype=bool)
    kept[junk_rows.numpy(), junk_cols.numpy()] = False
    for row in range(len(q)):
        assert sorted(indices[row][indices[row] >= 0]) == sorted(parsed[kept[row]])
    # Ranked lists through the whole gallery give the evaluator's CMC and mAP.
    distmat = eval_metrics.squared_euclidean(torch.from_numpy(q), torch.from_numpy(g[parsed]))
    result = eval_metrics.evaluate(distmat, q_pids, g_pids[parsed], q_cams, g_cams[parsed], max_rank=20,
                                   verbose=False, fprs=())
    cmc, mean_ap, _ = ranked_list_metrics(indices, q_pids, g_pids,
                                          search.filters(len(q), q_cams, q_pids, exclude_same_camera=True))
    np.testing.assert_allclose(cmc[:20], result.cmc)
    assert mean_ap == pytest.approx(result.mAP)


def test_filters_are_applied_before_the_cut():
    q, g, q_pids, g_pids, q_cams, g_cams = market_case(6)
    times = np.arange(len(g), dtype=float)
    q_times = np.random.default_rng(0).uniform(0, len(g), size=len(q))
    junk = [3, 17, 200]
    search = GallerySearch([g], metric='cosine', gallery_camids=g_cams, gallery_times=times, memory_mb=1)
    k = 15
    indices, distances = search.search(q, k, query_camids=q_cams, query_times=q_times, exclude_same_camera=True,
                                       time_window=(-150, 100), exclude_time_window=(-5, 5), junk=junk)
    ref_indices, ref_distances = dense_reference(q, g, len(g), 'cosine')
    for row in range(len(q)):
        offset = times[ref_indices[row]] - q_times[row]
        keep = ((g_cams[ref_indices[row]] != q_cams[row]) & (offset >= -150) & (offset <= 100)
                & ~((offset >= -5) & (offset <= 5)) & ~np.isin(ref_indices[row], junk))
        expected = ref_indices[row][keep][:k]
        np.testing.assert_array_equal(indices[row][:len(expected)], expected)
        np.testing.assert_array_equal(distances[row][:len(expected)], ref_distances[row][keep][:k])
        assert (indices[row][len(expected):] == -1).all() and np.isinf(distances[row][len(expected):]).all()
    # Camera only: with k=5 every row still has 5 entries, none from the query's camera.
    indices, _ = search.search(q, 5, query_camids=q_cams, exclude_same_camera=True)
    assert (indices >= 0).all() and (g_cams[indices] != q_cams[:, None]).all()


def test_memory_stays_within_budget(tmp_path):
    """A memory-mapped 120 MB gallery searched with a 16 MB budget: the anonymous memory
    (the search's own; the file's pages are the page cache's) grows far less than the file."""
    path = tmp_path / 'g.npy'
    np.save(path, np.random.default_rng(0).standard_normal((120_000, 256), dtype=np.float32))
    script = textwrap.dedent(f'''
        import sys, threading, time
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from gallery_search import GallerySearch
        def anon():
            with open('/proc/self/status') as f:
                return next(int(l.split()[1]) for l in f if l.startswith('RssAnon:')) / 1024
        search = GallerySearch([{str(path)!r}], metric='euclidean', memory_mb=16)
        q = np.random.default_rng(1).standard_normal((64, 256), dtype=np.float32)
        search.search(q[:2], 5)
        peak, start, running = [0.0], anon(), True
        def sample():
            while running:
                peak[0] = max(peak[0], anon()); time.sleep(0.001)
        thread = threading.Thread(target=sample); thread.start()
        search.search(q, 100)
        running = False; thread.join()
        print(peak[0] - start)
    ''')
    # A fixed mmap threshold: glibc then returns every large block it frees, as the benchmark sets it.
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '131072'}
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True, env=env)
    growth = float(result.stdout.split()[-1])
    assert growth < 16 + 20, f'anonymous memory grew by {growth:.0f} MiB'
    batch, rows = plan_blocks(64, 256, 16)
    assert batch * rows * 5 + rows * 256 * 12 <= 16 << 20


def test_metric_and_bad_input(tmp_path):
    g = integer_features(50, 8, 7)
    np.savez(tmp_path / 'cos.npz', features=g, metric=np.array('cosine'))
    with h5py.File(tmp_path / 'euc.h5', 'w') as f:
        f.create_dataset('features', data=g)
        f.attrs['metric'] = 'euclidean'
    np.save(tmp_path / 'none.npy', g)
    assert GallerySearch([str(tmp_path / 'cos.npz')]).metric == 'cosine'
    assert GallerySearch([str(tmp_path / 'euc.h5')]).metric == 'euclidean'
    with pytest.raises(SearchError, match='different metrics'):
        GallerySearch([str(tmp_path / 'cos.npz'), str(tmp_path / 'euc.h5')])
    with pytest.raises(SearchError, match='do not record their metric'):
        GallerySearch([str(tmp_path / 'none.npy')])
    with pytest.raises(SearchError, match='record'):
        GallerySearch([str(tmp_path / 'cos.npz')], metric='euclidean')
    np.save(tmp_path / 'wide.npy', integer_features(5, 9, 0))
    with pytest.raises(SearchError, match='different feature sizes'):
        GallerySearch([str(tmp_path / 'none.npy'), str(tmp_path / 'wide.npy')], metric='cosine')
    bad = g.copy()
    bad[7, 2] = np.nan
    with pytest.raises(SearchError, match='gallery entry 7'):
        GallerySearch([bad], metric='cosine').search(g[:2], 3)
    with pytest.raises(SearchError, match='needs query camids and gallery camids'):
        GallerySearch([g], metric='cosine').search(g[:2], 3, query_camids=[0, 1], exclude_same_camera=True)


def test_reads_what_extract_features_writes(tmp_path):
    """extract_features.write_features records the metric and the camids for the search."""
    g = integer_features(30, 8, 8)
    names = [f'0001_c{i % 3 + 1}s1_{i:06d}_00.jpg' for i in range(30)]
    camids = [extract_features.camera_id(name, re.compile(r'c(\d+)')) for name in names]
    for name in ('f.npz', 'f.h5'):
        extract_features.write_features(str(tmp_path / name), g, names, 'cosine', camids)
        search = GallerySearch([str(tmp_path / name)])
        assert search.metric == 'cosine' and list(search.column('camids')) == camids
        assert list(search.paths([[4, -1]])[0]) == [names[4], '']
    extract_features.write_features(str(tmp_path / 'f.npy'), g, names)
    assert list(GallerySearch([str(tmp_path / 'f.npy')], metric='cosine').column('paths')) == names


def test_script_end_to_end(tmp_path):
    q, g, q_pids, g_pids, q_cams, g_cams = market_case()
    names = [f'{pid:04d}_c{cam + 1}s1_{i:06d}_00.jpg' for i, (pid, cam) in enumerate(zip(g_pids, g_cams))]
    np.savez(tmp_path / 'g1.npz', features=g[:150], paths=np.array(names[:150]), metric=np.array('euclidean'))
    with h5py.File(tmp_path / 'g2.h5', 'w') as f:
        f.create_dataset('features', data=g[150:])
        f.create_dataset('paths', data=names[150:], dtype=h5py.string_dtype())
    q_names = [f'{pid:04d}_c{cam + 1}s2_{i:06d}_00.jpg' for i, (pid, cam) in enumerate(zip(q_pids, q_cams))]
    np.savez(tmp_path / 'q.npz', features=q, paths=np.array(q_names))
    result = run_script('search_gallery.py', '--gallery', str(tmp_path / 'g1.npz'), str(tmp_path / 'g2.h5'),
                        '--query', str(tmp_path / 'q.npz'), '--topk', '7', '--output', str(tmp_path / 'r.npz'),
                        '--exclude-same-camera', '--camera-pattern', r'c(\d+)', '--pid-pattern', r'^(-?\d+)_',
                        '--device', 'cpu')
    assert 'Wrote the 7 nearest of 80 queries' in result.stdout
    out = np.load(tmp_path / 'r.npz')
    search = GallerySearch([g], metric='euclidean', gallery_camids=g_cams, gallery_pids=g_pids)
    expected = search.search(q, 7, query_camids=q_cams, query_pids=q_pids, exclude_same_camera=True)[0]
    np.testing.assert_array_equal(out['indices'], expected)
    assert out['paths'][0, 0] == names[expected[0, 0]] and str(out['metric']) == 'euclidean'


def test_missing_faiss_message(monkeypatch):
    monkeypatch.setitem(sys.modules, 'faiss', None)  # import faiss raises ImportError
    search = GallerySearch([integer_features(20, 8, 0)], metric='cosine')
    with pytest.raises(SearchError, match='pip install faiss-cpu'):
        FaissIndex(search, 'IVF4,Flat')


def test_faiss_index_behind_the_same_interface(tmp_path):
    pytest.importorskip('faiss')
    q, g, q_pids, g_pids, q_cams, g_cams = market_case()
    search = GallerySearch([g], metric='cosine', gallery_camids=g_cams, gallery_pids=g_pids)
    path = str(tmp_path / 'ivf.faiss')
    index = FaissIndex(search, 'IVF4,Flat', path=path, params='nprobe=4')  # every list probed: exact
    filters = dict(query_camids=q_cams, query_pids=q_pids, exclude_same_camera=True)
    exact, exact_distances = search.search(q, 10, **filters)
    found, distances = index.search(q, 10, **filters)
    report = gallery_search.retrieval_report(exact, found, q_pids, g_pids, search.filters(len(q), **filters))
    assert report['k-recall@k'] > 0.99 and report['exact'][1] == pytest.approx(report['approx'][1], abs=0.01)
    np.testing.assert_allclose(distances, exact_distances, atol=1e-5)
    loaded = FaissIndex(search, 'IVF4,Flat', path=path, params='nprobe=4')
    assert loaded.build_seconds == 0 and np.array_equal(loaded.search(q, 10, **filters)[0], found)
    # Filters before the cut: the few lists probed still yield k kept entries.
    few = FaissIndex(search, 'IVF4,Flat', params='nprobe=1')
    found, _ = few.search(q, 10, **filters)
    assert (found >= 0).all()
    assert not ((g_pids[found] == q_pids[:, None]) & (g_cams[found] == q_cams[:, None])).any()
    with pytest.raises(SearchError, match='faiss cannot build'):
        FaissIndex(search, 'NotAnIndex')
    euclidean = GallerySearch([g], metric='euclidean')
    exact, exact_distances = euclidean.search(q, 10)
    found, distances = FaissIndex(euclidean, 'Flat').search(q, 10)
    assert (found == exact).mean() > 0.95
    np.testing.assert_allclose(distances, exact_distances, rtol=1e-5, atol=1e-3)
