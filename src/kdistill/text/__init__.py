"""Language models: corpora packed into blocks, tokenizers, causal LMs (built-in, Hugging Face, your own),
the teacher's top-k cache, and the objectives that distill one LM into another.

``transformers`` is optional (``pip install 'kdistill[text]'``): the byte tokenizer and the built-in GPT
work without it."""
