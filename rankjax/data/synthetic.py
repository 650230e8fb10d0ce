"""A deterministic synthetic e-commerce world: the embedded default data of rankjax.

Generated offline from a seed in a few seconds, it serves every model family:

* a **catalog**: products with a category, brand, colour, price, popularity, quality and
  a title (words and token ids);
* **queries** derived from a seed product's attributes ("<brand> <colour> <noun>"), each with
  a recalled candidate list of products;
* **graded relevance** 0-3 from a known latent match, as in shopping-query judgments
  (ESCI): 3 exact (same category and every attribute the query names), 2 substitute (same
  category, an attribute differs), 1 complement (the category that goes with the query's,
  e.g. a case for a phone), 0 irrelevant. A product's quality moves its latent grade within
  its class and raters add noise, so labels are noisy draws around the latent grade;
* per (query, product) **ranking features** as a production ranker sees them: lexical
  match (overlap, BM25) over titles with dropped words, a noisy query-category classifier,
  attribute matches, price, popularity, ratings, a position-biased click-through rate from a
  simulated click log, and pure-noise features;
* **users** with category, brand and price preferences and time-ordered **interaction
  logs** (view, click, cart, purchase; purchases are followed by complements).

`oracle` is the expected label given the latent grade, `E[label | grade]`: the best any
ranker can do in expectation. Tests check a trained ranker against it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rankjax.data.dataset import RankingDataset

GRADES = ("irrelevant", "complement", "substitute", "exact")

FEATURE_NAMES = (
    "title_overlap",
    "title_overlap_ratio",
    "bm25",
    "category_prob",
    "complement_prob",
    "brand_match",
    "color_match",
    "price",
    "price_ratio_to_list_median",
    "popularity",
    "rating",
    "num_reviews",
    "click_through_rate",
    "impressions",
    "noise_gaussian",
    "noise_uniform",
    "noise_heavy_tailed",
)

_EVENTS = ("view", "click", "cart", "purchase")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Sizes and noise levels of the synthetic world."""

    seed: int = 0
    num_products: int = 5000
    num_categories: int = 16
    num_brands: int = 48
    num_colors: int = 10
    num_queries: int = 3000
    min_list_size: int = 8
    max_list_size: int = 40
    num_users: int = 1000
    events_per_user: int = 30
    title_word_dropout: float = 0.25
    classifier_noise: float = 1.2
    label_noise: float = 0.45
    quality_effect: float = 0.8

    def __post_init__(self):
        if self.num_categories < 2 or self.num_categories % 2:
            raise ValueError(
                f"data.world.num_categories={self.num_categories}: expected an even number >= 2"
            )
        if not 1 <= self.min_list_size <= self.max_list_size:
            raise ValueError(
                "data.world: need 1 <= min_list_size <= max_list_size, got "
                f"{self.min_list_size}, {self.max_list_size}"
            )
        if self.num_products < self.max_list_size:
            raise ValueError(
                f"data.world.num_products={self.num_products}: expected at least "
                f"max_list_size={self.max_list_size}"
            )


@dataclasses.dataclass(frozen=True)
class World:
    """The generated world. Arrays are indexed by product, query or event.

    Attributes:
      config: what generated it.
      vocab: token id -> word; id 0 is padding.
      products: `category, brand, color, price, popularity, quality, rating, num_reviews`
        `[num_products]` and `title_tokens [num_products, max_title_len]` (0 = padding).
      titles: `[num_products]` title strings.
      queries: `category, brand, color` (-1 = not named), `seed_product [num_queries]`,
        `tokens [num_queries, 4]` and `text [num_queries]`.
      judgments: the ranking data, one list per query (see `ranking_dataset`).
      complement_of: `[num_categories]` the complementary category.
      users: `preferred_categories [num_users, num_categories]` (probabilities),
        `preferred_brand [num_users]`, `price_sensitivity [num_users]`.
      interactions: `user, item, timestamp, event [num_events]`, each user's events in time
        order; `event` indexes `("view", "click", "cart", "purchase")`.
    """

    config: WorldConfig
    vocab: tuple[str, ...]
    products: dict[str, np.ndarray]
    titles: np.ndarray
    queries: dict[str, np.ndarray]
    judgments: RankingDataset
    complement_of: np.ndarray
    users: dict[str, np.ndarray]
    interactions: dict[str, np.ndarray]


