"""videolm: video-language pre-training in the VideoBERT / CBT lineage."""

__version__ = "0.1.0"
