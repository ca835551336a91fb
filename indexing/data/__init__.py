"""Loaders for the three kinds of data unisr serves: search+recommendation, document retrieval, multi-hop QA."""
from indexing.data.multihop import MultihopData, load_multihop
from indexing.data.recsys import RecsysData, load_recsys
from indexing.data.retrieval import RetrievalData, general_texts, load_retrieval

__all__ = ["MultihopData", "RecsysData", "RetrievalData", "general_texts", "load_multihop", "load_recsys",
           "load_retrieval"]