def _words(rng: np.random.Generator, n: int, syllables: int) -> list[str]:
    """`n` distinct pronounceable pseudo-words."""
    cons, vows = "bcdfghklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < n:
        k = rng.integers(1, syllables + 1)
        out.add(
            "".join(str(rng.choice(list(cons))) + str(rng.choice(list(vows))) for _ in range(k))
        )
    return sorted(out)


def _vocabulary(rng: np.random.Generator, cfg: WorldConfig) -> dict[str, list[str]]:
    words = _words(rng, cfg.num_categories * 6 + cfg.num_brands + cfg.num_colors + 40, 3)
    rng.shuffle(words)
    it = iter(words)
    take = lambda k: [next(it) for _ in range(k)]  # noqa: E731
    return {
        "noun": take(cfg.num_categories * 2),  # two synonyms per category
        "adjective": take(cfg.num_categories * 4),  # four descriptive words per category
        "brand": take(cfg.num_brands),
        "color": take(cfg.num_colors),
        "generic": take(40),
    }


def _catalog(rng: np.random.Generator, cfg: WorldConfig, words: dict, token_of: dict) -> dict:
    p, c = cfg.num_products, cfg.num_categories
    category = rng.integers(0, c, size=p)
    # Each category sells a handful of brands with Zipf-like shares.
    brands_per_cat = 6
    cat_brands = np.stack(
        [rng.choice(cfg.num_brands, brands_per_cat, replace=False) for _ in range(c)]
    )
    share = 1.0 / np.arange(1, brands_per_cat + 1)
    brand_slot = rng.choice(brands_per_cat, size=p, p=share / share.sum())
    brand = cat_brands[category, brand_slot]
    color = rng.integers(0, cfg.num_colors, size=p)
    cat_log_price = rng.uniform(1.5, 6.0, size=c)
    brand_premium = rng.normal(0.0, 0.3, size=cfg.num_brands)
    price = np.exp(cat_log_price[category] + brand_premium[brand] + rng.normal(0, 0.35, size=p))
    quality = rng.beta(2.0, 2.0, size=p)
    popularity = np.floor(np.exp(rng.normal(3.0, 1.5, size=p) + 1.5 * quality)).astype(np.float64)
    num_reviews = rng.poisson(popularity * 0.05 + 0.5).astype(np.float64)
    rating = np.clip(1 + 4 * quality + rng.normal(0, 0.6 / np.sqrt(1 + num_reviews)), 1, 5)

    max_len = 7
    title_tokens = np.zeros([p, max_len], np.int32)
    titles = []
    for i in range(p):
        cat = category[i]
        adjectives = words["adjective"][cat * 4 : cat * 4 + 4]
        title = [words["brand"][brand[i]]]
        if rng.random() < 0.85:
            title.append(words["color"][color[i]])
        title += list(rng.choice(adjectives, size=rng.integers(1, 3), replace=False))
        title.append(words["noun"][2 * cat + rng.integers(2)])
        title += list(rng.choice(words["generic"], size=rng.integers(0, 3), replace=False))
        titles.append(" ".join(title))
        title_tokens[i, : len(title)] = [token_of[w] for w in title]
    return dict(
        category=category,
        brand=brand,
        color=color,
        price=price,
        popularity=popularity,
        quality=quality,
        rating=rating,
        num_reviews=num_reviews,
        title_tokens=title_tokens,
        titles=np.asarray(titles, dtype=object),
    )


