"""Train a DocID decoder for generative retrieval: DiffuGR (masked discrete diffusion) or the
autoregressive baseline, on the same data.

    python -m training.train_diffugr --mode diffusion --out artifacts/v1/retrieve/diffugr
    python -m training.train_diffugr --mode ar        --out artifacts/v1/retrieve/ar

Data, as DSI-style generative retrievers train: indexing examples (document text -> its DocID) for every
document and retrieval examples (training query -> each relevant document's DocID); with `--pseudo-queries FILE`
(DSI-QG: indexing.pseudo_queries' kept questions, `make artifacts DOCID_QG=1`) also generated question -> DocID
for every document. Queries and documents enter as frozen MiniLM token states.

DiffuGR objective: per example draw the masking level m ~ U{1..L}, mask m random DocID positions and
recover them: loss = (1/m) * sum of the cross-entropies at the masked positions, i.e. the 1/t-weighted
masked-diffusion ELBO with t = m/L (MDLM, LLaDA). AR objective: next-token cross-entropy.
Validation Recall@10 on the valid queries (full steps, beam 10) every `--eval-every` epochs; the best
checkpoint is kept in --out, the last one in --out/last (resumed from when present). Hyperparameters: TrainConfig
below (the CLI's options and defaults are its fields).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from indexing.data import load_retrieval
from models.artifacts import read_meta, write_meta
from models.beam import MASKED
from models.diffugr.backend import ARDocIDBackend, DiffuGRBackend
from models.diffugr.geometry import geometry_prior
from models.diffugr.network import DocIDDecoder, DocIDDecoderConfig
from models.docids import DocIDs
from models.encoders.sentence import encode_tokens, pooled
from training.common import add_config_args, add_threads_arg, close_epoch, config_from_args, optimiser_step, set_threads
from training.eval.metrics import ranking


@dataclass
class TrainConfig:
    """DocID decoder training (DiffuGR and the AR baseline): the one place these defaults live."""

    epochs: int = 30  # `make artifacts` (the published figures); CI passes 15 (DOCID_EPOCHS=15)
    batch_size: int = 128
    lr: float = 1e-3
    d_model: int = DocIDDecoderConfig.d_model  # the network's shape defaults are DocIDDecoderConfig's
    n_layers: int = DocIDDecoderConfig.n_layers
    eval_every: int = 5  # validation Recall@10 every N epochs
    seed: int = 0
    # serving DiffuGR with the geometry prior (models.diffugr.geometry; chosen on the valid split, see README):
    # "geometry" or "none"; the AR baseline is served without it
    prior: str = "geometry"
    prior_tau: float = 0.05
    decoder_weight: float = 0.1
    prior_beam: int = 50
    # distilling the geometry into the decoder (0: off): the weight of a soft cross-entropy to the geometry scorer's
    # distribution over each masked position's children (models.diffugr.geometry, temperature prior_tau), beside the
    # hard DocID cross-entropy; masks are then suffixes (the level order the served beam fills in)
    distil_weight: float = 0.0
    crops: int = 0  # extra pseudo-queries per document: random spans of its words (distillation views)
    # DSI-QG: generated questions per document (indexing.pseudo_queries; a JSONL of {doc_id, questions}), each an
    # extra retrieval example question -> DocID; "" = off. pseudo_per_doc caps the questions used per document (0: all)
    pseudo_queries: str = ""
    pseudo_per_doc: int = 0


def masked_diffusion_loss(model: DocIDDecoder, qs, qm, codes: torch.Tensor) -> torch.Tensor:
    B, L = codes.shape
    m = torch.randint(1, L + 1, (B,))  # how many positions to mask
    order = torch.rand(B, L).argsort(dim=1)
    mask = order < m[:, None]  # m random positions per row
    logits = model(qs, qm, torch.where(mask, torch.full_like(codes, MASKED), codes))
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1), reduction="none").view(B, L)
    return ((ce * mask).sum(dim=1) / m).mean()


class GeometryTeacher:
    """Soft targets from the geometry scorer: for a query vector q and a DocID whose first k positions are fixed,
    the distribution over each later position's tokens softmax_t(mean_{d consistent, code_p(d)=t} <q, e_d> / tau),
    over the documents consistent with the fixed prefix (exactly the prior's score of that decoding state)."""

    def __init__(self, codes: np.ndarray, vectors: np.ndarray, vocab: int, tau: float):
        self.codes, self.vectors, self.vocab, self.tau = codes, vectors, vocab, tau
        self._members: dict[tuple, np.ndarray] = {}

    def members(self, prefix: tuple) -> np.ndarray:
        """Rows of the documents whose DocID starts with prefix (cached: batches revisit the same prefixes)."""
        if prefix not in self._members:
            self._members[prefix] = np.flatnonzero((self.codes[:, :len(prefix)] == prefix).all(axis=1))
        return self._members[prefix]

    def targets(self, qvecs: np.ndarray, rows: np.ndarray, fixed: np.ndarray) -> torch.Tensor:
        """qvecs (B, d) query vectors, rows (B,) the DocID row each example follows, fixed (B,) how many leading
        positions are fixed -> (B, L, V) target distributions (zero rows at the fixed positions)."""
        B, L = len(rows), self.codes.shape[1]
        prior = geometry_prior(qvecs @ self.vectors.T, self.codes, self.vocab, self.tau)
        out = np.zeros((B, L, self.vocab), dtype=np.float32)
        for i in range(B):
            positions = list(range(fixed[i], L))
            logits = prior(i, self.members(tuple(self.codes[rows[i], :fixed[i]])), positions)[positions]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[i, positions] = e / e.sum(axis=1, keepdims=True)
        return torch.from_numpy(out)


def distilled_diffusion_loss(model: DocIDDecoder, qs, qm, codes: torch.Tensor, teacher: GeometryTeacher,
                             qvecs: np.ndarray, rows: np.ndarray, weight: float) -> torch.Tensor:
    """Suffix masks (the last m positions, m ~ U{1..L}): the hard cross-entropy to the example's DocID plus `weight`
    times the soft cross-entropy to the geometry teacher, each 1/m-weighted over the masked positions."""
    B, L = codes.shape
    m = torch.randint(1, L + 1, (B,))
    mask = torch.arange(L)[None, :] >= (L - m)[:, None]
    logits = model(qs, qm, torch.where(mask, torch.full_like(codes, MASKED), codes))
    logp = torch.log_softmax(logits, dim=-1)
    hard = -logp.gather(-1, codes[..., None])[..., 0]
    soft = -(teacher.targets(qvecs, rows, (L - m).numpy()) * logp.clamp_min(-1e4)).sum(-1)
    return (((hard + weight * soft) * mask).sum(dim=1) / m).mean()


def random_crops(text: str, n: int, rng: random.Random) -> list[str]:
    """n random spans of 40-80% of the text's words (independent cropping, as Contriever's pseudo-queries)."""
    words = text.split()
    out = []
    for _ in range(n):
        k = max(1, int(len(words) * rng.uniform(0.4, 0.8)))
        start = rng.randint(0, len(words) - k)
        out.append(" ".join(words[start:start + k]))
    return out


def autoregressive_loss(model: DocIDDecoder, qs, qm, codes: torch.Tensor) -> torch.Tensor:
    logits = model(qs, qm, codes)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


def encoded_texts(texts: list[str], cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen encoder states of the training texts (fp16), cached beside the DocIDs by a hash of the texts
    so the diffusion and AR runs (and resumed runs) encode once."""
    key = hashlib.sha1("\x1f".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"states-{key}.pt"
    if path.exists():
        return torch.load(path)
    print(f"encoding {len(texts)} texts with the frozen query encoder ...", flush=True)
    states, masks = encode_tokens(texts)
    torch.save((states.half(), masks), path)
    return states.half(), masks


def recall_at_10(backend, queries: dict[str, str], qrels: dict[str, dict[str, int]], batch: int = 32) -> float:
    """Recall@10 (training.eval.metrics) of the decoder's top 10 (all steps, beam 10) for each query."""
    qids = list(queries)
    ranked = {}
    for b in range(0, len(qids), batch):
        chunk = qids[b:b + batch]
        decoded = backend.decode([queries[q] for q in chunk], backend.length, 10)
        for q, rows in zip(chunk, decoded):
            ranked[q] = [backend.docids.ids[r] for r, _ in rows[:10]]
    return ranking({q: qrels[q] for q in qids}, ranked, ["recall@10"])["recall@10"]


def train(data_dir: Path, docids_dir: Path, out: Path, mode: str = "diffusion", cfg: TrainConfig | None = None, *,
          max_docs: int | None = None, max_valid: int | None = None, **overrides) -> dict:
    """Train with cfg (default TrainConfig()), fields overridden by keyword (`train(..., epochs=3)`); max_docs and
    max_valid keep the first N documents and validation queries (tests)."""
    cfg = replace(cfg or TrainConfig(), **overrides)
    epochs, batch_size, lr, d_model, eval_every = cfg.epochs, cfg.batch_size, cfg.lr, cfg.d_model, cfg.eval_every
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    data = load_retrieval(data_dir)
    docids = DocIDs.load(docids_dir)
    row = {d: n for n, d in enumerate(docids.ids)}
    doc_rows = list(range(len(docids.ids)))[:max_docs] if max_docs else list(range(len(docids.ids)))
    keep = set(doc_rows)
    train_q = {q: t for q, t in data.split_queries("train").items()
               if any(row.get(d) in keep for d in data.qrels["train"][q])}
    valid_q = dict(list(data.split_queries("valid").items())[:max_valid]) if max_valid else data.split_queries("valid")
    if max_docs:
        valid_q = {q: t for q, t in valid_q.items() if all(row.get(d) in keep for d in data.qrels["valid"][q])}
    texts = [data.doc_text(docids.ids[r]) for r in doc_rows] + list(train_q.values())
    examples = [(n, r) for n, r in enumerate(doc_rows)]  # indexing: document text -> DocID
    for n, q in enumerate(train_q, start=len(doc_rows)):  # retrieval: query -> DocID of each relevant doc
        examples += [(n, row[d]) for d in data.qrels["train"][q] if row.get(d) in keep]
    crop_rng = random.Random(cfg.seed)
    for r in doc_rows if cfg.crops else []:  # pseudo-queries: spans of the document -> its DocID
        for crop in random_crops(data.doc_text(docids.ids[r]), cfg.crops, crop_rng):
            examples.append((len(texts), r))
            texts.append(crop)
    if cfg.pseudo_queries:  # DSI-QG: generated question -> DocID of the document it was written for
        from indexing.pseudo_queries import read_questions

        generated = read_questions(Path(cfg.pseudo_queries))
        for r in doc_rows:
            for q in generated.get(docids.ids[r], [])[:cfg.pseudo_per_doc or None]:
                examples.append((len(texts), r))
                texts.append(q)
    states, masks = encoded_texts(texts, docids_dir)
    teacher = qvecs = None
    if cfg.distil_weight > 0 and mode == "diffusion":
        teacher = GeometryTeacher(docids.codes, document_vectors(docids_dir, docids), docids.vocab, cfg.prior_tau)
        qvecs = pooled(states, masks)
    codes = torch.from_numpy(docids.codes)
    net = DocIDDecoderConfig(length=docids.length, vocab=docids.vocab, causal=mode == "ar", d_model=d_model,
                             n_layers=cfg.n_layers, n_heads=max(1, d_model // 64))
    model = DocIDDecoder(net)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    state = {"epoch": 0, "best_recall10": -1.0, "best_epoch": 0, "history": [], "mode": mode}
    last = out / "last"
    if (last / "model.safetensors").exists():
        model = DocIDDecoder.from_dir(last)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        opt.load_state_dict(torch.load(last / "optim.pt"))
        state = json.loads((last / "train_state.json").read_text())
        print(f"resumed from epoch {state['epoch']} (best valid R@10 {state['best_recall10']:.4f})")
    loss_fn = autoregressive_loss if mode == "ar" else masked_diffusion_loss
    backend_cls = ARDocIDBackend if mode == "ar" else DiffuGRBackend
    bar = tqdm(range(state["epoch"], epochs), desc=f"docid-{mode}", initial=state["epoch"], total=epochs)
    for epoch in bar:
        model.train()
        random.shuffle(examples)
        losses = []
        for b in range(0, len(examples), batch_size):
            chunk = examples[b:b + batch_size]
            t_idx = torch.tensor([t for t, _ in chunk])
            width = int(masks[t_idx].sum(dim=1).max())  # trim the padding the whole batch shares
            rows = np.array([r for _, r in chunk])
            if teacher is not None:
                loss = distilled_diffusion_loss(model, states[t_idx, :width].float(), masks[t_idx, :width],
                                                codes[rows], teacher, qvecs[t_idx.numpy()], rows, cfg.distil_weight)
            else:
                loss = loss_fn(model, states[t_idx, :width].float(), masks[t_idx, :width], codes[rows])
            losses.append(optimiser_step(opt, loss, clip=1.0))
        entry = close_epoch(state, epoch, losses)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            model.eval()
            r10 = recall_at_10(backend_cls(model, docids, level_order=teacher is not None), valid_q,
                               data.qrels["valid"])
            entry["valid_recall10"] = r10
            if r10 > state["best_recall10"]:
                state["best_recall10"], state["best_epoch"] = r10, epoch + 1
                model.save(out)
                if not (out / "docids").exists():
                    shutil.copytree(docids_dir, out / "docids", ignore=shutil.ignore_patterns("states-*"))
            model.save(last, extra=state)
            torch.save(opt.state_dict(), last / "optim.pt")
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", best_r10=f"{state['best_recall10']:.4f}")
    write_meta(out, backend=backend_cls.name, mode=mode, data=str(data_dir), beam=10,
               best_valid_recall10=state["best_recall10"], best_epoch=state["best_epoch"], epochs_run=state["epoch"],
               examples=len(examples), docids=str(docids_dir), level_order=teacher is not None,
               distil_weight=cfg.distil_weight if teacher is not None else 0.0, crops=cfg.crops,
               pseudo_queries=cfg.pseudo_queries, pseudo_per_doc=cfg.pseudo_per_doc)
    if mode == "diffusion" and cfg.prior == "geometry":
        attach_prior(out, docids_dir, cfg, None if max_docs else data_dir)
    return state


def document_vectors(docids_dir: Path, docids: DocIDs) -> np.ndarray:
    """The documents' embeddings in DocID-row order: the dense index's vectors the DocIDs were built from."""
    dense = docids_dir.parent / "dense"
    ids = json.loads((dense / "ids.json").read_text())
    if ids != docids.ids:
        raise ValueError(f"{dense} does not hold the documents of {docids_dir} in the same order")
    return np.load(dense / "vectors.npy").astype("float32")


def calibrate_min_steps(out: Path, data_dir: Path, docids_dir: Path) -> dict:
    """The fewest denoising steps the budget planner may choose: the served checkpoint's valid Recall@10 at every step
    count against the fallback's (BM25, from the same artifacts directory); min_steps = the fewest steps that reach
    it (all of them when none does). Written to meta.json with the figures."""
    from models.registry import load_backend
    from training.eval.ranking import evaluate_ranking

    dirs = {"retrieval": data_dir}
    backend = DiffuGRBackend.load(out)
    by_steps = {t: evaluate_ranking("retrieve", backend, "valid", dirs, options={"steps": t}, timed=False)["recall@10"]
                for t in range(1, backend.length + 1)}
    bm25 = load_backend(docids_dir.parent.parent, "retrieve", "bm25")
    fallback = evaluate_ranking("retrieve", bm25, "valid", dirs, timed=False)["recall@10"]
    min_steps = next((t for t, r in sorted(by_steps.items()) if r >= fallback), backend.length)
    meta = read_meta(out)
    meta.update(min_steps=min_steps, valid_recall10_by_steps={str(t): round(r, 4) for t, r in by_steps.items()},
                valid_recall10_fallback=round(fallback, 4))
    write_meta(out, **{k: v for k, v in meta.items() if k != "built_at"})
    return {"min_steps": min_steps, "by_steps": by_steps, "bm25": fallback}


def attach_prior(out: Path, docids_dir: Path, cfg: TrainConfig, data_dir: Path | None = None) -> None:
    """Serve the checkpoint in `out` with the geometry prior: the documents' embeddings in DocID-row order (the
    dense index's vectors the DocIDs were built from) go to out/geometry.npy, the prior's settings to meta.json; with
    data_dir, the fewest steps worth planning are then measured on its valid split (calibrate_min_steps)."""
    np.save(out / "geometry.npy", document_vectors(docids_dir, DocIDs.load(out / "docids")))
    meta = read_meta(out)
    meta.update(beam=cfg.prior_beam, prior={"kind": "geometry", "tau": cfg.prior_tau,
                                            "decoder_weight": cfg.decoder_weight})
    write_meta(out, **{k: v for k, v in meta.items() if k != "built_at"})
    if data_dir is not None:
        c = calibrate_min_steps(out, data_dir, docids_dir)
        print(f"valid R@10 by steps {c['by_steps']}, BM25 {c['bm25']:.4f}: min_steps {c['min_steps']}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["diffusion", "ar"], default="diffusion")
    p.add_argument("--data", type=Path, default=Path("data/strategyqa-facts"))
    p.add_argument("--docids", type=Path, default=Path("artifacts/v1/retrieve/docids"))
    p.add_argument("--out", type=Path, default=None)
    add_config_args(p, TrainConfig)
    add_threads_arg(p)
    p.add_argument("--attach-prior-only", action="store_true",
                   help="no training: serve the existing checkpoint in --out with the geometry prior")
    a = p.parse_args(argv)
    set_threads(a.threads)
    out = a.out or Path("artifacts/v1/retrieve") / ("diffugr" if a.mode == "diffusion" else "ar")
    if a.attach_prior_only:
        attach_prior(out, a.docids, config_from_args(TrainConfig, a), a.data)
        print(f"{out}: geometry prior attached")
        return
    t0 = time.time()
    s = train(a.data, a.docids, out, a.mode, config_from_args(TrainConfig, a))
    print(f"best valid Recall@10 {s['best_recall10']:.4f} at epoch {s['best_epoch']} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
