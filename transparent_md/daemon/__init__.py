"""The daemon `transparent-md run` starts: datapath, responder processes, metrics."""
