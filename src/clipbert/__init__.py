"""ClipBERT for SQA3D: ScanNet .sens -> frames -> mp4 -> LMDB, SQA3D -> jsonl, train, test."""

__version__ = "0.1.0"