def _queries(rng: np.random.Generator, cfg: WorldConfig, prod: dict, words: dict, token_of: dict):
    q = cfg.num_queries
    seed_product = rng.choice(cfg.num_products, size=q, p=_normalise(prod["popularity"] + 1.0))
    category = prod["category"][seed_product]
    brand = np.where(rng.random(q) < 0.5, prod["brand"][seed_product], -1)
    color = np.where(rng.random(q) < 0.4, prod["color"][seed_product], -1)
    tokens = np.zeros([q, 4], np.int32)
    text = []
    for i in range(q):
        t = []
        if brand[i] >= 0:
            t.append(words["brand"][brand[i]])
        if color[i] >= 0:
            t.append(words["color"][color[i]])
        if rng.random() < 0.3:
            t.append(str(rng.choice(words["adjective"][category[i] * 4 : category[i] * 4 + 4])))
        t.append(words["noun"][2 * category[i] + rng.integers(2)])
        text.append(" ".join(t))
        tokens[i, : len(t)] = [token_of[w] for w in t]
    return dict(
        category=category,
        brand=brand,
        color=color,
        seed_product=seed_product,
        tokens=tokens,
        text=np.asarray(text, dtype=object),
    )


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / x.sum()


def _candidates(rng: np.random.Generator, cfg: WorldConfig, prod: dict, queries: dict, comp):
    """A recall stage's candidate lists: same-category, complement, same-brand and random."""
    by_cat = [np.flatnonzero(prod["category"] == c) for c in range(cfg.num_categories)]
    by_brand = [np.flatnonzero(prod["brand"] == b) for b in range(cfg.num_brands)]
    out = []
    for i in range(cfg.num_queries):
        n = int(rng.integers(cfg.min_list_size, cfg.max_list_size + 1))
        cat = queries["category"][i]
        pools = [
            by_cat[cat],
            by_cat[comp[cat]],
            by_brand[prod["brand"][queries["seed_product"][i]]],
        ]
        shares = rng.dirichlet([3.0, 1.5, 1.5, 4.0])
        picks = [queries["seed_product"][i : i + 1]]
        for pool, share in zip(pools, shares[:3], strict=True):
            k = min(len(pool), int(round(share * n)))
            if k:
                picks.append(rng.choice(pool, size=k, replace=False))
        chosen = np.unique(np.concatenate(picks))
        if len(chosen) > n:
            chosen = rng.choice(chosen, size=n, replace=False)
        while len(chosen) < n:  # fill with random products (the recall stage's misses)
            extra = rng.choice(cfg.num_products, size=n - len(chosen), replace=False)
            chosen = np.unique(np.concatenate([chosen, extra]))
        out.append(rng.permutation(chosen))  # recall order carries no relevance signal
    return out


def _latent_grade(cfg, prod, queries, qi, pi, comp):
    """Relevance class in {0..3} and the continuous latent grade for (query, product) pairs."""
    p_cat = prod["category"][pi]
    q_cat = queries["category"][qi]
    q_brand, q_color = queries["brand"][qi], queries["color"][qi]
    attrs_ok = ((q_brand < 0) | (q_brand == prod["brand"][pi])) & (
        (q_color < 0) | (q_color == prod["color"][pi])
    )
    cls = np.where(p_cat == q_cat, np.where(attrs_ok, 3, 2), np.where(p_cat == comp[q_cat], 1, 0))
    grade = cls + cfg.quality_effect * (prod["quality"][pi] - 0.5)
    return cls, grade


def expected_label(grade: np.ndarray, noise: float, max_label: int = 3) -> np.ndarray:
    """`E[clip(round(grade + N(0, noise)), 0, max_label)]`, computed exactly.

    Args:
      grade: latent grades `[n]`.
      noise: standard deviation of the rater noise (> 0).
      max_label: highest label.

    Returns:
      `[n]` the expected label, strictly increasing in `grade`.
    """
    from math import erf, sqrt

    cdf = np.vectorize(lambda z: 0.5 * (1.0 + erf(z / sqrt(2.0))))
    # P(label >= k) = P(grade + eps >= k - 0.5) for k = 1..max_label.
    return sum(cdf((grade - (k - 0.5)) / noise) for k in range(1, max_label + 1))


