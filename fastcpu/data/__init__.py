"""Data: the reference's symbol table, its preprocessed layout, batching, the bundled corpus.

``BUNDLED_CORPUS`` is a small single-speaker corpus in the preprocessed layout, made with
``python -m fastcpu.data.espeak_corpus`` (espeak-ng, exact phoneme alignments; mel float16)."""
from pathlib import Path

from fastcpu.data.dataset import (Batch, Batcher, DataError, PreprocessedCorpus, collate,
                                  read_split, text_to_ids)
from fastcpu.data.symbols import N_VOCAB, SYMBOL_TO_ID, SYMBOLS

BUNDLED_CORPUS = Path(__file__).resolve().parent / "corpus"

__all__ = ["BUNDLED_CORPUS", "Batch", "Batcher", "DataError", "PreprocessedCorpus", "collate",
           "read_split", "text_to_ids", "SYMBOLS", "SYMBOL_TO_ID", "N_VOCAB"]
