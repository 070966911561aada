"""Text side: Hugging Face WordPiece tokenizers loaded from local directories."""