def _features(rng, cfg, prod, queries, qi, pi, comp, idf, list_index, offsets):
    n = len(qi)
    q_tokens = queries["tokens"][qi]  # [n, 4]
    t_tokens = prod["title_tokens"][pi].copy()  # [n, T]
    # Sellers' titles miss words: drop each title word per (query, product) pair view.
    t_tokens[rng.random(t_tokens.shape) < cfg.title_word_dropout] = 0
    match = (q_tokens[:, :, None] == t_tokens[:, None, :]) & (q_tokens[:, :, None] > 0)
    q_has = match.any(-1)  # [n, 4] query word found in title
    q_len = np.maximum((q_tokens > 0).sum(-1), 1)
    overlap = q_has.sum(-1).astype(np.float64)
    tf = match.sum(-1)
    t_len = (t_tokens > 0).sum(-1)
    k1, b = 1.2, 0.75
    bm25 = (
        idf[q_tokens]
        * (q_tokens > 0)
        * tf
        * (k1 + 1)
        / (tf + k1 * (1 - b + b * t_len[:, None] / 5.0))
    ).sum(-1)

    # A query-category classifier with noisy logits, as trained on past clicks.
    nq, c = cfg.num_queries, cfg.num_categories
    logits = rng.normal(0.0, cfg.classifier_noise, size=[nq, c])
    logits[np.arange(nq), queries["category"]] += 2.5
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    category_prob = probs[qi, prod["category"][pi]]
    complement_prob = probs[qi, comp[prod["category"][pi]]]

    brand_named = queries["brand"][qi] >= 0
    brand_in_title = prod["brand"][pi] == queries["brand"][qi]
    brand_match = np.where(brand_named, np.where(brand_in_title, 1.0, -1.0), 0.0)
    color_named = queries["color"][qi] >= 0
    color_seen = rng.random(n) < 0.85  # colour often missing from the listing
    color_match = np.where(
        color_named & color_seen,
        np.where(prod["color"][pi] == queries["color"][qi], 1.0, -1.0),
        0.0,
    )

    price = prod["price"][pi]
    log_price = np.log(price)
    med = np.array(
        [np.median(log_price[s:e]) for s, e in zip(offsets[:-1], offsets[1:], strict=True)]
    )
    price_ratio = np.exp(log_price - med[list_index])

    # A click log from an earlier production ranker: position-biased clicks on shown items.
    _, grade = _latent_grade(cfg, prod, queries, qi, pi, comp)
    impressions = rng.poisson(np.exp(rng.normal(1.5, 1.0, size=n))).astype(np.float64) + 1
    position = rng.integers(1, 11, size=n)
    attractive = 1.0 / (1.0 + np.exp(-(1.6 * grade - 3.2)))
    clicks = rng.binomial(impressions.astype(np.int64), attractive / position**0.7)
    ctr = (clicks + 0.5) / (impressions + 1.0)

    return np.stack(
        [
            overlap,
            overlap / q_len,
            bm25,
            category_prob,
            complement_prob,
            brand_match,
            color_match,
            price,
            price_ratio,
            prod["popularity"][pi],
            prod["rating"][pi],
            prod["num_reviews"][pi],
            ctr,
            impressions,
            rng.normal(size=n),
            rng.uniform(size=n),
            rng.standard_t(2.0, size=n),
        ],
        axis=1,
    ).astype(np.float32)


