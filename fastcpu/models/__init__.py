"""Models: FastSpeech2 with the reference's state_dict names and shapes."""
from fastcpu.models.fastspeech2 import FastSpeech2, FastSpeech2Loss, sinusoid_table

__all__ = ["FastSpeech2", "FastSpeech2Loss", "sinusoid_table"]
