"""Chapter 03's checks: right answers pass, plausible wrong answers fail with their hint.

The checks are model-agnostic, so a small random GPT-2 with GPT-2's real vocabulary
(50,257 tokens, but only 8 features each; built here in a fraction of a second) exercises
them as well as the real thing. Each test calls a check function directly with a
deliberately wrong answer and asserts on the message the learner would see.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from glassbox.exercise_checks.weights import (
    check_effective_rank,
    check_nearest_neighbours,
    check_position_pca,
    check_qk_singular_values,
    fresh_init,
    reference_effective_rank,
    reference_position_pca,
)
from checks.conftest import fails_with, passes, random_gpt2


@pytest.fixture
def model() -> GPT2LMHeadModel:
    model = random_gpt2(n_head=2, n_embd=8, n_positions=16)
    with torch.no_grad():
        # rows of different lengths, as in a trained model, and an offset in the positions
        model.transformer.wte.weight.mul_(torch.rand(50257, 1) * 3 + 0.1)
        model.transformer.wpe.weight.add_(torch.randn(8))
    return model


# ----------------------------------------------------------------- fresh_init

def test_fresh_init_is_seeded_half_precision_and_leaves_rng_alone(model) -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b = fresh_init(model.config), fresh_init(model.config)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.get_default_dtype() == torch.float32
    wa, wb = a.transformer.h[0].attn.c_attn.weight, b.transformer.h[0].attn.c_attn.weight
    assert wa.dtype == torch.float16 and torch.equal(wa, wb)
    assert abs(float(wa.detach().float().std()) - model.config.initializer_range) < 0.005
    assert not torch.equal(wa, fresh_init(model.config, seed=1).transformer.h[0].attn.c_attn.weight)


# ----------------------------------------------------------------- nearest_neighbours

def nn_ok(text, embeddings, tokenizer, k):
    ids = tokenizer.encode(text)
    sims = F.normalize(embeddings, dim=1) @ F.normalize(embeddings[ids].mean(0), dim=0)
    sims[ids] = -math.inf
    return sims.topk(k).indices.tolist()


def test_nearest_accepts_right_answer(model, tokenizer, capsys) -> None:
    out = passes(check_nearest_neighbours, nn_ok, model, tokenizer, capsys=capsys)
    assert "' Ivy' + 'bridge'" in out


@pytest.mark.parametrize("convert", [torch.tensor, np.array, tuple],
                         ids=["tensor", "numpy", "tuple"])
def test_nearest_accepts_other_sequences_of_ids(model, tokenizer, capsys, convert) -> None:
    passes(check_nearest_neighbours, lambda *a: convert(nn_ok(*a)), model, tokenizer,
           capsys=capsys)


def test_nearest_accepts_ties_in_any_order(tokenizer, capsys) -> None:
    """Many tokens with the very same vector: any k of them are right."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50257, n_positions=16)
    tied = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        tied.transformer.wte.weight[:] = torch.randn(1, 8)  # every token the same vector

    def other_tied_ids(text, embeddings, tokenizer, k):
        if not torch.equal(embeddings[0], embeddings[1]):  # the check's random embeddings
            return nn_ok(text, embeddings, tokenizer, k)
        own = tokenizer.encode(text)
        return [i for i in range(1000, 50257) if i not in own][-k:]
    passes(check_nearest_neighbours, other_tied_ids, tied, tokenizer, capsys=capsys)


def dot_product(text, embeddings, tokenizer, k):
    ids = tokenizer.encode(text)
    sims = embeddings @ embeddings[ids].mean(0)
    sims[ids] = -math.inf
    return sims.topk(k).indices.tolist()


def with_itself(text, embeddings, tokenizer, k):
    ids = tokenizer.encode(text)
    sims = F.normalize(embeddings, dim=1) @ F.normalize(embeddings[ids].mean(0), dim=0)
    return sims.topk(k).indices.tolist()


def first_token_only(text, embeddings, tokenizer, k):
    ids = tokenizer.encode(text)
    sims = F.normalize(embeddings, dim=1) @ F.normalize(embeddings[ids[0]], dim=0)
    sims[ids] = -math.inf
    return sims.topk(k).indices.tolist()


