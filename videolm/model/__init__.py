"""The video-language transformer (single- or two-stream), its heads and losses (VideoBERT and CBT modes).

    from videolm.model.config import ModelConfig
    from videolm.model.pretraining import VideoLMForPretraining

See docs/model.md.
"""
