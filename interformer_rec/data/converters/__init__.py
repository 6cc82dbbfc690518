"""Converters from public log formats to this project's Parquet layout (``interformer-rec
convert <format>``): Criteo, Taobao (DMR and FuxiCTR), Amazon (DIN's sample, the reviews
releases, Grocery), MovieLens-100K and S3-Rec releases. They stream their input, count
malformed lines and write nothing on failure (``convert.py`` is their shared frame;
``text.py`` its line parsing). Only numpy and pyarrow are imported."""