def columns_normalised(text, embeddings, tokenizer, k):
    ids = tokenizer.encode(text)
    unit = F.normalize(embeddings, dim=0)
    sims = unit @ unit[ids].mean(0)
    sims[ids] = -math.inf
    return sims.topk(k).indices.tolist()


def least_similar(text, embeddings, tokenizer, k):
    ids = tokenizer.encode(text)
    sims = F.normalize(embeddings, dim=1) @ F.normalize(embeddings[ids].mean(0), dim=0)
    sims[ids] = math.inf
    return sims.topk(k, largest=False).indices.tolist()


def stripped(text, embeddings, tokenizer, k):
    return nn_ok(text.strip(), embeddings, tokenizer, k)


def in_place(text, embeddings, tokenizer, k):
    embeddings /= embeddings.norm(dim=1, keepdim=True)
    return nn_ok(text, embeddings, tokenizer, k)


@pytest.mark.parametrize("wrong, hint", [
    (dot_product, "dot products"),
    (with_itself, "most similar to itself"),
    (first_token_only, "only the first of the 2 tokens"),
    (columns_normalised, "dim=0 would normalise the columns"),
    (least_similar, "least similar"),
    (stripped, "encode the text exactly as given"),
    (in_place, "changed its embeddings in place"),
    (lambda t, e, tok, k: nn_ok(t, e, tok, k)[::-1], "wrong order"),
    (lambda t, e, tok, k: [tok.decode([i]) for i in nn_ok(t, e, tok, k)], "strings"),
    (lambda t, e, tok, k: F.normalize(e, dim=1)[:k, 0], "similarities"),
    (lambda t, e, tok, k: [0.5] * k, "similarities"),
    (lambda t, e, tok, k: e[:k, 0].topk(2), "(values, indices)"),
    (lambda t, e, tok, k: nn_ok(t, e, tok, k)[:-1], f"expected k"),
    (lambda t, e, tok, k: [nn_ok(t, e, tok, k)[0]] * k, "same id twice"),
    (lambda t, e, tok, k: [10**6] * k, "not a token id"),
    (lambda t, e, tok, k: torch.tensor(nn_ok(t, e, tok, k)).reshape(1, -1), "shape (1,"),
    (lambda t, e, tok, k: None, "return"),
    (lambda t, e, tok, k: "dog", "string"),
    (lambda t, e, tok, k: list(range(k)), "are among the"),
])
def test_nearest_wrong_answers(model, tokenizer, wrong, hint) -> None:
    fails_with(check_nearest_neighbours, wrong, model, tokenizer, match=hint)


def test_nearest_using_the_model_instead_of_the_argument(model, tokenizer) -> None:
    wte = model.transformer.wte.weight.detach()

    def uses_global(text, embeddings, tokenizer, k):
        return nn_ok(text, wte, tokenizer, k)
    fails_with(check_nearest_neighbours, uses_global, model, tokenizer,
               match="use the matrix you are given")


def test_nearest_in_place_edit_leaves_the_model_intact(model, tokenizer) -> None:
    before = model.transformer.wte.weight.detach().clone()
    fails_with(check_nearest_neighbours, in_place, model, tokenizer, match="put the original values back")
    assert torch.equal(model.transformer.wte.weight.detach(), before)


def test_nearest_crash_becomes_feedback(model, tokenizer) -> None:
    def crashes(text, embeddings, tokenizer, k):
        return embeddings[tokenizer.encode(text)].topk(k, dim=0).indices  # the wrong axis
    fails_with(check_nearest_neighbours, crashes, model, tokenizer,
               match="nearest_neighbours raised RuntimeError")


def test_nearest_not_implemented_passes_through(model, tokenizer) -> None:
    def stub(text, embeddings, tokenizer, k):
        raise NotImplementedError
    with pytest.raises(NotImplementedError):
        check_nearest_neighbours(stub, model, tokenizer)


# ----------------------------------------------------------------- position_pca

