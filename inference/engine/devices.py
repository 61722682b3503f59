r"""More than one device: the experiment axis of a model's data sharded with ``jax.sharding``.

``fit(model, data, devices=...)`` compiles the model's log density and gradient once, as always
(:class:`~inference.engine.target.Target`), but with the model's data as inputs of the program,
placed across the devices of a one-dimensional mesh ``Mesh(devices, ("exp",))``:

* every array among the model's arguments whose leading axis has the size ``E`` of the model's
  largest plate (the experiments) is split along that axis, ``NamedSharding(mesh, P("exp"))``;
  every other array is replicated;
* the latent points ``u`` (``(B, d)``) and the outputs (log densities and gradients) are
  replicated, so the optimizers, which work on the flat vector and contain no model, run as
  before on one device.

XLA's SPMD partitioner (GSPMD) then splits the per-experiment work (the solves and the
likelihood of each experiment) along the mesh and adds the one reduction the log density needs.
Nothing else changes: sharding is a layout, never a different computation, so the log density and
its gradient equal the single-device ones up to the order of a floating-point sum.

**Several hosts.** After ``jax.distributed.initialize(...)`` ``jax.devices()`` lists the devices
of every process; ``devices="all"`` builds the mesh over all of them. Every process runs the
same script (the same model, data, seed and settings: JAX's multi-controller model), holds the
whole data set and places its own shards (``jax.make_array_from_callback``); the fit's host-side
loops run identically in every process, on replicated values. See the "Many experiments" page
for the SLURM and two-process recipes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["AXIS", "resolve_devices", "experiment_mesh", "Placement", "placement_for"]

#: Name of the mesh axis the experiments are split along.
AXIS = "exp"


def resolve_devices(devices) -> tuple | None:
    """The devices of ``fit(..., devices=...)`` as a tuple, or None for the default (one device).

    Parameters
    ----------
    devices : None, int, "all", "local" or sequence of jax devices
        ``n``: the first ``n`` of ``jax.devices()`` (every process's devices after
        ``jax.distributed.initialize``); ``"all"``: all of them; ``"local"``: this process's.

    Raises
    ------
    ValueError
        With a sentence, for a count larger than the devices there are, or anything else.
    """
    if devices is None:
        return None
    if isinstance(devices, str):
        if devices == "all":
            return tuple(jax.devices())
        if devices == "local":
            return tuple(jax.local_devices())
        raise ValueError(f"devices must be a number, 'all', 'local' or a list of jax devices, got {devices!r}")
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        available = jax.devices()
        if not 1 <= int(devices) <= len(available):
            hint = (
                "; on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N (set before jax is imported) "
                "makes N devices" if available[0].platform == "cpu" else ""
            )
            raise ValueError(f"devices={devices}, but JAX sees {len(available)} device(s){hint}")
        return tuple(available[: int(devices)])
    if isinstance(devices, Sequence) and devices and all(hasattr(d, "platform") for d in devices):
        return tuple(devices)
    raise ValueError(f"devices must be a number, 'all', 'local' or a list of jax devices, got {devices!r}")


def experiment_mesh(devices: Sequence) -> Mesh:
    """The one-dimensional mesh ``Mesh(devices, ("exp",))``."""
    return Mesh(np.asarray(list(devices), dtype=object), (AXIS,))


def _is_data(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) >= 1 and np.asarray(x).dtype.kind in "biuf"


@dataclass(frozen=True, eq=False)
class Placement:
    """Where the inputs of a sharded target live (see the module docstring).

    Attributes
    ----------
    mesh : Mesh
    n_experiments : int
        Size of the sharded axis.
    dynamic : tuple of int
        Positions, among the leaves of ``(args, kwargs)``, of the arrays that are program inputs.
    specs : tuple of PartitionSpec
        The partition of each of those arrays.
    data : tuple of jax.Array
        Those arrays, placed.
    """

    mesh: Mesh
    n_experiments: int
    leaves: tuple
    treedef: Any
    dynamic: tuple
    specs: tuple
    data: tuple

    @property
    def replicated(self) -> NamedSharding:
        """Replicated on every device of the mesh."""
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def data_shardings(self) -> tuple:
        return tuple(NamedSharding(self.mesh, s) for s in self.specs)

    @property
    def sharded_names(self) -> int:
        """Number of data arrays split along the experiments."""
        return sum(1 for s in self.specs if s != PartitionSpec())

    def rebuild(self, data) -> tuple[tuple, dict]:
        """``(args, kwargs)`` with the data arrays replaced by ``data`` (traced, inside the program)."""
        leaves = list(self.leaves)
        for i, x in zip(self.dynamic, data):
            leaves[i] = x
        return jax.tree.unflatten(self.treedef, leaves)

    def put(self, x, sharding: NamedSharding | None = None) -> jax.Array:
        """``x`` (the same in every process) as a global array with ``sharding`` (replicated by default)."""
        sharding = sharding or self.replicated
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def local(self, x: jax.Array) -> jax.Array:
        """A replicated global array as a plain array on this process's default device."""
        part = x.addressable_data(0)
        device = _default_device()
        if part.devices() != {device}:
            part = jax.device_put(part, device)
        return part

    def describe(self) -> str:
        """One line: devices, processes and what is split."""
        devices = self.mesh.devices.ravel()
        hosts = len({d.process_index for d in devices})
        per = self.n_experiments // len(devices)
        return (
            f"{len(devices)} {devices[0].platform} device(s) on {hosts} process(es); {self.sharded_names} data "
            f"array(s) split along {self.n_experiments} experiments ({per} per device), "
            f"{len(self.specs) - self.sharded_names} replicated"
        )


