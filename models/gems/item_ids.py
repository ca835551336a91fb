"""Items as semantic-ID token sequences in a causal LM's vocabulary, the search / recommendation prompts that
share one backbone, and constrained beam search (models.beam) that can only produce real items.

An item's semantic ID is its hierarchical code (indexing.docids on the item's MiniLM embedding): L tokens
<item_l_c>, one per level. The tokens are added to the tokenizer; their input embeddings start as the mean
token embedding of the titles of the items under that code (frozen), and a separate output head (`item_head`,
trained) scores the L x V item tokens, level by level.

    search:     "Search: <query>\\nItem:"                                   -> <item_0_a><item_1_b><item_2_c>
    recommend:  "History: <item...><item...> ... (last H items)\\nNext item:" -> the next item's tokens
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.beam import MASKED, beam_decode
from models.docids import DocIDs

RECOMMEND_TEMPLATE = "History:{history}"
SEARCH_TEMPLATE = "History:{history}\nSearch: {query}\nItem:"


def token_text(level: int, code: int) -> str:
    return f"<item_{level}_{code}>"


@dataclass
class ItemVocab:
    ids: DocIDs  # codes (N, L) and item ids
    first_token: int  # tokenizer id of <item_0_0>; level l code c is first_token + l * V + c

    @property
    def length(self) -> int:
        return self.ids.length

    @property
    def vocab(self) -> int:
        return self.ids.vocab

    def tokens(self) -> list[str]:
        return [token_text(level, c) for level in range(self.length) for c in range(self.vocab)]

    def token_ids(self, row: int) -> list[int]:
        return [self.first_token + level * self.vocab + int(c) for level, c in enumerate(self.ids.codes[row])]

    def text(self, item_id: str) -> str:
        row = self.row[item_id]
        return "".join(token_text(level, int(c)) for level, c in enumerate(self.ids.codes[row]))

    @property
    def children(self) -> dict[tuple[int, ...], np.ndarray]:
        """The ID trie: prefix of codes -> the codes some item continues it with (built once)."""
        if not hasattr(self, "_children"):
            self._children = {p: g for level in range(self.length) for p, g in _groups(self.ids.codes, level).items()}
        return self._children

    @property
    def row(self) -> dict[str, int]:
        if not hasattr(self, "_row"):
            self._row = {d: n for n, d in enumerate(self.ids.ids)}
        return self._row


def add_item_tokens(model, tokenizer, ids: DocIDs, titles: dict[str, str],
                    features: torch.Tensor | None = None) -> tuple[ItemVocab, torch.Tensor]:
    """Add the item tokens to tokenizer and model; returns the vocab and the item head's initial weights
    (L*V x d), also written as the new tokens' input embeddings. With `features` (N x d, one row per item of
    `ids`): each token = the mean feature of the items under it (atomic IDs: the item's own). Without: the mean
    embedding of the title tokens of its items (the first GEMS; near-identical tokens, kept for comparison)."""
    new = [token_text(level, c) for level in range(ids.length) for c in range(ids.vocab)]
    tokenizer.add_tokens(new)
    first = tokenizer.convert_tokens_to_ids(new[0])
    assert tokenizer.convert_tokens_to_ids(new[-1]) == first + len(new) - 1, "item tokens must be contiguous"
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    init = torch.zeros(len(new), emb.shape[1])
    count = torch.zeros(len(new))
    with torch.no_grad():
        base_mean = emb[:first].float().mean(0)
        for row, item in enumerate(ids.ids):
            if features is not None:
                v = features[row].float()
            else:
                t = tokenizer(titles.get(item, item), add_special_tokens=False)["input_ids"]
                v = emb[t].float().mean(0) if t else base_mean
            for level, c in enumerate(ids.codes[row]):
                init[level * ids.vocab + int(c)] += v
                count[level * ids.vocab + int(c)] += 1
        init = torch.where(count[:, None] > 0, init / count.clamp(min=1)[:, None], base_mean)
        emb[first:first + len(new)] = init.to(emb.dtype)
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # the LM head stays the text head; items have their own
    return ItemVocab(ids, first), init.clone()


def history_text(vocab: ItemVocab | None, history: list[str] | tuple = (), max_items: int = 10) -> str:
    known = [h for h in history if vocab is not None and h in vocab.row][-max_items:] if max_items > 0 else []
    return "".join(vocab.text(h) for h in known) or "(none)"


def search_prompt(query: str, vocab: ItemVocab | None = None, history: list[str] | tuple = (),
                  max_items: int = 10) -> str:
    return SEARCH_TEMPLATE.format(query=query.strip(), history=history_text(vocab, history, max_items))


def search_query(prompt: str) -> str:
    """The query of a search_prompt (its inverse, for evaluations that hold only the prompts)."""
    return prompt.split("\nSearch: ", 1)[1].split("\nItem:")[0]


def recommend_prompt(vocab: ItemVocab, history: list[str], max_items: int = 10) -> str:
    return RECOMMEND_TEMPLATE.format(history=history_text(vocab, history, max_items))


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    """How alike the item tokens are: mean cosine over all distinct pairs of rows (1 = identical)."""
    x = torch.nn.functional.normalize(rows.detach().float(), dim=-1)
    n = len(x)
    s = x.sum(0)
    return float((s @ s - n) / max(1, n * (n - 1)))


@torch.no_grad()
def beam_search(model, tokenizer, vocab: ItemVocab, item_head: torch.Tensor, prompts: list[str], beam: int,
                k: int, exclude: list[set[str]] | None = None,
                deadline: float | None = None) -> list[list[tuple[str, float]]]:
    """Constrained beam search over item IDs for a batch of prompts: models.beam.beam_decode, left to right, each
    level's log-probabilities renormalised over the codes some item continues the prefix with. The LM runs
    left-padded with a KV cache: the prompts once, then one token per live beam and level. With `exclude`, the
    beam is 4x wider (room for excluded items); returns per prompt up to k (item id, log-prob), best first."""
    V = vocab.vocab
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    state: dict = {}  # the previous call's KV cache, attention mask, positions, and row of each (query, tokens)

    def logits(qidx: np.ndarray, tokens: torch.Tensor) -> torch.Tensor:
        level = int((tokens[0] != MASKED).sum())
        if level == 0:  # one row per query: the prompts
            idx = torch.from_numpy(qidx)
            att = enc["attention_mask"][idx]
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            out = model.model(input_ids=enc["input_ids"][idx], attention_mask=att, position_ids=pos, use_cache=True)
        else:  # each row extends its parent's cache by the code it just chose
            parent = tokens.clone()
            parent[:, level - 1] = MASKED
            idx = torch.tensor([state["rows"][int(q), tuple(t.tolist())] for q, t in zip(qidx, parent)])
            state["cache"].reorder_cache(idx)
            att = torch.cat([state["att"][idx], torch.ones(len(idx), 1, dtype=state["att"].dtype)], dim=1)
            pos = state["pos"][idx, -1:] + 1
            feed = vocab.first_token + (level - 1) * V + tokens[:, level - 1]
            out = model.model(input_ids=feed[:, None], attention_mask=att, position_ids=pos, cache=state["cache"],
                              use_cache=True)
        state.update(cache=out.cache, att=att, pos=pos,
                     rows={(int(q), tuple(t.tolist())): r for r, (q, t) in enumerate(zip(qidx, tokens))})
        h = out.last_hidden_state[:, -1]
        scores = torch.zeros(len(qidx), vocab.length, V)
        scores[:, level] = (h @ item_head[level * V:(level + 1) * V].to(h.dtype).T).float()
        return scores

    return decode_items(vocab, logits, len(prompts), beam, k, exclude, deadline)


def decode_items(vocab: ItemVocab, logprobs_fn, n_prompts: int, beam: int, k: int,
                 exclude: list[set[str]] | None = None, deadline: float | None = None) -> list[list[tuple[str, float]]]:
    """The item-ID beam both GEMS engines run (models.beam.beam_decode, left to right, each level renormalised over
    the prefix's children) with their own scoring callable. With `exclude` the beam is 4x wider (room for the
    excluded items); returns per prompt up to k (item id, log-prob), best first, its excluded items dropped."""
    width = beam * 4 if exclude else beam
    decoded = beam_decode(logprobs_fn, vocab.ids.codes, n_prompts, vocab.length, width, left_to_right=True,
                          renormalise=True, deadline=deadline)
    out = []
    for q, rows in enumerate(decoded):
        skip = exclude[q] if exclude else set()
        out.append([(i, s) for i, s in ((vocab.ids.ids[r], s) for r, s in rows) if i not in skip][:k])
    return out


def _groups(codes: np.ndarray, level: int) -> dict[tuple[int, ...], np.ndarray]:
    out: dict[tuple[int, ...], set[int]] = {}
    for row in codes:
        out.setdefault(tuple(int(c) for c in row[:level]), set()).add(int(row[level]))
    return {p: np.array(sorted(s)) for p, s in out.items()}
