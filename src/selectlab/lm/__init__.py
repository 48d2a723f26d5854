"""Work with language models: backbones, prompts, sampling, embedding, losses, fine-tuning, evaluation, judges."""