def _default_device():
    configured = jax.config.jax_default_device
    if configured is not None and not isinstance(configured, str):
        return configured
    return jax.local_devices()[0]


def placement_for(devices, args: tuple, kwargs: dict, trace: dict) -> Placement:
    """Place the model's data over ``devices`` (see the module docstring).

    Parameters
    ----------
    devices : sequence of jax devices
    args, kwargs
        The model's arguments.
    trace : dict
        The model's prototype trace (plates and their sizes).

    Raises
    ------
    ValueError
        With a sentence: when no array argument has the experiments along its leading axis (data
        held inside the model cannot be split), or when the devices do not divide the experiments.
    """
    devices = tuple(devices)
    leaves, treedef = jax.tree.flatten((tuple(args), dict(kwargs)))
    dynamic = tuple(i for i, x in enumerate(leaves) if _is_data(x))
    plates = sorted(
        {int(s["args"][0]) for s in trace.values() if s["type"] == "plate" and s.get("args")}, reverse=True
    )
    leading = {int(np.shape(leaves[i])[0]) for i in dynamic}
    sizes = [n for n in plates if n in leading and n > 1]
    if not sizes:
        where = f"plates of sizes {', '.join(map(str, plates))}" if plates else "no plates"
        raise ValueError(
            f"devices={len(devices)} splits the model's data along its experiments, but none of the model's array "
            f"arguments has a leading axis the size of a plate (the model has {where}); pass the data to the model "
            "as arguments, fit(model, data, devices=...), with the experiments first (a model that holds its data "
            "inside runs on one device)"
        )
    E = sizes[0]
    if E % len(devices):
        fits = [n for n in range(len(devices), 0, -1) if E % n == 0][0]
        raise ValueError(
            f"the {E} experiments cannot be split evenly over {len(devices)} devices; use devices={fits} (a divisor "
            f"of {E}), or pad the plate to a multiple of {len(devices)} experiments"
        )
    mesh = experiment_mesh(devices)
    specs = tuple(
        PartitionSpec(AXIS) if np.shape(leaves[i])[0] == E else PartitionSpec() for i in dynamic
    )
    placement = Placement(mesh, E, tuple(leaves), treedef, dynamic, specs, ())
    data = tuple(placement.put(leaves[i], NamedSharding(mesh, s)) for i, s in zip(dynamic, specs))
    return Placement(mesh, E, tuple(leaves), treedef, dynamic, specs, data)
