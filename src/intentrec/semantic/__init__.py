"""The semantic stage: LLM answers about sessions, turned into vectors a recommender can use.

* :mod:`~intentrec.semantic.prompts` / :mod:`~intentrec.semantic.parsing` — versioned prompt
  templates and robust answer parsers;
* :mod:`~intentrec.semantic.llm` and :mod:`~intentrec.semantic.infer` — LLM backends and the
  resumable inference engine;
* :mod:`~intentrec.semantic.store` — the durable SQLite answer store;
* :mod:`~intentrec.semantic.encoders` / :mod:`~intentrec.semantic.embedding_cache` — text encoders
  and their on-disk cache;
* :mod:`~intentrec.semantic.localization` / :mod:`~intentrec.semantic.intents` — snapping answers
  onto the catalogue and writing per-example intent vectors.

Submodules are imported on use; importing this package loads no model library.
"""
