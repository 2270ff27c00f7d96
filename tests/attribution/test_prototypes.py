"""Generator prototypes: whitened class means of the cached candidates (Fisher's discriminant as a
nearest-class-mean rule)."""

import numpy as np
import pytest

from resynth_index.attribution.prototypes import (MIN_PER_GENERATOR, OPEN_SET_SHRINKAGE, SIBLING_COSINE,
                                                  families_to_tell_apart, fit_prototypes, sibling_groups,
                                                  with_sibling_thumbnails)
from resynth_index.store.lookup import StoredCandidate


def _classes(rng, n, shift):
    # 20 dimensions: a large shared nuisance in the first 10, a small consistent shift between the two
    # generators in the last one (a fine-tune's signature)
    scale = np.r_[np.full(10, 5.0), np.full(10, 0.2)]
    a = rng.standard_normal((n, 20)) * scale
    b = rng.standard_normal((n, 20)) * scale
    b[:, -1] += shift
    return a, b


def test_whitening_finds_a_small_consistent_shift_that_raw_cosines_miss():
    rng = np.random.default_rng(0)
    a, b = _classes(rng, 200, 0.8)
    protos = fit_prototypes({"base": a, "fine-tune": b}, shrinkage=0.01)
    qa, qb = _classes(np.random.default_rng(1), 100, 0.8)
    right = sum(max(protos.scores(q), key=protos.scores(q).get) == "base" for q in qa)
    right += sum(max(protos.scores(q), key=protos.scores(q).get) == "fine-tune" for q in qb)
    assert right / 200 >= 0.9
    # the plain class-mean cosine on the same data is close to chance
    ca, cb = a.mean(0) - np.r_[a, b].mean(0), b.mean(0) - np.r_[a, b].mean(0)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    raw = sum((unit(q - np.r_[a, b].mean(0)) @ unit(ca)) > (unit(q - np.r_[a, b].mean(0)) @ unit(cb)) for q in qa)
    raw += sum((unit(q - np.r_[a, b].mean(0)) @ unit(cb)) > (unit(q - np.r_[a, b].mean(0)) @ unit(ca)) for q in qb)
    assert raw / 200 < right / 200 - 0.15


def test_leave_out_removes_a_candidate_from_its_own_mean():
    rng = np.random.default_rng(2)
    a, b = _classes(rng, 30, 1.0)
    protos = fit_prototypes({"a": a, "b": b})
    q = a[3]
    left = protos.scores(q, leave_out=("a", protos.transform(q)[0]))
    # the same whitening, with the candidate missing from a's mean
    expect_sum = protos.sums["a"] - protos.transform(q)[0]
    u = lambda v: v / np.linalg.norm(v)  # noqa: E731
    assert left["a"] == pytest.approx(float(u(expect_sum / 29) @ u(protos.transform(q)[0])))
    assert left["b"] == protos.scores(q)["b"]
    assert left["a"] < protos.scores(q)["a"]


def test_too_few_candidates_or_one_generator_fit_nothing():
    rng = np.random.default_rng(3)
    assert fit_prototypes({"a": rng.standard_normal((50, 4))}) is None
    assert fit_prototypes({"a": rng.standard_normal((50, 4)), "b": rng.standard_normal((MIN_PER_GENERATOR - 1, 4))}) is None


def test_degraded_copies_join_the_fit_but_do_not_count_as_candidates():
    rng = np.random.default_rng(4)
    few = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal((30, 4))}
    copies = {"a": rng.standard_normal((24, 4)), "b": rng.standard_normal((240, 4))}
    assert fit_prototypes(few, degraded=copies) is None  # 3 candidates and their copies are still 3 candidates
    a, b = _classes(rng, 20, 1.0)
    protos = fit_prototypes({"a": a, "b": b}, degraded={"a": a + 0.1, "b": b - 0.1})
    assert protos.counts == {"a": 40, "b": 40} and protos.vectors == 80


def _blocked(rng, n, generator):
    # a 4-d "semantic" block of large variance that carries nothing, and a 40-d "fingerprint" block of small
    # variance in which each generator (3 is never fitted: an unknown one) shifts 10 dimensions of its own
    x = rng.standard_normal((n, 44)) * np.r_[np.full(4, 5.0), np.full(40, 0.05)]
    x[:, 4 + 10 * generator:14 + 10 * generator] += 0.1
    return x


