"""Items as semantic-ID token sequences in a causal LM's vocabulary, the search / recommendation prompts that
share one backbone, and constrained beam search that can only produce real items.

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

from models.docids import DocIDs

SEARCH_TEMPLATE = "Search: {query}\nItem:"
RECOMMEND_TEMPLATE = "History: {history}\nNext item:"


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


def add_item_tokens(model, tokenizer, ids: DocIDs, titles: dict[str, str]) -> tuple[ItemVocab, torch.Tensor]:
    """Add the item tokens to tokenizer and model; returns the vocab and the item head's initial weights
    (L*V x d): each token's embedding = mean embedding of the title tokens of its items."""
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


def search_prompt(query: str) -> str:
    return SEARCH_TEMPLATE.format(query=query.strip())


def recommend_prompt(vocab: ItemVocab, history: list[str], max_items: int = 10) -> str:
    known = [h for h in history if h in vocab.row][-max_items:]
    return RECOMMEND_TEMPLATE.format(history=" ".join(vocab.text(h) for h in known) or "(none)")


@torch.no_grad()
def beam_search(model, tokenizer, vocab: ItemVocab, item_head: torch.Tensor, prompts: list[str], beam: int,
                k: int, exclude: list[set[str]] | None = None) -> list[list[tuple[str, float]]]:
    """Constrained beam search over item IDs for a batch of prompts (left-padded, KV cache). Every level only
    allows codes some item continues the prefix with; returns per prompt up to k (item id, log-prob)."""
    L, V = vocab.length, vocab.vocab
    children = vocab.children
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    att = enc["attention_mask"]
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model.model(input_ids=enc["input_ids"], attention_mask=att, position_ids=pos, use_cache=True)
    cache, h = out.cache, out.last_hidden_state[:, -1]
    Q = len(prompts)
    beams: list[list[tuple[tuple[int, ...], float]]] = [[((), 0.0)] for _ in range(Q)]
    width = beam * 4 if exclude else beam  # room for excluded items
    for level in range(L):
        head = item_head[level * V:(level + 1) * V].to(h.dtype)
        logits = (h @ head.T).float()  # (rows, V)
        new_beams, new_rows, feed = [], [], []
        r = 0
        for q in range(Q):
            cands = []
            for prefix, score in beams[q]:
                allowed = children[prefix]
                lp = torch.log_softmax(logits[r, allowed], dim=-1)
                cands += [(prefix + (int(c),), score + float(v), r) for c, v in zip(allowed, lp)]
                r += 1
            cands.sort(key=lambda x: -x[1])
            keep = cands[:width]
            new_beams.append([(p, s) for p, s, _ in keep])
            new_rows += [row for _, _, row in keep]
            feed += [vocab.first_token + level * V + p[-1] for p, _, _ in keep]
        beams = new_beams
        if level == L - 1:
            break
        idx = torch.tensor(new_rows)
        cache.reorder_cache(idx)
        att = torch.cat([att[idx], torch.ones(len(idx), 1, dtype=att.dtype)], dim=1)
        pos = pos[idx, -1:] + 1
        out = model.model(input_ids=torch.tensor(feed)[:, None], attention_mask=att, position_ids=pos,
                          cache=cache, use_cache=True)
        cache, h = out.cache, out.last_hidden_state[:, -1]
    lookup = vocab.ids.lookup()
    results = []
    for q in range(Q):
        skip = exclude[q] if exclude else set()
        items = [(lookup[p], s) for p, s in beams[q] if lookup[p] not in skip]
        results.append(items[:k])
    return results


def _groups(codes: np.ndarray, level: int) -> dict[tuple[int, ...], np.ndarray]:
    out: dict[tuple[int, ...], set[int]] = {}
    for row in codes:
        out.setdefault(tuple(int(c) for c in row[:level]), set()).add(int(row[level]))
    return {p: np.array(sorted(s)) for p, s in out.items()}
