"""Score with an exported model, in-process or over HTTP. Nothing here imports torchrec
or the model code: an export directory and ``torch`` are all it needs.

* :mod:`.features` — request / row / Parquet encoding with the training reader's
  bad-input policy; torch-free.
* :mod:`.predictor` — loads an export directory; scores Parquet files, rows and requests.
* :mod:`.server` — aiohttp endpoint with validation, micro-batching, bounded queue,
  health, graceful shutdown; :mod:`.server_config` its settings.
* :mod:`.cli` — ``interformer-rec predict`` and ``serve``.

Nothing is imported here, so ``import interformer_rec.serving.predictor`` stays light.
"""
