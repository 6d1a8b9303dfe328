"""Text conditioning: tokenizers and text encoders that nets read prompts with."""