def _users_and_interactions(rng, cfg, prod, comp):
    u, c = cfg.num_users, cfg.num_categories
    pref_cat = rng.dirichlet(np.full(c, 0.3), size=u)
    pref_brand = rng.integers(0, cfg.num_brands, size=u)
    price_sens = rng.uniform(0.0, 1.5, size=u)
    by_cat = [np.flatnonzero(prod["category"] == k) for k in range(c)]
    log_price = np.log(prod["price"])
    users, items, times, events = [], [], [], []
    for user in range(u):
        t = float(rng.uniform(0, 1e6))
        cat = int(rng.choice(c, p=pref_cat[user]))
        for _ in range(cfg.events_per_user):
            pool = by_cat[cat]
            # Choice within a category: popularity, the user's brand, and price sensitivity.
            logit = (
                0.5 * np.log1p(prod["popularity"][pool])
                + 1.5 * (prod["brand"][pool] == pref_brand[user])
                - price_sens[user] * (log_price[pool] - log_price[pool].mean())
            )
            item = int(rng.choice(pool, p=_normalise(np.exp(logit - logit.max()))))
            event = int(rng.choice(4, p=[0.55, 0.3, 0.1, 0.05]))
            users.append(user)
            items.append(item)
            times.append(t)
            events.append(event)
            t += float(rng.exponential(3600.0))
            # After a purchase users often shop the complement; otherwise they drift.
            if event == 3 and rng.random() < 0.6:
                cat = int(comp[cat])
            elif rng.random() < 0.3:
                cat = int(rng.choice(c, p=pref_cat[user]))
    users_d = dict(
        preferred_categories=pref_cat, preferred_brand=pref_brand, price_sensitivity=price_sens
    )
    inter = dict(
        user=np.asarray(users, np.int32),
        item=np.asarray(items, np.int32),
        timestamp=np.asarray(times, np.float64),
        event=np.asarray(events, np.int8),
    )
    return users_d, inter


def make_world(config: WorldConfig | None = None, **overrides) -> World:
    """Generates the world; the same config always gives the same world.

    Args:
      config: sizes and noise; defaults to `WorldConfig()`.
      **overrides: fields of `WorldConfig` to replace.

    Returns:
      The `World`.
    """
    cfg = dataclasses.replace(config or WorldConfig(), **overrides)
    rng = np.random.default_rng(cfg.seed)
    words = _vocabulary(rng, cfg)
    vocab = ("<pad>",) + tuple(w for group in words.values() for w in group)
    token_of = {w: i for i, w in enumerate(vocab)}
    comp = (np.arange(cfg.num_categories) + cfg.num_categories // 2) % cfg.num_categories
    prod = _catalog(rng, cfg, words, token_of)
    titles = prod.pop("titles")
    queries = _queries(rng, cfg, prod, words, token_of)

    cands = _candidates(rng, cfg, prod, queries, comp)
    sizes = np.array([len(x) for x in cands])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    pi = np.concatenate(cands)
    qi = np.repeat(np.arange(cfg.num_queries), sizes)
    cls, grade = _latent_grade(cfg, prod, queries, qi, pi, comp)
    labels = np.clip(np.round(grade + rng.normal(0, cfg.label_noise, size=len(pi))), 0, 3)

    doc_freq = np.bincount(prod["title_tokens"].ravel(), minlength=len(vocab)).astype(np.float64)
    idf = np.log1p((cfg.num_products - doc_freq + 0.5) / (doc_freq + 0.5))
    idf[0] = 0.0
    feats = _features(rng, cfg, prod, queries, qi, pi, comp, idf, qi, offsets)

    judgments = RankingDataset(
        features=feats,
        labels=labels.astype(np.float32),
        list_offsets=offsets.astype(np.int64),
        query_ids=np.arange(cfg.num_queries),
        feature_names=FEATURE_NAMES,
        extras={
            "oracle": expected_label(grade, cfg.label_noise).astype(np.float32),
            "item_id": pi.astype(np.int32),
            "match_class": cls.astype(np.int8),
        },
        source=f"synthetic(seed={cfg.seed})",
    )
    users, inter = _users_and_interactions(rng, cfg, prod, comp)
    return World(
        config=cfg,
        vocab=vocab,
        products=prod,
        titles=titles,
        queries=queries,
        judgments=judgments,
        complement_of=comp,
        users=users,
        interactions=inter,
    )
