"""CLIP backbones (open_clip) and the prompt-aware encoders shared by every method."""
from .backbone import (RANDOM_INIT_WARNING, TINY_CLIP, ClipBackbone, WeightsUnavailableError,
                       build_backbone, load_clip)
from .prompt_learner import PromptLearner, clean_classname
from .text_encoder import TextEncoder

__all__ = ["RANDOM_INIT_WARNING", "TINY_CLIP", "ClipBackbone", "WeightsUnavailableError", "build_backbone",
           "load_clip", "PromptLearner", "clean_classname", "TextEncoder"]
