"""Signal processing without weights: the mel front end and wav I/O, pitch from the mel, and the
post-processing stages after the flow (the contract in ``stages``). Imports nothing above it."""
