"""sparsescope's dashboard server: REST, websockets, worker processes, static frontend."""