def pca_ok(positions, n):
    centred = positions - positions.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:n].T, s[:n] ** 2 / (s ** 2).sum()


def test_pca_accepts_right_answer(model, capsys) -> None:
    out = passes(check_position_pca, pca_ok, model, capsys=capsys)
    assert "up to its sign" in out


def test_pca_accepts_flipped_signs_and_float64(model, capsys) -> None:
    def flipped(positions, n):
        coords, ratios = pca_ok(positions.double(), n)
        return -coords, ratios
    passes(check_position_pca, flipped, model, capsys=capsys)

    def one_flipped(positions, n):
        coords, ratios = pca_ok(positions, n)
        coords[:, 1] *= -1
        return coords, ratios
    passes(check_position_pca, one_flipped, model, capsys=capsys)


def test_pca_accepts_eigh_of_the_covariance(model, capsys) -> None:
    def via_covariance(positions, n):
        centred = positions.double() - positions.double().mean(dim=0)
        values, vectors = torch.linalg.eigh(centred.T @ centred)
        values, vectors = values.flip(0), vectors.flip(1)
        return (centred @ vectors[:, :n]).float(), (values[:n] / values.sum()).float()
    passes(check_position_pca, via_covariance, model, capsys=capsys)


def not_centred(positions, n):
    _, s, vh = torch.linalg.svd(positions, full_matrices=False)
    return positions @ vh[:n].T, s[:n] ** 2 / (s ** 2).sum()


def wrong_axis(positions, n):
    centred = positions - positions.mean(dim=1, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:n].T, s[:n] ** 2 / (s ** 2).sum()


def ascending(positions, n):
    centred = positions - positions.mean(dim=0)
    values, vectors = torch.linalg.eigh(centred.T @ centred)
    return centred @ vectors[:, :n], values[:n] / values.sum()


def in_place_centring(positions, n):
    positions -= positions.mean(dim=0)
    return pca_ok(positions, n)


@pytest.mark.parametrize("wrong, hint", [
    (not_centred, "Centre first"),
    (wrong_axis, "wrong axis"),
    (ascending, "largest variance comes first"),
    (in_place_centring, "changed its positions in place"),
    (lambda x, n: (pca_ok(x, n)[0], torch.linalg.svdvals(x - x.mean(0))[:n]
                   / torch.linalg.svdvals(x - x.mean(0)).sum()), "squared singular values"),
    (lambda x, n: (pca_ok(x, n)[0], pca_ok(x, n)[1] / pca_ok(x, n)[1].sum()), "total variance"),
    (lambda x, n: (torch.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :n],
                   pca_ok(x, n)[1]), "U·S"),
    (lambda x, n: (torch.linalg.svd(x - x.mean(0), full_matrices=False)[2][:n].T,
                   pca_ok(x, n)[1]), "principal directions"),
    (lambda x, n: (pca_ok(x, n)[0].T, pca_ok(x, n)[1]), "transpose"),
    (lambda x, n: (pca_ok(x, n)[1], pca_ok(x, n)[0]), "wrong way round"),
    (lambda x, n: pca_ok(x, n)[0], "expected a tuple (coords, ratios)"),
    (lambda x, n: None, "return coords, ratios"),
    (lambda x, n: (None, pca_ok(x, n)[1]), "None"),
    (lambda x, n: (torch.full_like(pca_ok(x, n)[0], float("nan")), pca_ok(x, n)[1]), "NaN"),
    (lambda x, n: (pca_ok(x, n)[0], pca_ok(x, n)[1].numpy()), "torch.from_numpy"),
    (lambda x, n: (pca_ok(x, n)[0].long(), pca_ok(x, n)[1]), "dtype"),
    (lambda x, n: (pca_ok(x, n)[0][:, :1], pca_ok(x, n)[1]), "shape"),
])
def test_pca_wrong_answers(model, wrong, hint) -> None:
    fails_with(check_position_pca, wrong, model, match=hint)


