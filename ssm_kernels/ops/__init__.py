"""One folder per op, each with the same file roles: ``api`` (the public function: validation,
dispatch), ``reference`` (the definition, one step or one query at a time), ``xla`` (the parallel
pure-JAX form), ``pallas`` (the op's primitives, ``BlockSizes`` and the layout around the
kernels) and ``kernels`` (the Pallas kernels: forward, tangent, backward)."""
