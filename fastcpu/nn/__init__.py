"""Modules and layers: thin shells over the kernels (see fastcpu.nn.functional)."""
from fastcpu.nn import functional, init
from fastcpu.nn.module import Module, ModuleList, Parameter, ParameterBuffer, flatten_parameters
from fastcpu.nn.layers import (BatchNorm1d, Conv1d, Dropout, Embedding, LayerNorm, Linear,
                               MultiHeadAttention)

__all__ = ["Module", "ModuleList", "Parameter", "ParameterBuffer", "flatten_parameters", "Linear",
           "Conv1d", "LayerNorm", "BatchNorm1d", "Embedding", "Dropout", "MultiHeadAttention",
           "functional", "init"]
