"""LLM-enhancement methods that wrap any backbone (see :mod:`intentrec.models.methods.base`)."""

from intentrec.models.features import FeatureTable
from intentrec.models.methods.base import Method, MethodConfig
from intentrec.models.methods.registry import METHODS, build_method, method_class, register_method

__all__ = ["FeatureTable", "METHODS", "Method", "MethodConfig", "build_method", "method_class", "register_method"]