def test_a_target_per_block_keeps_a_low_variance_block_from_being_drowned():
    rng = np.random.default_rng(5)
    fitted = {f"g{k}": _blocked(rng, 200, k) for k in range(3)}
    known = [q for k in range(3) for q in _blocked(rng, 40, k)]
    unknown = list(_blocked(rng, 40, 3))
    flat, blocked = (fit_prototypes(fitted, OPEN_SET_SHRINKAGE, blocks=b) for b in (None, (4, 40)))

    def separation(protos):  # AUROC of the best score, known against the never-fitted generator
        k, u = ([max(protos.scores(q).values()) for q in qs] for qs in (known, unknown))
        return np.mean([[a > b for b in u] for a in k])

    assert separation(blocked) >= 0.85 and separation(flat) <= 0.7
    # one block is the flat target, and blocks that do not split the dimensions are refused
    one = fit_prototypes(fitted, OPEN_SET_SHRINKAGE, blocks=(44,))
    np.testing.assert_allclose(one.whiten, flat.whiten)
    with pytest.raises(ValueError, match="do not split 44"):
        fit_prototypes(fitted, blocks=(4, 41))


def _stored(rng, prompts, base, noise):
    """One generator's stored candidates: ``base`` (prompt -> unit vector) moved by ``noise``, renormalised."""
    out = []
    for i, p in enumerate(prompts):
        v = base[p] + noise * rng.standard_normal(base[p].shape)
        out.append(StoredCandidate(i, 0, p, (v / np.linalg.norm(v)).astype(np.float32)))
    return out


def test_generators_whose_candidates_are_near_copies_are_grouped_as_siblings():
    rng = np.random.default_rng(6)
    prompts = [f"prompt {i}" for i in range(40)]
    base = {p: (v := rng.standard_normal(64)) / np.linalg.norm(v) for p in prompts}
    other = {p: (v := rng.standard_normal(64)) / np.linalg.norm(v) for p in prompts}
    stored = {
        "base": _stored(rng, prompts, base, 0.01),
        "fine-tune": _stored(rng, prompts, base, 0.02),  # the same seed's image, slightly moved
        "fine-tune-2": _stored(rng, prompts, base, 0.02),
        "unrelated": _stored(rng, prompts, other, 0.01),
    }
    groups = sibling_groups(stored)
    family = frozenset({"base", "fine-tune", "fine-tune-2"})
    assert groups == {g: family for g in family}
    # the mean cosine decides: a looser copy falls out at the same threshold, joins at a lower one
    stored["fine-tune-2"] = _stored(rng, prompts, base, 0.08)
    assert sibling_groups(stored)["base"] == {"base", "fine-tune"}
    cos = np.mean([a.vector @ b.vector for a, b in zip(stored["base"], stored["fine-tune-2"])])
    assert cos < SIBLING_COSINE and sibling_groups(stored, threshold=cos - 0.01)["base"] == family
    # candidates of different prompts are never compared: no shared prompt, no siblings
    assert sibling_groups({"a": stored["base"][:20], "b": stored["fine-tune"][20:]}) == {}


def _rows(rng, n, main_shift=0.0, pattern=0.0):
    # 16 columns the first stage fits, then a 12-column "thumbnail" where a fine-tune leaves a small fixed
    # pattern under a large per-image variation
    main = rng.standard_normal((n, 16)) + main_shift
    thumb = rng.standard_normal((n, 12)) * 3.0 + pattern * np.resize([1.0, -1.0], 12)
    return np.hstack([main, thumb])


def test_the_siblings_thumbnail_stage_tells_a_fine_tune_from_its_base_and_leaves_other_comparisons_alone():
    rng = np.random.default_rng(0)
    clean = {"base": _rows(rng, 300), "tune": _rows(rng, 300, pattern=3.0), "other": _rows(rng, 300, main_shift=4.0)}
    first = fit_prototypes(clean, columns=(0, 16))
    assert first.transform(clean["base"][:1]).shape == (1, 16)
    # here the first stage's differences between the siblings are all noise, so the thumbnail must outweigh them
    staged = with_sibling_thumbnails(first, clean, {}, [frozenset({"base", "tune"})], (16, 28), weight=4.0)
    assert len(staged.siblings) == 1 and staged.siblings[0].gain > 0

    def accuracy(protos, queries):
        return np.mean([max(protos.scores(q), key=protos.scores(q).get) == g for g, rows in queries.items()
                        for q in rows])

    qrng = np.random.default_rng(1)
    queries = {"base": _rows(qrng, 100), "tune": _rows(qrng, 100, pattern=3.0)}
    assert accuracy(first, queries) < 0.65  # the first stage sees nothing between them
    assert accuracy(staged, queries) > 0.85
    q = queries["tune"][0]
    before, after = first.scores(q), staged.scores(q)
    assert after["other"] == before["other"]
    assert after["base"] + after["tune"] == pytest.approx(before["base"] + before["tune"])


