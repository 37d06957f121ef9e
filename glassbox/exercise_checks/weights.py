"""Checks for chapter 03, "Looking at the weights".

References are computed from the same weights; inputs made up here (embeddings of very
different lengths, positions with a large offset, matrices of known effective rank) expose
mistakes the loaded model can hide, and ``qk_singular_values`` also runs on
``feedback.second_gpt2``. Mistakes are computed only after an answer has failed.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from glassbox.exercise_checks.feedback import (
    call_learner, check_number, check_tensor, close, fail, mistakes_from, passed, second_gpt2,
    unpack)

__all__ = ["check_effective_rank", "check_nearest_neighbours", "check_position_pca",
           "check_qk_singular_values", "fresh_init", "reference_effective_rank",
           "reference_nearest_neighbours", "reference_position_pca", "reference_qk_singular_values"]

#: The seed of the random initialisation the checks compare against (TinyGPT's training seed).
FRESH_SEED = 0


# --------------------------------------------------------------------------- helpers

_Check = TypeVar("_Check", bound=Callable[..., None])


def _one_thread(check: _Check) -> _Check:
    """Run a check on one CPU thread: many small SVDs on a shared CPU are up to 10x slower on two."""
    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapper  # type: ignore[return-value]


def fresh_init(config: Any, seed: int = FRESH_SEED, dtype: torch.dtype = torch.float16) -> nn.Module:
    """A seeded fresh ``GPT2LMHeadModel(config)`` in ``dtype`` (float16: ``.float()`` before use)."""
    from transformers import GPT2LMHeadModel

    previous = torch.get_default_dtype()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = GPT2LMHeadModel(config)
        finally:
            torch.set_default_dtype(previous)
    return model.eval()


def _token_text(tokenizer: Any, token_id: int) -> str:
    return repr(tokenizer.decode([token_id]))


# --------------------------------------------------------------------------- exercise 1

def reference_nearest_neighbours(text: str, embeddings: torch.Tensor, tokenizer: Any,
                                 k: int) -> tuple[list[int], torch.Tensor]:
    """The ``k`` ids nearest (cosine) to the mean vector of ``text``'s ids (excluded), and all sims."""
    ids = tokenizer.encode(text)
    query = embeddings[ids].mean(dim=0)
    sims = _cosine_to_all(embeddings, query)
    sims[ids] = -math.inf
    return sims.topk(k).indices.tolist(), sims


def _cosine_to_all(embeddings: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row with ``query``, without copying the matrix."""
    norms = torch.linalg.vector_norm(embeddings, dim=1).clamp_min(1e-12)
    return (embeddings @ query) / (norms * torch.linalg.vector_norm(query).clamp_min(1e-12))


def _as_id_list(got: Any, k: int, vocab: int, label: str) -> list[int]:
    """The learner's answer as a list of ints, or a failure saying what it is instead."""
    if got is None:
        fail(f"{label} is None, expected a list of {k} token ids.", "Did you forget the `return` statement?")
    if isinstance(got, tuple) and len(got) == 2 and all(
            isinstance(part, torch.Tensor) for part in got):
        fail(f"{label} is a pair of tensors, probably (values, indices) from topk.",
             "Return only the ids: sims.topk(k).indices.tolist().")
    if isinstance(got, str):
        fail(f"{label} is a string ({got[:40]!r}), expected a list of {k} token ids.",
             "Return the ids (ints); decode them only for printing.")
    if hasattr(got, "__array__") and not isinstance(got, torch.Tensor):  # numpy
        got = torch.as_tensor(got)
    if isinstance(got, torch.Tensor):
        if got.is_floating_point():
            fail(f"{label} is a float tensor of shape {tuple(got.shape)}: these look like "
                 "similarities, not token ids.", "topk gives both: sims.topk(k).indices are the ids.")
        if got.dim() != 1:
            fail(f"{label} has shape {tuple(got.shape)}, expected ({k},): one id per neighbour.",
                 "Return a flat list of ids, e.g. .indices.tolist().")
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        fail(f"{label} should be a list of {k} token ids, got {type(got).__name__}.")
    out: list[int] = []
    for item in got:
        if isinstance(item, torch.Tensor) and item.numel() == 1 and not item.is_floating_point():
            item = item.item()
        if isinstance(item, str):
            fail(f"{label} holds strings (e.g. {item!r}): decoded tokens, not ids.",
                 "Return the ids (ints); tokenizer.decode is only for printing.")
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            if isinstance(item, (float, torch.Tensor)):
                fail(f"{label} holds {item!r}, not an integer id: similarities instead of ids?",
                     "topk gives both: sims.topk(k).indices are the ids.")
            fail(f"{label} should hold integer token ids, got {type(item).__name__} {item!r}.")
        out.append(int(item))
    if len(out) != k:
        fail(f"{label} has {len(out)} ids, expected k = {k}.", "Return exactly k ids: sims.topk(k).")
    bad = [i for i in out if not 0 <= i < vocab]
    if bad:
        fail(f"{label} holds {bad[0]}, which is not a token id (ids run from 0 to {vocab - 1}).")
    if len(set(out)) != len(out):
        fail(f"{label} lists the same id twice: {out}.", "Each neighbour should appear once.")
    return out


def _neighbours(text: str, embeddings: torch.Tensor, tokenizer: Any, k: int, *,
                measure: str = "cosine", query: str = "mean", largest: bool = True) -> list[int]:
    """The ``k`` nearest ids to ``text`` (its own excluded); other settings are the usual mistakes."""
    ids = tokenizer.encode(text)
    vectors = embeddings[ids]
    if query == "unit_mean":
        vectors = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True).clamp_min(1e-12)
    q = vectors[{"first": 0, "last": -1}[query]] if query in ("first", "last") else vectors.mean(0)
    if measure == "columns":
        unit = embeddings / torch.linalg.vector_norm(embeddings, dim=0).clamp_min(1e-12)
        scores = unit @ unit[ids].mean(dim=0)
    else:
        scores = embeddings @ q if measure == "dot" else _cosine_to_all(embeddings, q)
    scores[ids] = -math.inf if largest else math.inf
    return scores.topk(k, largest=largest).indices.tolist()