def test_reference_pca_matches_torch_pca_lowrank(model) -> None:
    positions = model.transformer.wpe.weight.detach()
    coords, ratios = reference_position_pca(positions, 3)
    u, s, v = torch.pca_lowrank(positions, q=8, center=True, niter=10)
    assert torch.allclose((coords * (u[:, :3] * s[:3])).sum(0).sign() * coords,
                          u[:, :3] * s[:3], atol=1e-4)
    total = ((positions - positions.mean(0)) ** 2).sum()
    assert torch.allclose(ratios, s[:3] ** 2 / total, atol=1e-5)


# ----------------------------------------------------------------- effective_rank

def erank_ok(matrix):
    s = torch.linalg.svdvals(matrix)
    s = s[s > 0]
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()))


def test_effective_rank_accepts_right_answer(model, capsys) -> None:
    out = passes(check_effective_rank, erank_ok, model, capsys=capsys)
    assert "Loaded model / fresh random init" in out


def test_effective_rank_accepts_a_scalar_tensor_and_xlogy(model, capsys) -> None:
    def with_xlogy(matrix):
        s = torch.linalg.svdvals(matrix.double())
        p = s / s.sum()
        return torch.exp(-torch.special.xlogy(p, p).sum())
    passes(check_effective_rank, with_xlogy, model, capsys=capsys)


def test_reference_effective_rank_known_values() -> None:
    assert reference_effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert reference_effective_rank(torch.diag(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(1.0)
    p = torch.tensor([3.0, 1.0]) / 4
    assert reference_effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == \
        pytest.approx(math.exp(-(p * p.log()).sum().item()))


def squared(matrix):
    s = torch.linalg.svdvals(matrix) ** 2
    s = s[s > 0]
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()))


def entropy_only(matrix):
    return math.log(erank_ok(matrix))


def keeps_zeros(matrix):
    s = torch.linalg.svdvals(matrix)
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()))


def by_max(matrix):
    s = torch.linalg.svdvals(matrix)
    s = s[s > 0]
    p = s / s.max()
    return float(torch.exp(-(p * torch.log(p)).sum()))


def mixed_bases(matrix):
    s = torch.linalg.svdvals(matrix)
    s = s[s > 0]
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log2(p)).sum()))


def in_place_scale(matrix):
    matrix /= matrix.norm()
    return erank_ok(matrix)


@pytest.mark.parametrize("wrong, hint", [
    (squared, "squared singular values"),
    (entropy_only, "exp(H)"),
    (keeps_zeros, "0 * log(0)"),
    (by_max, "not by the largest"),
    (mixed_bases, "mixed bases"),
    (lambda m: erank_ok(m) / min(m.shape), "divided by the matrix size"),
    (lambda m: int(torch.linalg.matrix_rank(m)), "ordinary rank"),
    (lambda m: torch.linalg.svdvals(m), "expected one number"),
    (in_place_scale, "changed its matrix in place"),
    (lambda m: None, "return"),
    (lambda m: "6.0", "should be a number"),
    (lambda m: float("nan"), "NaN"),
])
def test_effective_rank_wrong_answers(model, wrong, hint) -> None:
    fails_with(check_effective_rank, wrong, model, match=hint)


def test_effective_rank_separates_trained_like_from_random(model, capsys) -> None:
    """A matrix with a few strong directions (as training makes) has a lower ratio than 1."""
    with torch.no_grad():
        for block in model.transformer.h:
            w = block.attn.c_attn.weight
            u = torch.randn(w.shape[0], 1)
            w.add_(5 * u @ torch.randn(1, w.shape[1]))
    out = passes(check_effective_rank, erank_ok, model, capsys=capsys)
    ratio = float(out.split("h.0.attn.c_attn ")[1].split(",")[0])
    assert ratio < 0.8


# ----------------------------------------------------------------- qk_singular_values

def qk_ok(model, layer, head):
    d = model.config.n_embd
    dh = d // model.config.n_head
    w = model.transformer.h[layer].attn.c_attn.weight.detach()
    q = w[:, :d][:, head * dh:(head + 1) * dh]
    k = w[:, d:2 * d][:, head * dh:(head + 1) * dh]
    return torch.linalg.svdvals(q @ k.T)[:dh]