def test_only_families_spanning_two_names_are_told_apart():
    groups = {"sd": frozenset({"sd", "sd~2", "ft"}), "sd~2": frozenset({"sd", "sd~2", "ft"}),
              "ft": frozenset({"sd", "sd~2", "ft"}), "xl": frozenset({"xl", "xl~2"}), "xl~2": frozenset({"xl", "xl~2"})}
    assert families_to_tell_apart(groups, {"sd~2": "sd", "xl~2": "xl"}) == [frozenset({"sd", "sd~2", "ft"})]
    assert families_to_tell_apart({}, {}) == []


def _grain_image(rng, warm: bool, coarse: float = 0.3):
    # "warm": saturated warm colours over a fine pixel grain; otherwise nearly grey, the grain a little coarser
    import colorsys

    from PIL import Image

    fine = rng.normal(0, 35, (64, 64))
    if warm:
        hue, saturation, lum = rng.normal(0.02, 0.02) % 1, 0.8, 150 + fine
    else:
        block = rng.normal(0, 35, (32, 32)).repeat(2, 0).repeat(2, 1)
        hue, saturation, lum = rng.random(), 0.08, 150 + coarse * block + (1 - coarse) * fine
    x = lum[..., None] * np.array(colorsys.hsv_to_rgb(hue, saturation, 1.0))
    x *= (lum / np.maximum(x @ [0.299, 0.587, 0.114], 1e-6))[..., None]  # the luma is the grain, whatever the hue
    return Image.fromarray(x.clip(0, 255).astype(np.uint8))


def test_colour_copies_keep_a_greyscale_query_with_its_generator():
    """Two generators told apart by colour, and by a grain that colour outweighs: a grey copy of the warm one's
    image goes to the grey one, unless the prototypes were fitted on colour copies too (the real embedder and the
    real copies of a build), whose colour variation the whitening then discounts."""
    from resynth_index.config import load_config
    from resynth_index.images.degrade import degraded_copies
    from resynth_index.models.embedders import embedder_from_config

    embedder = embedder_from_config(load_config(None).embedder, "cpu")
    rng = np.random.default_rng(0)
    train = {g: [_grain_image(rng, g == "warm") for _ in range(24)] for g in ("warm", "grey")}
    copies = {g: [degraded_copies(im, 2, 1000 + i, colour=1) for i, im in enumerate(ims)] for g, ims in train.items()}
    clean = {g: embedder.embed(ims) for g, ims in train.items()}
    with_colour = {g: embedder.embed([c for cs in v for c in cs]) for g, v in copies.items()}
    degraded_only = {g: embedder.embed([c for cs in v for c in cs[:2]]) for g, v in copies.items()}
    queries = {g: [_grain_image(rng, g == "warm") for _ in range(12)] for g in train}
    grey = {g: embedder.embed([im.convert("L").convert("RGB") for im in ims]) for g, ims in queries.items()}
    as_made = {g: embedder.embed(ims) for g, ims in queries.items()}

    def accuracy(prototypes, vectors):
        return {g: np.mean([max(s := prototypes.scores(v), key=s.get) == g for v in rows])
                for g, rows in vectors.items()}

    columns = (0, 2036)  # the blocks the engine's prototypes fit (all but the thumbnail)
    without = fit_prototypes(clean, degraded=degraded_only, columns=columns)
    fitted = fit_prototypes(clean, degraded=with_colour, columns=columns)
    assert accuracy(without, as_made) == accuracy(fitted, as_made) == {"warm": 1.0, "grey": 1.0}
    assert accuracy(without, grey)["warm"] <= 0.25
    assert accuracy(fitted, grey) == {"warm": 1.0, "grey": 1.0}