def _nearest_settings(text: str, tokenizer: Any, model_embeddings: torch.Tensor | None
                      ) -> list[tuple[dict[str, Any], str]]:
    """The usual mistakes: (_neighbours's settings, hint)."""
    n = len(tokenizer.encode(text))
    settings: list[tuple[dict[str, Any], str]] = [
        (dict(measure="dot"), "These are the largest dot products, not cosine similarities: long vectors win. Divide by "
                              "the lengths: normalise every row (one token's vector) and the query to length 1, "
                              "F.normalize(E, dim=1); dim=0 would normalise the columns."),
        (dict(measure="columns"), "You normalised along the wrong axis: each row (one token's "
                                  "vector, dim=1) should get length 1, not each column (dim=0).")]
    if n > 1:
        settings.append((dict(query="unit_mean"), f"You averaged the normalised vectors of the {n} "
                         f"tokens of {text!r}. The word's vector is the mean of the token vectors "
                         "as they are; the cosine then divides by its length."))
        settings += [(dict(query=name), f"You used only the {name} of the {n} tokens of {text!r}. "
                      "Represent the word by the mean of all its tokens' vectors.")
                     for name in ("first", "last")]
    settings.append((dict(largest=False), "These are the least similar tokens: sort the "
                     "similarities in decreasing order (topk picks the largest by default)."))
    settings += [(dict(text=variant), f"You encoded {variant!r} instead of {text!r}: encode the "
                  "text exactly as given (the leading space is part of a GPT-2 token).")
                 for variant in sorted({text.strip(), " " + text, text.lower()} - {text})
                 if variant and tokenizer.encode(variant) != tokenizer.encode(text)]
    if model_embeddings is not None:
        settings.append((dict(embeddings=model_embeddings), "These are the neighbours in the loaded model's embeddings, "
                         "not in the `embeddings` argument: use the matrix you are given."))
    return settings


