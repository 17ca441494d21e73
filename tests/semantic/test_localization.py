"""Intent localization against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from intentrec.errors import ConfigError
from intentrec.semantic.localization import localize, similarity_weights, top_k_items

# Catalogue of unit vectors in 2-D at known angles, so cosines are easy to write down.
CATALOGUE = np.array(
    [
        [1.0, 0.0],  # row 0: cos with answer [1,0] = 1
        [0.6, 0.8],  # row 1: 0.6
        [0.0, 1.0],  # row 2: 0
        [-1.0, 0.0],  # row 3: -1
        [0.8, 0.6],  # row 4: 0.8
    ],
    dtype=np.float32,
)
ANSWER = np.array([[2.0, 0.0]], dtype=np.float32)  # not unit length: cosine must normalise it


def test_k0_returns_the_raw_answer_embedding() -> None:
    out = localize(ANSWER, CATALOGUE, 0)
    np.testing.assert_array_equal(out, ANSWER)


def test_k1_is_the_nearest_item() -> None:
    np.testing.assert_allclose(localize(ANSWER, CATALOGUE, 1), [[1.0, 0.0]], atol=1e-6)


def test_k2_weights_are_similarities_normalised_to_one() -> None:
    sims, idx = top_k_items(ANSWER, CATALOGUE, 2)
    np.testing.assert_array_equal(idx, [[0, 4]])
    np.testing.assert_allclose(sims, [[1.0, 0.8]], atol=1e-6)
    # weights 1/1.8 and 0.8/1.8 → (1/1.8)*[1,0] + (0.8/1.8)*[0.8,0.6]
    expected = np.array([[1 / 1.8 + 0.64 / 1.8, 0.48 / 1.8]])
    np.testing.assert_allclose(localize(ANSWER, CATALOGUE, 2), expected, atol=1e-6)


def test_k3_uses_the_top_items_own_similarities_not_the_first_rows() -> None:
    # The authors' code pairs the top-k vectors with the similarities of rows 0..k-1 (1, 0.6, 0)
    # and divides by k; the correct weights are (1, 0.8, 0.6) / 2.4.
    expected = (1.0 * CATALOGUE[0] + 0.8 * CATALOGUE[4] + 0.6 * CATALOGUE[1]) / 2.4
    out = localize(ANSWER, CATALOGUE, 3)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    buggy = (1.0 * CATALOGUE[0] + 0.6 * CATALOGUE[4] + 0.0 * CATALOGUE[1]) / 3
    assert not np.allclose(out[0], buggy, atol=1e-3)


def test_negative_similarities_are_clamped_to_zero() -> None:
    # Answer [0,-1]: cos = 0, -0.8, -1, 0, -0.6 → top-2 are rows 0 and 3 (both 0, ties by row).
    answer = np.array([[0.0, -1.0]], dtype=np.float32)
    sims, idx = top_k_items(answer, CATALOGUE, 2)
    np.testing.assert_array_equal(idx, [[0, 3]])
    np.testing.assert_allclose(sims, [[0.0, 0.0]], atol=1e-6)
    # All similarities ≤ 0 → uniform weights.
    np.testing.assert_allclose(localize(answer, CATALOGUE, 2), [[0.0, 0.0]], atol=1e-6)
    w = similarity_weights(np.array([[0.5, -0.2, 0.3]], dtype=np.float32))
    np.testing.assert_allclose(w, [[0.625, 0.0, 0.375]], atol=1e-6)


def test_all_negative_similarities_fall_back_to_uniform() -> None:
    np.testing.assert_allclose(similarity_weights(np.array([[-0.1, -0.5]])), [[0.5, 0.5]])
    np.testing.assert_allclose(similarity_weights(np.array([[0.0, 0.0, 0.0]])), [[1 / 3] * 3], atol=1e-7)


def test_ties_are_broken_by_lower_catalogue_row() -> None:
    catalogue = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    sims, idx = top_k_items(np.array([[1.0, 0.0]], dtype=np.float32), catalogue, 2)
    np.testing.assert_array_equal(idx, [[1, 2]])
    sims, idx = top_k_items(np.array([[1.0, 0.0]], dtype=np.float32), catalogue, 4)
    np.testing.assert_array_equal(idx, [[1, 2, 3, 4]])
    np.testing.assert_allclose(sims, [[1, 1, 1, 1]], atol=1e-6)


def test_ties_are_deterministic_across_many_rows_and_chunks() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(10, 8)).astype(np.float32)
    catalogue = np.repeat(base, 5, axis=0)  # every vector five times → ties everywhere
    answers = rng.normal(size=(300, 8)).astype(np.float32)
    sims, idx = top_k_items(answers, catalogue, 7, method="exact")
    # Among equal similarities the lower row comes first, and rows are sorted by similarity.
    for s, i in zip(sims, idx):
        order = sorted(range(7), key=lambda j: (-s[j], i[j]))
        assert list(order) == list(range(7))
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_several_answers_at_once_match_one_by_one() -> None:
    rng = np.random.default_rng(0)
    catalogue = rng.normal(size=(50, 6)).astype(np.float32)
    answers = rng.normal(size=(9, 6)).astype(np.float32)
    together = localize(answers, catalogue, 3, method="exact", chunk_rows=4)
    alone = np.concatenate([localize(answers[i : i + 1], catalogue, 3, method="exact") for i in range(9)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_faiss_path_equals_exact_path() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    catalogue = rng.normal(size=(2000, 32)).astype(np.float32)
    answers = rng.normal(size=(300, 32)).astype(np.float32)
    s_exact, i_exact = top_k_items(answers, catalogue, 5, method="exact")
    s_faiss, i_faiss = top_k_items(answers, catalogue, 5, method="faiss")
    np.testing.assert_array_equal(i_exact, i_faiss)
    np.testing.assert_allclose(s_exact, s_faiss, atol=1e-5)
    np.testing.assert_allclose(
        localize(answers, catalogue, 5, method="exact"), localize(answers, catalogue, 5, method="faiss"), atol=1e-5
    )


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="same encoder"):
        localize(np.zeros((1, 3), np.float32), CATALOGUE, 1)
    with pytest.raises(ConfigError, match="k must be"):
        localize(ANSWER, CATALOGUE, 6)
    with pytest.raises(ConfigError, match="unknown search"):
        localize(ANSWER, CATALOGUE, 1, method="annoy")  # type: ignore[arg-type]


def test_zero_answer_vector_does_not_produce_nan() -> None:
    out = localize(np.zeros((1, 2), np.float32), CATALOGUE, 2)
    assert np.isfinite(out).all()
