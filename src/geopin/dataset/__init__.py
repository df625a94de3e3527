"""Building a dataset: ingest, fetch, images, EXIF, faces, cells, splits."""