@_one_thread
def check_nearest_neighbours(nearest_neighbours: Callable[..., Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``nearest_neighbours(text, embeddings, tokenizer, k) -> list[int]``."""
    wte = model.transformer.wte.weight.detach()
    vocab = wte.shape[0]
    single = _pick_word(tokenizer, (" dog", " red", " water", " the"), n_tokens=1)
    several = _pick_word(tokenizer, (" Ivybridge", " Stonebury", " Kowalski", " unbelievable",
                                     " photosynthesis"), n_tokens=None)
    generator = torch.Generator().manual_seed(3)
    synthetic = torch.randn(vocab, 16, generator=generator) \
        * torch.exp(1.5 * torch.randn(vocab, 1, generator=generator))
    cases = [("the loaded model's token embeddings", wte, single, 8, None),
             ("the loaded model's token embeddings", wte, several, 8, None),
             ("random embeddings with rows of very different lengths", synthetic, single, 5, wte),
             ("random embeddings with rows of very different lengths", synthetic, several, 5, wte)]
    for where, matrix, text, k, model_matrix in cases:
        got = call_learner(nearest_neighbours, text, matrix, tokenizer, k,
                           name="nearest_neighbours", protect={"embeddings": matrix})
        label = f"nearest_neighbours({text!r}, ..., k={k}) on {where}"
        got_ids = _as_id_list(got, k, vocab, label)
        expected, sims = reference_nearest_neighbours(text, matrix, tokenizer, k)
        own = tokenizer.encode(text)
        inside = [i for i in got_ids if i in own]
        if inside:
            fail(f"{label} includes {_token_text(tokenizer, inside[0])} (id {inside[0]}), a token "
                 f"of {text!r} itself: every vector is most similar to itself.",
                 "Leave the word's own token ids out before picking the top k, e.g. sims[ids] = -inf.")
        got_sims = sims[got_ids]
        expected_sims = sims[expected]
        if torch.allclose(got_sims.sort(descending=True).values, expected_sims, atol=1e-5, rtol=0):
            if bool((got_sims[1:] > got_sims[:-1] + 1e-5).any()):
                fail(f"{label} has the right {k} tokens in the wrong order.",
                     "List them most similar first: topk already sorts them.")
            continue
        for setting, hint in _nearest_settings(text, tokenizer, model_matrix):
            if set(got_ids) == set(_neighbours(**{"text": text, "embeddings": matrix,
                                                  "tokenizer": tokenizer, "k": k, **setting})):
                fail(f"{label} gave the wrong tokens.", hint)
        n_right = len(set(got_ids) & set(expected))
        worst = min(got_ids, key=lambda i: float(sims[i]))
        fail(f"{label}: {n_right} of your {k} ids are among the {k} most similar tokens. "
             f"For example {_token_text(tokenizer, worst)} (id {worst}) has cosine similarity "
             f"{float(sims[worst]):.3f}, but the {k}th nearest has {float(expected_sims[-1]):.3f}.",
             "cosine(a, b) = a·b / (|a| |b|). Compute it against every row of the matrix, "
             "set the word's own ids to -inf, then take topk(k).")
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(several)]
    passed(f"nearest_neighbours: the right neighbours by cosine similarity, most similar "
           f"first, for {single!r} and for {several!r} ({len(pieces)} tokens: "
           f"{' + '.join(repr(p) for p in pieces)}), in the model's embeddings and in random "
           "embeddings of very different lengths.")


def _pick_word(tokenizer: Any, candidates: Sequence[str], n_tokens: int | None) -> str:
    """The first candidate that encodes to ``n_tokens`` tokens (None: to more than one)."""
    for word in candidates:
        n = len(tokenizer.encode(word))
        if (n_tokens is None and n > 1) or n == n_tokens:
            return word
    raise RuntimeError(f"none of {list(candidates)} has the number of tokens the check needs "
                       "with this tokenizer")


# --------------------------------------------------------------------------- exercise 2

def reference_position_pca(positions: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred PCA of the rows of ``positions``: coordinates (P, n), variance ratios (n,)."""
    x = positions.double()
    centred = x - x.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    coords = centred @ vh[:n_components].T
    ratios = s[:n_components] ** 2 / (s ** 2).sum()
    return coords.to(positions.dtype), ratios.to(positions.dtype)


def _align_signs(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Flip each column of ``got`` that points opposite to ``expected``'s (an axis has no sign)."""
    signs = torch.sign((got * expected).sum(dim=0))
    signs[signs == 0] = 1
    return got * signs


def _pca_mistakes(positions: torch.Tensor, n: int
                  ) -> tuple[list[tuple[torch.Tensor, str]], list[tuple[torch.Tensor, str]]]:
    """Ratios and coordinates that one specific PCA mistake produces, with hints."""
    x = positions.double()
    centred = x - x.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    u = centred @ vh.T / s.clamp_min(1e-300)
    _, s_raw, vh_raw = torch.linalg.svd(x, full_matrices=False)
    wrong_axis = x - x.mean(dim=1, keepdim=True)
    _, s_axis, vh_axis = torch.linalg.svd(wrong_axis, full_matrices=False)
    no_centre = "Centre first: subtract the mean over positions (x - x.mean(dim=0)); without " \
                "it the first component points at the mean vector, not along the spread."
    axis = "You centred along the wrong axis: subtract the mean over positions, " \
           "x.mean(dim=0) (one mean per feature), not x.mean(dim=1)."
    dtype = positions.dtype
    ratio_mistakes = [
        (s[:n] / s.sum(), "Use the squared singular values: the variance along component i is "
                          "proportional to s_i², so the ratio is s_i² / Σ s²."),
        (s[:n] ** 2 / (s[:n] ** 2).sum(), "Divide by the total variance of all components "
                                          "(Σ over every s²), not only of the ones you keep."),
        (s_raw[:n] ** 2 / (s_raw ** 2).sum(), no_centre),
        (s_axis[:n] ** 2 / (s_axis ** 2).sum(), axis),
        (s[:n] ** 2 / (x.shape[0] - 1), "These are the variances themselves; divide by their "
                                         "total to get the share of each component."),
        ((s ** 2 / (s ** 2).sum())[-n:], "These are the last components: the largest variance comes first (eigh returns "
                                          "eigenvalues in increasing order; svd in decreasing order)."),
        ((s ** 2 / (s ** 2).sum())[-n:].flip(0), "These are the smallest components: the largest variance comes first."),
    ]
    coord_mistakes = [
        (x @ vh_raw[:n].T, no_centre),
        (centred @ vh_raw[:n].T, no_centre),
        (wrong_axis @ vh_axis[:n].T, axis),
        (u[:, :n], "These are U's columns, scaled to length 1. The coordinates are "
                   "U·S, or equivalently (x - mean) @ Vh[:n].T."),
        (centred @ vh[-n:].T, "These are the last components: the largest variance comes first."),
        (centred @ vh[-n:].flip(0).T, "These are the smallest components: the largest variance comes first."),
    ]
    return ([(m.to(dtype), h) for m, h in ratio_mistakes if m.shape == (n,)],
            [(m.to(dtype), h) for m, h in coord_mistakes if m.shape == (x.shape[0], n)])


def _match_up_to_sign(got: torch.Tensor, candidate: torch.Tensor, rtol: float, atol: float) -> bool:
    if got.shape != candidate.shape:
        return False
    return bool(torch.allclose(_align_signs(got, candidate), candidate, rtol=rtol, atol=atol))


@_one_thread
def check_position_pca(position_pca: Callable[..., Any], model: nn.Module) -> None:
    """Check ``position_pca(positions, n_components) -> (coords, ratios)``."""
    wpe = model.transformer.wpe.weight.detach()
    generator = torch.Generator().manual_seed(4)
    offset = torch.randn(8, generator=generator) * 5
    trend = torch.linspace(-1, 1, 40).unsqueeze(1) * torch.randn(8, generator=generator)
    synthetic = offset + trend + 0.3 * torch.randn(40, 8, generator=generator)
    cases = [("the loaded model's position embeddings", wpe, 3),
             ("40 positions with a large common offset", synthetic, 2)]
    for where, matrix, n in cases:
        label = f"position_pca on {where}, n_components={n}"
        coords, ratios = unpack(call_learner(position_pca, matrix, n, name="position_pca",
                                             protect={"positions": matrix}), ("coords", "ratios"), label)
        exp_coords, exp_ratios = reference_position_pca(matrix, n)
        atol = 1e-4 * float(exp_coords.abs().max())
        what = f"The coords tensor for {where}, n_components={n}"
        if isinstance(ratios, torch.Tensor) and isinstance(coords, torch.Tensor) \
                and ratios.dim() == 2 and coords.dim() == 1:
            fail(f"{label}: the pair is the wrong way round: coords first, then ratios.", "return coords, ratios")
        check_tensor(ratios, exp_ratios, f"the ratios tensor for {where}, n_components={n}",
                     rtol=1e-3, atol=1e-5, known_mistakes=lambda: _pca_mistakes(matrix, n)[0],
                     hint="ratio_i = s_i² / Σ s² for the singular values s of the centred matrix.")
        c = coords.detach().to(exp_coords.dtype) \
            if isinstance(coords, torch.Tensor) and coords.is_floating_point() else None
        if c is not None and c.shape == exp_coords.shape and not torch.isnan(c).any():
            if not _match_up_to_sign(c, exp_coords, 1e-3, atol):
                for mistake, hint in _pca_mistakes(matrix, n)[1]:
                    if _match_up_to_sign(c, mistake, 1e-3, atol):
                        fail(f"{what} has the right shape but the wrong values.", hint)
            coords = _align_signs(c, exp_coords)
        elif c is not None and c.shape == exp_coords.T.shape \
                and _match_up_to_sign(c.T, exp_coords, 1e-3, atol):
            fail(f"{what} has shape {tuple(c.shape)}, expected {tuple(exp_coords.shape)}: this is "
                 "the transpose of the right answer.",
                 "One row per position, one column per component: centred @ Vh[:n].T.")
        elif isinstance(coords, torch.Tensor) and coords.shape == (matrix.shape[1], n) \
                and matrix.shape[0] != matrix.shape[1]:
            fail(f"{what} has shape {tuple(coords.shape)}: these are the {n} principal directions, "
                 "one value per feature.", f"Project the centred positions onto them: "
                                           f"(x - mean) @ Vh[:{n}].T has one row per position.")
        check_tensor(coords, exp_coords, f"the coords tensor for {where}, n_components={n} (signs "
                     "aligned)", rtol=1e-3, atol=atol, hint="coords = (x - x.mean(dim=0)) @ Vh[:n].T, with Vh from "
                          "torch.linalg.svd(x - x.mean(dim=0), full_matrices=False).")
    n_pos = wpe.shape[0]
    first = reference_position_pca(wpe, 3)[1]
    passed(f"position_pca: coordinates of all {n_pos} positions and the explained-variance "
           f"ratios ({', '.join(f'{r:.1%}' for r in first.tolist())} for the first 3 "
           "components) match, each component up to its sign; right on a matrix with a "
           "large offset too.")


# --------------------------------------------------------------------------- exercise 3

def _svdvals64(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values in float64; a wide matrix is transposed first (same values, faster SVD)."""
    m = matrix.detach().double()
    return torch.linalg.svdvals(m.T if m.shape[0] < m.shape[1] else m)


def reference_effective_rank(matrix: torch.Tensor, *, power: int = 1, by_max: bool = False,
                             log: Callable[..., Any] = torch.log, exp: Callable[[float], float] = math.exp,
                             size: int = 1, count: bool = False) -> float:
    """Effective rank (Roy & Vetterli 2007): exp(entropy of the singular values / their sum).

    The keyword arguments' other values are the usual mistakes (squared values, no exp, bits...).
    """
    s = _svdvals64(matrix)
    s = s[s > s.max() * 1e-12] if s.max() > 0 else s
    p = s / s.max() if by_max else s ** power / (s ** power).sum()
    return float(len(s)) if count else exp(float(-(p * log(p)).sum())) / size


def _effective_rank_settings(matrix: torch.Tensor) -> list[tuple[dict[str, Any], str]]:
    """The usual mistakes: (reference_effective_rank's settings, hint)."""
    def entropy(h: float) -> float:
        return h
    return [
        (dict(power=2), "You used the squared singular values. This exercise's effective rank uses "
                        "the singular values themselves: p = s / s.sum()."),
        (dict(exp=entropy), "That is the entropy H; the effective rank is exp(H)."),
        (dict(exp=entropy, log=torch.log2), "That is the entropy in bits; the effective rank is exp(H) with H in nats "
                                            "(natural log), or 2**H with H in bits."),
        (dict(log=torch.log2), "You mixed bases: exp() of an entropy measured in bits (log2). Use "
                               "torch.log with torch.exp, or log2 with 2**H."),
        (dict(by_max=True), "Normalise by the sum of the singular values (so the p_i add up to 1), not by the largest."),
        (dict(size=min(matrix.shape)), "That is the effective rank divided by the matrix size; "
                                       "return the effective rank itself."),
        (dict(count=True), "That is the ordinary rank (how many singular values are not 0). The "
                           "effective rank weighs them by size: exp(entropy of s / s.sum())."),
    ]


@_one_thread
def check_effective_rank(effective_rank: Callable[[torch.Tensor], Any], model: nn.Module) -> None:
    """Check ``effective_rank(matrix) -> float`` on trained-or-not weights and known cases."""
    n_layer = model.config.n_layer
    picks = [("wpe", lambda m: m.transformer.wpe.weight),
             ("h.0.attn.c_attn", lambda m: m.transformer.h[0].attn.c_attn.weight),
             ("h.0.attn.c_proj", lambda m: m.transformer.h[0].attn.c_proj.weight),
             (f"h.{n_layer - 1}.mlp.c_fc", lambda m: m.transformer.h[-1].mlp.c_fc.weight),
             (f"h.{n_layer - 1}.mlp.c_proj", lambda m: m.transformer.h[-1].mlp.c_proj.weight)]
    fresh = fresh_init(model.config)
    fresh_matrices = [(name, get(fresh).detach().float().clone()) for name, get in picks]
    del fresh
    generator = torch.Generator().manual_seed(5)
    order = torch.randperm(12, generator=generator)
    low_rank = torch.diag(torch.tensor([3.0, 2.0, 1.0] + [0.0] * 9))[order]  # exact zeros
    cases = [(f"the loaded model's {name}.weight", get(model).detach()) for name, get in picks]
    cases += [(f"a fresh random init's {name}.weight", matrix) for name, matrix in fresh_matrices]
    cases += [("2 x identity(6), whose 6 singular values are equal", 2 * torch.eye(6)),
              ("a 12 x 12 matrix of rank 3 (9 singular values are 0)", low_rank)]
    values: dict[str, float] = {}
    for label, matrix in cases:
        got = call_learner(effective_rank, matrix, name=f"effective_rank({label})", protect={"matrix": matrix})
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            fail(f"effective_rank({label}) returned a tensor of shape {tuple(got.shape)}, "
                 "expected one number.", "Sum p * log(p) over all singular values before taking exp.")
        expected = reference_effective_rank(matrix)
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.is_floating_point():
            got = got.item()
        if isinstance(got, float) and math.isnan(got):
            zero = "rank 3" in label
            fail(f"effective_rank({label}) is NaN.",
                 "0 * log(0) is NaN in floating point: keep only the singular values above "
                 "zero (s = s[s > 1e-12 * s.max()]) before taking logs."
                 if zero else "Look for a division by zero or the log of 0.")
        check_number(got, expected, f"effective_rank({label})",
                     known_mistakes=mistakes_from(lambda **setting: reference_effective_rank(
                         matrix, **setting), _effective_rank_settings(matrix)), rel_tol=1e-4,
                     hint="p = s / s.sum() for the singular values s (torch.linalg.svdvals); "
                          "effective rank = exp(-(p * log p).sum()).")
        values[label] = float(got)
    ratios = [values[f"the loaded model's {name}.weight"]
              / values[f"a fresh random init's {name}.weight"] for name, _ in picks]
    passed(f"effective_rank: right on {len(cases)} matrices, including 6.0 for equal singular "
           "values and a rank-3 matrix. Loaded model / fresh random init, matrix by matrix: "
           + ", ".join(f"{name} {r:.2f}" for (name, _), r in zip(picks, ratios)) + ".")


# --------------------------------------------------------------------------- exercise 4

def reference_qk_singular_values(model: nn.Module, layer: int, head: int, *, key: int = 1,
                                 interleaved: bool = False, rows: bool = False, transposed: bool = False,
                                 scale: float = 1.0, flip: bool = False) -> torch.Tensor:
    """The d_head non-zero singular values of W_QK = W_Q^h (W_K^h)^T, largest first.

    The keyword arguments' other values are the usual mistakes: the keys from block ``key`` of
    c_attn (0 = q, 2 = v), every n_head-th column, row blocks, W_Qᵀ W_K, a scale, smallest first.
    """
    d, n_head = model.config.n_embd, model.config.n_head
    d_head = d // n_head
    w = model.transformer.h[layer].attn.c_attn.weight.detach()
    cols = slice(head, d, n_head) if interleaved else slice(head * d_head, (head + 1) * d_head)
    w_q, w_k = ((w.T[b * d:(b + 1) * d] if rows else w[:, b * d:(b + 1) * d])[:, cols] for b in (0, key))
    values = torch.linalg.svdvals(w_q.T @ w_k if transposed else w_q @ w_k.T)[:d_head] * scale
    return values.flip(0) if flip else values


def _qk_settings(model: nn.Module) -> list[tuple[dict[str, Any], str]]:
    """The usual mistakes: (reference_qk_singular_values's settings, hint)."""
    d_head = model.config.n_embd // model.config.n_head
    return [
        (dict(transposed=True), "You multiplied W_Qᵀ W_K (d_head x d_head). W_QK = W_Q W_Kᵀ is d_model x d_model (the "
                                "sum runs over the head's d_head features): its singular values differ."),
        (dict(scale=1 / math.sqrt(d_head)), "Leave out the 1/√d_head scale: the exercise asks for W_QK itself."),
        (dict(flip=True), "Largest first: torch.linalg.svdvals already returns them in decreasing order."),
        (dict(key=2), "That is W_Q W_Vᵀ: c_attn's output is [q | k | v], so the keys are columns d_model to 2·d_model."),
        (dict(key=0), "Both factors are W_Q: the keys are columns d_model to 2·d_model of c_attn.weight."),
        (dict(interleaved=True), "A head's columns are contiguous: head h has columns h·d_head to "
                                 "(h+1)·d_head of W_Q (and of W_K), not every n_head-th column."),
        (dict(rows=True), "You sliced rows of c_attn.weight. Conv1D stores its weight as (in, out) "
                          "= (d_model, 3·d_model): q, k and v are column blocks."),
    ]


def _check_qk_head(qk_singular_values: Callable[..., Any], model: nn.Module, layer: int,
                   head: int, where: str) -> torch.Tensor:
    """One head: the learner's singular values against the reference, mistakes named."""
    d_head = model.config.n_embd // model.config.n_head
    weight = model.transformer.h[layer].attn.c_attn.weight
    label = f"qk_singular_values({where}, layer={layer}, head={head})"
    got = call_learner(qk_singular_values, model, layer, head, name=label, model=model,
                       protect={f"c_attn.weight of layer {layer}": weight})
    expected = reference_qk_singular_values(model, layer, head)
    atol = 1e-5 * float(expected[0])
    if isinstance(got, torch.Tensor) and got.is_floating_point() and got.dim() == 1 \
            and got.shape[0] > d_head and close(got[:d_head], expected, 1e-3, atol):
        fail(f"{label} has {got.shape[0]} values; W_QK has rank at most d_head = "
             f"{d_head}, so only the first {d_head} are not (numerically) zero.",
             f"Return the first d_head: svdvals(...)[:{d_head}], with d_head = "
             "config.n_embd // config.n_head.")
    check_tensor(got, expected, label, rtol=1e-3, atol=atol,
                 known_mistakes=mistakes_from(lambda **setting: reference_qk_singular_values(
                     model, layer, head, **setting), _qk_settings(model)),
                 hint="W_Q = c_attn.weight[:, :d_model], "
                      "W_K = c_attn.weight[:, d_model:2*d_model]; "
                      f"head h is columns h*d_head:(h+1)*d_head of each (d_head = {d_head} "
                      "here); then torch.linalg.svdvals(W_Q_h @ W_K_h.T)[:d_head].")
    return expected


@_one_thread
def check_qk_singular_values(qk_singular_values: Callable[..., Any], model: nn.Module) -> None:
    """Check ``qk_singular_values(model, layer, head) -> Tensor (d_head,)``, largest first."""
    n_layer, n_head = model.config.n_layer, model.config.n_head
    d_head = model.config.n_embd // n_head
    cases = sorted({(0, 0), (n_layer // 2, n_head // 2), (n_layer - 1, n_head - 1)})
    results = [_check_qk_head(qk_singular_values, model, layer, head, "model") for layer, head in cases]
    other = second_gpt2(model)
    _check_qk_head(qk_singular_values, other, other.config.n_layer - 1, other.config.n_head - 1,
                   f"a second model with {other.config.n_head} heads of "
                   f"{other.config.n_embd // other.config.n_head}")
    last = results[-1]
    passed(f"qk_singular_values: the {d_head} singular values of W_QK for {len(cases)} heads "
           f"(layer {cases[-1][0]} head {cases[-1][1]}: largest {float(last[0]):.3g}, smallest "
           f"{float(last[-1]):.3g}), largest first, and for a head of a second model with "
           f"{other.config.n_head} heads; the model's weights, gradients and mode unchanged.")