def test_qk_accepts_right_answer(model, capsys) -> None:
    passes(check_qk_singular_values, qk_ok, model, capsys=capsys)


def test_qk_accepts_the_small_qr_route(model, capsys) -> None:
    """Same singular values from two small triangular factors: no d x d matrix needed."""
    def via_qr(model, layer, head):
        d = model.config.n_embd
        dh = d // model.config.n_head
        w = model.transformer.h[layer].attn.c_attn.weight.detach().double()
        _, r_q = torch.linalg.qr(w[:, :d][:, head * dh:(head + 1) * dh])
        _, r_k = torch.linalg.qr(w[:, d:2 * d][:, head * dh:(head + 1) * dh])
        return torch.linalg.svdvals(r_q @ r_k.T)
    passes(check_qk_singular_values, via_qr, model, capsys=capsys)


def small_product(model, layer, head):
    d = model.config.n_embd
    dh = d // model.config.n_head
    w = model.transformer.h[layer].attn.c_attn.weight.detach()
    q = w[:, :d][:, head * dh:(head + 1) * dh]
    k = w[:, d:2 * d][:, head * dh:(head + 1) * dh]
    return torch.linalg.svdvals(q.T @ k)


def value_instead_of_key(model, layer, head):
    d = model.config.n_embd
    dh = d // model.config.n_head
    w = model.transformer.h[layer].attn.c_attn.weight.detach()
    q = w[:, :d][:, head * dh:(head + 1) * dh]
    v = w[:, 2 * d:][:, head * dh:(head + 1) * dh]
    return torch.linalg.svdvals(q @ v.T)[:dh]


