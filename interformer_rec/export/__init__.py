"""Export a trained model for serving.

* :mod:`.export` — checkpoint -> plain model -> ``torch.export`` of a plain-tensor front
  (``ServingModule``: KJTs built inside from values + lengths) -> AOTInductor package
  ``model.pt2`` with ``schema.json`` and ``manifest.json``; parity with the eager model
  is checked at export time. (``torchrec.ir`` is not in the torchrec wheel and
  TorchScript is deprecated, hence the plain-tensor front; ``--kjt-program`` also saves
  the program with KJT inputs.)
* :mod:`.inputs` — rows to trace with, random valid rows, held-out rows from Parquet.
* :mod:`.parity` — the batches the package is compared with the eager model on.
* :mod:`.quantize` — int8 / fp16 embedding tables with TorchRec's
  ``quantize_inference_model``, and their quality loss.
* :mod:`.manifest` — the files of an export directory, the checks made on
  ``manifest.json`` before anything is loaded, and the errors (torch-free).
* :mod:`.cli` — ``interformer-rec export``.

Imports go one way: manifest <- inputs <- parity, quantize <- export <- cli.

Scoring with the result is :mod:`interformer_rec.serving`.
"""
