"""Node types: typed, bounded inputs and outputs, a cost function, determinism."""
