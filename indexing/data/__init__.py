"""Loaders for the three kinds of data unisr serves: search+recommendation, document retrieval, multi-hop QA."""
from indexing.data.recsys import RecsysData, load_recsys
from indexing.data.retrieval import RetrievalData, load_retrieval
from indexing.data.multihop import MultihopData, load_multihop

__all__ = ["RecsysData", "load_recsys", "RetrievalData", "load_retrieval", "MultihopData", "load_multihop"]