def interleaved(model, layer, head):
    d = model.config.n_embd
    n = model.config.n_head
    w = model.transformer.h[layer].attn.c_attn.weight.detach()
    q, k = w[:, :d][:, head::n], w[:, d:2 * d][:, head::n]
    return torch.linalg.svdvals(q @ k.T)[:d // n]


def rows_sliced(model, layer, head):
    d = model.config.n_embd
    dh = d // model.config.n_head
    w = model.transformer.h[layer].attn.c_attn.weight.detach().T  # as if it were nn.Linear
    q = w[:d][:, head * dh:(head + 1) * dh]
    k = w[d:2 * d][:, head * dh:(head + 1) * dh]
    return torch.linalg.svdvals(q @ k.T)[:dh]


def all_values(model, layer, head):
    d = model.config.n_embd
    dh = d // model.config.n_head
    w = model.transformer.h[layer].attn.c_attn.weight.detach()
    q = w[:, :d][:, head * dh:(head + 1) * dh]
    k = w[:, d:2 * d][:, head * dh:(head + 1) * dh]
    return torch.linalg.svdvals(q @ k.T)


def edits_in_place(model, layer, head):
    with torch.no_grad():
        model.transformer.h[layer].attn.c_attn.weight.mul_(2)
    return qk_ok(model, layer, head)


@pytest.mark.parametrize("wrong, hint", [
    (small_product, "d_head x d_head"),
    (value_instead_of_key, "[q | k | v]"),
    (interleaved, "contiguous"),
    (rows_sliced, "Conv1D stores its weight"),
    (all_values, "rank at most d_head"),
    (lambda m, l, h: qk_ok(m, l, h) / math.sqrt(m.config.n_embd // m.config.n_head), "1/√d_head"),
    (lambda m, l, h: qk_ok(m, l, h).flip(0), "Largest first"),
    (lambda m, l, h: qk_ok(m, l, h).tolist(), "torch.Tensor"),
    (lambda m, l, h: qk_ok(m, l, h).long(), "dtype"),
    (lambda m, l, h: qk_ok(m, l, h) * float("nan"), "NaN"),
    (lambda m, l, h: None, "return"),
    (lambda m, l, h: qk_ok(m, l, h)[:2], "shape"),
])
def test_qk_wrong_answers(model, wrong, hint) -> None:
    fails_with(check_qk_singular_values, wrong, model, match=hint)


def test_qk_in_place_edit_is_undone(model) -> None:
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    fails_with(check_qk_singular_values, edits_in_place, model,
               match="put the original values back")
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight.detach(), before)


# ----------------------------------------------------------------- issue 16: sizes written in, side effects

def test_nearest_with_k_written_in_fails(model, tokenizer) -> None:
    fails_with(check_nearest_neighbours, lambda text, e, tok, k: nn_ok(text, e, tok, 8), model,
               tokenizer, match="has 8 ids, expected k = 5")


def test_nearest_mean_of_normalised_vectors_is_named(model, tokenizer) -> None:
    def unit_mean(text, embeddings, tokenizer, k):
        ids = tokenizer.encode(text)
        query = F.normalize(embeddings[ids], dim=1).mean(0)
        sims = F.normalize(embeddings, dim=1) @ F.normalize(query, dim=0)
        sims[ids] = -math.inf
        return sims.topk(k).indices.tolist()

    fails_with(check_nearest_neighbours, unit_mean, model, tokenizer,
               match="averaged the normalised vectors")


def test_pca_with_n_components_written_in_fails(model) -> None:
    fails_with(check_position_pca, lambda positions, n: pca_ok(positions, 3), model,
               match="n_components=2")


def test_pca_in_place_centring_is_undone(model) -> None:
    before = model.transformer.wpe.weight.detach().clone()

    def centres_in_place(positions, n):
        positions -= positions.mean(dim=0)
        return pca_ok(positions, n)

    fails_with(check_position_pca, centres_in_place, model, match="put the original values back")
    assert torch.equal(model.transformer.wpe.weight.detach(), before)


def test_effective_rank_in_place_normalisation_is_undone(model) -> None:
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()

    def normalises_in_place(matrix):
        matrix /= matrix.norm()
        s = torch.linalg.svdvals(matrix.double())
        s = s[s > 1e-12 * s.max()]
        p = s / s.sum()
        return float(torch.exp(-(p * p.log()).sum()))

    fails_with(check_effective_rank, normalises_in_place, model, match="put the original values back")
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight.detach(), before)


def test_qk_with_the_head_size_written_in_fails_on_a_second_model(model) -> None:
    dh = model.config.n_embd // model.config.n_head  # the loaded model's, written in

    def fixed_head_size(model, layer, head):
        d = model.config.n_embd
        w = model.transformer.h[layer].attn.c_attn.weight.detach()
        q = w[:, :d][:, head * dh:(head + 1) * dh]
        k = w[:, d:2 * d][:, head * dh:(head + 1) * dh]
        return torch.linalg.svdvals(q @ k.T)[:dh]

    fails_with(check_qk_singular_values, fixed_head_size, model,
               match="a second model with 6 heads of 8")


def test_qk_leaving_gradients_is_named(model) -> None:
    def with_backward(model, layer, head):
        d = model.config.n_embd
        dh = d // model.config.n_head
        w = model.transformer.h[layer].attn.c_attn.weight
        s = torch.linalg.svdvals(w[:, :d][:, head * dh:(head + 1) * dh]
                                 @ w[:, d:2 * d][:, head * dh:(head + 1) * dh].T)[:dh]
        s.sum().backward()
        return s.detach()

    fails_with(check_qk_singular_values, with_backward, model, match="left gradients on")


def test_qk_leaving_training_mode_is_named(model) -> None:
    def trains(model, layer, head):
        model.train()
        return qk_ok(model, layer, head)

    fails_with(check_qk_singular_values, trains, model, match="left the model in training mode")


def test_right_answers_pass_with_another_loaded_model(other_gpt2, capsys) -> None:
    """The checks read every size from the loaded model: a 3-layer, 6-head GPT-2 works too."""
    model, tokenizer = other_gpt2
    passes(check_nearest_neighbours, nn_ok, model, tokenizer, capsys=capsys)
    passes(check_position_pca, pca_ok, model, capsys=capsys)
    passes(check_qk_singular_values, qk_ok, model, capsys=capsys)
