"""AutoSGM: heavy ball, Nesterov and Adam as points of one design space.

A first-order low-pass filter on the gradient (pole β, zero γ, gain η) times an
iteration-dependent learning-rate oracle ``α = μ F a / d`` (trust region × window × numerator /
moment estimate), as a ``torch.optim`` optimizer.
"""

from .config import NUMERATORS, AutoSGMConfig
from .groups import weight_decay_groups
from .optimizer import AutoSGM, StepRecord
from .windows import Window, WindowLR

__all__ = ["AutoSGM", "AutoSGMConfig", "NUMERATORS", "StepRecord", "Window", "WindowLR", "__version__", "weight_decay_groups"]
__version__ = "0.4.0"
