"""Data: the reference's symbol table, its preprocessed layout, batching."""
from fastcpu.data.dataset import (Batcher, DataError, PreprocessedCorpus, collate, read_split,
                                  text_to_ids)
from fastcpu.data.symbols import N_VOCAB, SYMBOL_TO_ID, SYMBOLS

__all__ = ["Batcher", "DataError", "PreprocessedCorpus", "collate", "read_split", "text_to_ids",
           "SYMBOLS", "SYMBOL_TO_ID", "N_VOCAB"]
