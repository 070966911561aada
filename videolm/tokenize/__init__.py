"""Visual words: hierarchical k-means over clip features (VideoBERT's tokenizer).

- ``kmeans``: the tree (fit with faiss, encode by descent, word-id arithmetic)
- ``vocab``: the vocabulary directory, fitting from a feature store, encoding a whole store
- ``gallery``: a PNG of what words look like
- ``cli``: ``videolm tokenize fit | encode | info | gallery``

See docs/tokenizer.md.
"""
