"""Serving: export a trained model, score with it, serve it over HTTP.

* :mod:`.export` — checkpoint -> plain model -> ``torch.export`` of a plain-tensor front
  (``ServingModule``: KJTs built inside from values + lengths) -> AOTInductor package
  ``model.pt2`` with ``schema.json`` and ``manifest.json``; parity with the eager model
  is checked at export time. (``torchrec.ir`` is not in the torchrec wheel and
  TorchScript is deprecated, hence the plain-tensor front; ``--kjt-program`` also saves
  the program with KJT inputs.)
* :mod:`.quantize` — int8 / fp16 embedding tables with TorchRec's
  ``quantize_inference_model``, and their quality loss.
* :mod:`.features` — the bad-input policy of the training reader, for Parquet, row dicts
  and ranking requests (one user, many candidates); torch + numpy only.
* :mod:`.predictor` — loads only the export directory (torch, plus fbgemm_gpu for a
  quantized package); scores Parquet files, rows and requests.
* :mod:`.server` — aiohttp endpoint with validation, micro-batching, bounded queue,
  health, graceful shutdown.

Nothing is imported here, so ``import interformer_rec.export.predictor`` stays light.
"""
