"""Data preparation, DocIDs and vector/lexical indexes."""
