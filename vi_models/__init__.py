"""NumPyro model builders: reaction kinetics and more."""

import jax as _jax

# Kinetics is solved in double precision; single precision loses rate constants in
# the rounding of stiff or slow reactions.
_jax.config.update("jax_enable_x64", True)

from .relaxed import RelaxedOneHotCategorical, RelaxedOneHotCategoricalStraightThrough  # noqa: E402, F401
from . import gillespie, vae  # noqa: E402, F401
from .gillespie import Network, SSAResult  # noqa: E402, F401
from .vae import VAE, AmortizedNormalGuide, Modality, VAEFit, build_vae  # noqa: E402, F401
