"""Compatibility name for code written against the original AutoSGM module (``from asgm import AutoSGM``).

It re-exports :class:`autosgm.AutoSGM`, which accepts the original tuple configuration
(``lr_cfg``, ``beta_cfg``, ``rc_cfg``, ``wd_cfg``, ``eps_cfg``) unchanged.
"""

from autosgm import AutoSGM

__all__ = ["AutoSGM"]
